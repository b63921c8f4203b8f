"""What the Snakemake report shows beyond the stages' own files (rule `report_assets`, report/*.rst).

From finished results only (no torch, seconds): one training-curve figure per trained run (loss,
aux MSE, the loss terms, learning rate; the published endpoints marked), the probe R² per action
dimension with the controls and the seed spread, the data manifest summary, per-job runtime and
memory from the `benchmark:` files, and a provenance page (resolved config, code version and the
initial weights of every run). `snakemake --report` then packs these with the tables, rollout strips
and GIFs into one self-contained HTML file.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..fileio import read_json, write_bytes
from ..provenance import code_version
from .plots import probe_per_dim_png, runtime_png, training_curves_png
from .render import HTML_STYLE
from .results import BASELINES, TEST, WM_FEATURES, Inputs, baseline_features, dig, finite, load_inputs
from .runtime import read_benchmarks, stage_totals

PAGE_STYLE = HTML_STYLE + "pre{font-size:11px;background:#f6f6f6;padding:6px;max-height:30em;overflow:auto}"


def _write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _page(title: str, body: str) -> str:
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
        f"<style>{PAGE_STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )


def _html_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}" if math.isfinite(v) else "—"
        return "—" if v is None else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---------------------------------------------------------------------------------------- training


def run_kind(config: dict) -> str:
    """'dynamics' or 'tokenizer' from a results/train/<run>/config.json."""
    task = config.get("task") or {}
    return "dynamics" if "dynamics_model" in task or "variant" in task else "tokenizer"


# ------------------------------------------------------------------------------------------- probe


def probe_per_dim(inp: Inputs, feature_sets: Sequence[str] | None = None) -> list[dict]:
    """Held-out-task R² per action dimension (H = 1, policy mode, all_valid) per variant/feature and control.

    One entry per (model, feature): label, per-seed lists of per-dim R², mean and ddof=1 std per dim."""
    out = []
    sets = []
    for v in inp.variants:
        if inp.not_run_reason(v["name"]) is None:
            sets += [(v["name"], f, "past_actions") for f in (feature_sets or WM_FEATURES)]
    for f in baseline_features(inp):
        exts = sorted({k[2] for k in inp.probe if k[0] == BASELINES and k[1] == f})
        if exts:
            sets.append((BASELINES, f, exts[0]))
    for model, feat, ext in sets:
        per_seed = {}
        for s in inp.seeds:
            rec = inp.probe.get((model, feat, ext, "policy", 1, s))
            dims = dig(rec, ("scorings", "all_valid", TEST, "probe", "r2_per_dim")) if rec else None
            if dims:
                per_seed[s] = [float(d) if finite(d) else float("nan") for d in dims]
        if not per_seed:
            continue
        arr = np.array(list(per_seed.values()), dtype=float)  # (seeds, dims)
        with np.errstate(all="ignore"):
            mean = np.nanmean(arr, axis=0)
            std = np.nanstd(arr, axis=0, ddof=1) if arr.shape[0] > 1 else np.full(arr.shape[1], np.nan)
        out.append(
            {
                "model": model,
                "feature": feat,
                "extraction": ext,
                "label": f"{feat}" if model == BASELINES else f"{model} / {feat}",
                "control": model == BASELINES,
                "per_seed": per_seed,
                "mean": [float(x) for x in mean],
                "std": [float(x) for x in std],
            }
        )
    return out


# -------------------------------------------------------------------------------------------- data


def data_summary_html(manifest: dict, splits_summary: dict, dmcontrol_manifest: dict | None = None) -> str:
    """Tasks per split, demos, frames and skipped items of the preprocessed data (and the DMControl set)."""
    t = manifest.get("totals", {})
    parts = [
        "<h2>LIBERO data</h2>",
        f"<p>Source <code>{html.escape(str(manifest.get('libero_root')))}</code>, manifest format "
        f"{html.escape(str(manifest.get('format')))}, "
        f"reader version {html.escape(str(manifest.get('reader_version')))}; "
        f"options {html.escape(json.dumps(manifest.get('options', {}), sort_keys=True))}.</p>",
        _html_table(
            ["files", "files skipped", "tasks", "demos kept", "demos skipped", "frames", "action range violations"],
            [
                [
                    t.get("files"),
                    t.get("files_skipped"),
                    t.get("tasks"),
                    t.get("demos_kept"),
                    t.get("demos_skipped"),
                    t.get("frames"),
                    t.get("action_range_violations"),
                ]
            ],
        ),
    ]
    sets = splits_summary.get("sets", {})
    parts += [
        "<h2>Task-level split</h2>",
        _html_table(["set", "tasks", "episodes"], [[k, v.get("tasks"), v.get("episodes")] for k, v in sets.items()]),
    ]
    probe = splits_summary.get("probe", {})
    if probe:
        rows = [
            [seed, name, v.get("tasks"), v.get("episodes")]
            for seed, lists in probe.items()
            for name, v in lists.items()
        ]
        parts += [
            "<h2>Probe lists per seed</h2>",
            _html_table(["seed", "list", "tasks", "episodes"], rows),
            f"<p>Seeds vary the episodes: {html.escape(str(splits_summary.get('seeds_vary_episodes')))}.</p>",
        ]
    per_suite: dict[str, list] = {}
    skipped = []
    for f in manifest.get("files", []):
        s = per_suite.setdefault(f.get("suite", "?"), [0, 0, 0, 0])
        s[0] += 1
        s[1] += len(f.get("demos_kept") or [])
        s[2] += len(f.get("demos_skipped") or [])
        s[3] += int(f.get("frames") or 0)
        if f.get("skipped_file"):
            skipped.append([f.get("rel_path"), "whole file", f.get("skipped_file")])
        for d in f.get("demos_skipped") or []:
            skipped.append(
                [
                    f.get("rel_path"),
                    d.get("name") if isinstance(d, dict) else d,
                    d.get("reason") if isinstance(d, dict) else "",
                ]
            )
    parts += [
        "<h2>Per suite</h2>",
        _html_table(
            ["suite", "task files", "demos kept", "demos skipped", "frames"],
            [[k, *v] for k, v in sorted(per_suite.items())],
        ),
    ]
    parts += [
        "<h2>Skipped items</h2>",
        _html_table(["file", "item", "reason"], skipped)
        if skipped
        else "<p>None: every file and demo passed the checks.</p>",
    ]
    if dmcontrol_manifest:
        rows = [
            [
                f.get("upstream_task") or f.get("task_id"),
                f.get("action_dim"),
                len(f.get("demos_kept") or []),
                f.get("frames"),
            ]
            for f in dmcontrol_manifest.get("files", [])
        ]
        parts += [
            "<h2>DMControl pretraining data</h2>",
            f"<p>Padded action width {html.escape(str(dmcontrol_manifest.get('action_dim')))}.</p>",
            _html_table(["task", "action width", "episodes", "frames"], rows),
        ]
    return _page("Data", "\n".join(parts))


# ----------------------------------------------------------------------------------------- runtime


def runtime_html(rows: Sequence[dict]) -> str:
    totals = stage_totals(list(rows))
    body = [
        "<p>From Snakemake's <code>benchmark:</code> files (<code>benchmarks/&lt;rule&gt;/&lt;job&gt;.tsv</code>): "
        "wall seconds, peak resident memory and CPU seconds of every job. Stage sums add jobs that ran in "
        "parallel.</p>",
        "<h2>Per stage</h2>",
        _html_table(["stage", "seconds (sum over jobs)"], [[s, round(v, 1)] for s, v in totals]),
        "<h2>Per job</h2>",
        _html_table(
            ["rule", "job", "stage", "seconds", "max RSS (MB)", "CPU seconds"],
            [[r["rule"], r["job"], r["stage"], round(r["s"], 1), r["max_rss_mb"], r["cpu_s"]] for r in rows],
        ),
    ]
    return _page("Runtime and memory", "\n".join(body))


# -------------------------------------------------------------------------------------- provenance


def _codes(conf: dict) -> list[str]:
    out = []
    for h in conf.get("history") or []:
        c = h.get("code") or {}
        out.append(c.get("describe") or "not recorded (trained before code versions were logged)")
    return out


def provenance_html(runs: Sequence[tuple[str, dict, dict]], variants: Sequence[dict], workflow_code: dict) -> str:
    """Per trained run (name, resolved config.json, checkpoint.json): code version of each attempt, checkpoint,
    initial weights, the resolved config."""
    by_name = {v["name"]: v for v in variants}
    summary, details = [], []
    for run, conf, ck in runs:
        init = (conf.get("task") or {}).get("init") or {}
        v = by_name.get(run) or {}
        init_text = v.get("init_note") or (
            f"{init.get('init_from')} (sha256 {str(init.get('sha256'))[:12]})"
            if init.get("init_from")
            else "fresh initialisation"
            if run_kind(conf) == "tokenizer" or not v.get("init_from")
            else ""
        )
        tok = (conf.get("task") or {}).get("tokenizer") or {}
        if isinstance(tok, dict) and tok.get("path"):
            init_text += f"; frozen tokenizer {tok.get('path')} ({tok.get('origin', '?')})"
        codes = _codes(conf)
        summary.append(
            [
                run,
                run_kind(conf),
                ck.get("step"),
                ", ".join(dict.fromkeys(codes)) or "not recorded",
                len(codes),
                init_text,
                f"{ck.get('sha256', '')[:16]}",
            ]
        )
        details.append(
            f"<details><summary>{html.escape(run)}: resolved config</summary>"
            f"<pre>{html.escape(json.dumps(conf, indent=1, sort_keys=True))}</pre></details>"
        )
    body = [
        f"<p>Workflow code at report time: <b>{html.escape(workflow_code['describe'])}</b> "
        f"(package {html.escape(workflow_code['package'])}). A run's code version is recorded per training "
        "attempt; several values mean it was resumed under different code.</p>",
        _html_table(
            ["run", "kind", "final step", "code version(s)", "attempts", "initial weights", "checkpoint sha256"],
            summary,
        ),
        "<h2>Resolved configs</h2>",
        *details,
    ]
    return _page("Provenance", "\n".join(body))


# ------------------------------------------------------------------------------------------- entry


def build_assets(
    *,
    tables_config: dict,
    out_dir: str | os.PathLike,
    runs: Sequence[str],
    manifest: str,
    splits_summary: str,
    bench_dir: str,
    probe_summaries: Iterable = (),
    rollout: Iterable = (),
    tokenizer_eval: Iterable = (),
    train_root: str = "results/train",
    dmcontrol_manifest: str | None = None,
) -> dict:
    """Write every report asset under out_dir; returns {name: path or list of paths}."""
    out = Path(out_dir)
    train_root = Path(train_root)
    names = dict.fromkeys([tables_config["tokenizer_run"], *[v["name"] for v in tables_config["variants"]], *runs])
    inp = load_inputs(tables_config, probe_summaries, rollout, tokenizer_eval, [train_root / n for n in names])
    confs = {run: read_json(train_root / run / "config.json") for run in runs}
    written: dict[str, Any] = {"training": []}
    for run in runs:
        p = out / "training" / f"{run}.png"
        training_curves_png(run, run_kind(confs[run]), inp.train[run].metrics, p)
        written["training"].append(p)
    written["probe_per_dim"] = out / "probe_per_dim.png"
    probe_per_dim_png(probe_per_dim(inp), written["probe_per_dim"])
    dmc = read_json(dmcontrol_manifest) if dmcontrol_manifest else None
    written["data"] = out / "data_summary.html"
    _write_text(written["data"], data_summary_html(read_json(manifest), read_json(splits_summary), dmc))
    rows = read_benchmarks(bench_dir, exclude_rules=("report_assets",))
    written["runtime_html"], written["runtime_png"] = out / "runtime.html", out / "runtime.png"
    _write_text(written["runtime_html"], runtime_html(rows))
    runtime_png(rows, written["runtime_png"])
    written["provenance"] = out / "provenance.html"
    _write_text(
        written["provenance"],
        provenance_html([(r, confs[r], inp.train[r].checkpoint) for r in runs], inp.variants, code_version()),
    )
    return written
