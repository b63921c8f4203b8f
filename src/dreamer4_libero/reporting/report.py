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
from . import tables as T
from .runtime import read_benchmarks, stage_totals

#: endpoints of the published runs' curves (first logged value -> final value), drawn on our curves
PUBLISHED_ENDPOINTS = {
    "loss": {"kind": "dynamics", "start": 0.20, "end": 0.005, "label": "published shortcut loss"},
    "train/aux_mse": {"kind": "dynamics", "start": 0.22, "end": 0.0004, "label": "published aux MSE"},
}
#: logged keys that are counters or schedule values, not losses
NOT_LOSS = {"train/b_self", "train/sigma_mean", "train/keep_prob", "train/mae_p"}
PAGE_STYLE = T.HTML_STYLE + "pre{font-size:11px;background:#f6f6f6;padding:6px;max-height:30em;overflow:auto}"


def _write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{PAGE_STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def _html_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}" if math.isfinite(v) else "—"
        return "—" if v is None else html.escape(str(v))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _series(records: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in records if T._finite(r.get(key)) and T._finite(r.get("step"))]
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else ([], [])


# ---------------------------------------------------------------------------------------- training

def run_kind(config: dict) -> str:
    """'dynamics' or 'tokenizer' from a results/train/<run>/config.json."""
    task = config.get("task") or {}
    return "dynamics" if "dynamics_model" in task or "variant" in task else "tokenizer"


def training_curves_png(run: str, kind: str, records: Sequence[dict], path: str | os.PathLike) -> list[str]:
    """Loss (+ published endpoints), aux MSE (+ endpoints), the loss terms and the learning rate of one run.

    Returns the panel titles drawn (the tests read them)."""
    plt = T._plt()
    keys = sorted({k for r in records for k in r if k.startswith("train/")} - NOT_LOSS - {"train/aux_mse"})
    panels = [("loss", "training loss")]
    if any(T._finite(r.get("train/aux_mse")) for r in records):
        panels.append(("train/aux_mse", "aux head (inverse dynamics) MSE"))
    panels += [("terms", "loss terms"), ("lr", "learning rate")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.2))
    for ax, (key, title) in zip(np.atleast_1d(axes), panels):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("update step", fontsize=8)
        ax.grid(alpha=0.3)
        if key == "terms":
            series = [(k, *_series(records, k)) for k in keys]
        else:
            series = [(key, *_series(records, key))]
        series = [s for s in series if s[1]]
        if not series:
            T._no_data(ax, key)
            continue
        for name, xs, ys in series:
            ax.plot(xs, ys, lw=1.0, label=name.replace("train/", ""))
        pub = PUBLISHED_ENDPOINTS.get(key)
        if pub and pub["kind"] == kind:
            x_end = max(series[0][1])
            ax.scatter([series[0][1][0], x_end], [pub["start"], pub["end"]], marker="*", s=90, color="crimson",
                       zorder=5, label=f"{pub['label']} {pub['start']:g} → {pub['end']:g} (start, end)")
            ax.axhline(pub["end"], color="crimson", lw=0.8, ls="--")
        if all(min(s[2]) > 0 for s in series) and key != "lr":
            ax.set_yscale("log")
        ax.legend(fontsize=6)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{run} ({kind})", fontsize=10)
    fig.tight_layout()
    T.save_png(fig, path)
    return [t for _, t in panels]


# ------------------------------------------------------------------------------------------- probe

def probe_per_dim(inp: T.Inputs, feature_sets: Sequence[str] | None = None) -> list[dict]:
    """Held-out-task R² per action dimension (H = 1, policy mode, all_valid) per variant/feature and control.

    One entry per (model, feature): label, per-seed lists of per-dim R², mean and ddof=1 std per dim."""
    out = []
    sets = []
    for v in inp.variants:
        if inp.not_run_reason(v["name"]) is None:
            sets += [(v["name"], f, "past_actions") for f in (feature_sets or T.WM_FEATURES)]
    for f in T._baseline_features(inp):
        exts = sorted({k[2] for k in inp.probe if k[0] == T.BASELINES and k[1] == f})
        if exts:
            sets.append((T.BASELINES, f, exts[0]))
    for model, feat, ext in sets:
        per_seed = {}
        for s in inp.seeds:
            rec = inp.probe.get((model, feat, ext, "policy", 1, s))
            dims = T._dig(rec, ("scorings", "all_valid", T.TEST, "probe", "r2_per_dim")) if rec else None
            if dims:
                per_seed[s] = [float(d) if T._finite(d) else float("nan") for d in dims]
        if not per_seed:
            continue
        arr = np.array(list(per_seed.values()), dtype=float)  # (seeds, dims)
        with np.errstate(all="ignore"):
            mean = np.nanmean(arr, axis=0)
            std = np.nanstd(arr, axis=0, ddof=1) if arr.shape[0] > 1 else np.full(arr.shape[1], np.nan)
        out.append({"model": model, "feature": feat, "extraction": ext,
                    "label": f"{feat}" if model == T.BASELINES else f"{model} / {feat}",
                    "control": model == T.BASELINES, "per_seed": per_seed,
                    "mean": [float(x) for x in mean], "std": [float(x) for x in std]})
    return out


def probe_per_dim_png(entries: Sequence[dict], path: str | os.PathLike, clip: float = -1.0) -> int:
    """Grouped bars: one group per action dimension, one bar per model/feature (controls hatched),
    error bars = seed std. R² below `clip` is drawn at `clip` (the value is printed). Returns bars drawn."""
    plt = T._plt()
    fig, ax = plt.subplots(figsize=(10.0, 4.2))
    if not entries:
        T._no_data(ax, "probe records")
        T.save_png(fig, path)
        return 0
    n_dims = max(len(e["mean"]) for e in entries)
    width = 0.8 / len(entries)
    cmap = plt.get_cmap("tab20")
    drawn = 0
    for i, e in enumerate(entries):
        xs = np.arange(len(e["mean"])) + (i - (len(entries) - 1) / 2) * width
        m = np.array(e["mean"])
        shown = np.where(np.isfinite(m), np.maximum(m, clip), 0.0)
        err = np.nan_to_num(np.array(e["std"]), nan=0.0)
        ax.bar(xs, shown, width, yerr=err, capsize=1.5, color=cmap(i % 20), label=e["label"],
               hatch="//" if e["control"] else None, edgecolor="black" if e["control"] else None, linewidth=0.3)
        drawn += len(xs)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(range(n_dims))
    ax.set_xticklabels([f"a[{d}]" for d in range(n_dims)])
    ax.set_ylabel(f"held-out-task R² (clipped at {clip:g})")
    ax.set_title("Probe R² per action dimension (H = 1, policy, past_actions; controls hatched; bars: seed std)",
                 fontsize=9)
    ax.legend(fontsize=6, ncol=3, loc="lower left")
    ax.grid(alpha=0.3, axis="y")
    T.save_png(fig, path)
    return drawn


# -------------------------------------------------------------------------------------------- data

def data_summary_html(manifest: dict, splits_summary: dict, dmcontrol_manifest: dict | None = None) -> str:
    """Tasks per split, demos, frames and skipped items of the preprocessed data (and the DMControl set)."""
    t = manifest.get("totals", {})
    parts = ["<h2>LIBERO data</h2>",
             f"<p>Source <code>{html.escape(str(manifest.get('libero_root')))}</code>, manifest format "
             f"{html.escape(str(manifest.get('format')))}, reader version {html.escape(str(manifest.get('reader_version')))}; "
             f"options {html.escape(json.dumps(manifest.get('options', {}), sort_keys=True))}.</p>",
             _html_table(["files", "files skipped", "tasks", "demos kept", "demos skipped", "frames",
                          "action range violations"],
                         [[t.get("files"), t.get("files_skipped"), t.get("tasks"), t.get("demos_kept"),
                           t.get("demos_skipped"), t.get("frames"), t.get("action_range_violations")]])]
    sets = splits_summary.get("sets", {})
    parts += ["<h2>Task-level split</h2>",
              _html_table(["set", "tasks", "episodes"], [[k, v.get("tasks"), v.get("episodes")] for k, v in sets.items()])]
    probe = splits_summary.get("probe", {})
    if probe:
        rows = [[seed, name, v.get("tasks"), v.get("episodes")] for seed, lists in probe.items() for name, v in lists.items()]
        parts += ["<h2>Probe lists per seed</h2>", _html_table(["seed", "list", "tasks", "episodes"], rows),
                  f"<p>Seeds vary the episodes: {html.escape(str(splits_summary.get('seeds_vary_episodes')))}.</p>"]
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
            skipped.append([f.get("rel_path"), d.get("name") if isinstance(d, dict) else d,
                            d.get("reason") if isinstance(d, dict) else ""])
    parts += ["<h2>Per suite</h2>", _html_table(["suite", "task files", "demos kept", "demos skipped", "frames"],
                                                [[k, *v] for k, v in sorted(per_suite.items())])]
    parts += ["<h2>Skipped items</h2>", _html_table(["file", "item", "reason"], skipped) if skipped
              else "<p>None: every file and demo passed the checks.</p>"]
    if dmcontrol_manifest:
        rows = [[f.get("upstream_task") or f.get("task_id"), f.get("action_dim"), len(f.get("demos_kept") or []),
                 f.get("frames")] for f in dmcontrol_manifest.get("files", [])]
        parts += ["<h2>DMControl pretraining data</h2>",
                  f"<p>Padded action width {html.escape(str(dmcontrol_manifest.get('action_dim')))}.</p>",
                  _html_table(["task", "action width", "episodes", "frames"], rows)]
    return _page("Data", "\n".join(parts))


# ----------------------------------------------------------------------------------------- runtime

def runtime_html(rows: Sequence[dict]) -> str:
    totals = stage_totals(list(rows))
    body = ["<p>From Snakemake's <code>benchmark:</code> files (<code>benchmarks/&lt;rule&gt;/&lt;job&gt;.tsv</code>): "
            "wall seconds, peak resident memory and CPU seconds of every job. Stage sums add jobs that ran in "
            "parallel.</p>", "<h2>Per stage</h2>",
            _html_table(["stage", "seconds (sum over jobs)"], [[s, round(v, 1)] for s, v in totals]),
            "<h2>Per job</h2>",
            _html_table(["rule", "job", "stage", "seconds", "max RSS (MB)", "CPU seconds"],
                        [[r["rule"], r["job"], r["stage"], round(r["s"], 1), r["max_rss_mb"], r["cpu_s"]] for r in rows])]
    return _page("Runtime and memory", "\n".join(body))


def runtime_png(rows: Sequence[dict], path: str | os.PathLike) -> int:
    plt = T._plt()
    rows = [r for r in rows if r["s"] >= 0.5] or list(rows)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11.0, max(3.0, 0.22 * len(rows) + 1.0)))
    labels = [f"{r['rule']}/{r['job']}" for r in rows]
    y = np.arange(len(rows))
    a1.barh(y, [r["s"] for r in rows], color="steelblue")
    a1.set_yticks(y)
    a1.set_yticklabels(labels, fontsize=6)
    a1.invert_yaxis()
    a1.set_xlabel("wall seconds")
    a2.barh(y, [r["max_rss_mb"] or 0.0 for r in rows], color="darkorange")
    a2.set_yticks(y)
    a2.set_yticklabels([])
    a2.invert_yaxis()
    a2.set_xlabel("max RSS (MB)")
    for a in (a1, a2):
        a.grid(alpha=0.3, axis="x")
    fig.suptitle("Runtime and peak memory per job", fontsize=10)
    fig.tight_layout()
    T.save_png(fig, path)
    return len(rows)


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
            f"{init.get('init_from')} (sha256 {str(init.get('sha256'))[:12]})" if init.get("init_from") else
            "fresh initialisation" if run_kind(conf) == "tokenizer" or not v.get("init_from") else "")
        tok = (conf.get("task") or {}).get("tokenizer") or {}
        if isinstance(tok, dict) and tok.get("path"):
            init_text += f"; frozen tokenizer {tok.get('path')} ({tok.get('origin', '?')})"
        codes = _codes(conf)
        summary.append([run, run_kind(conf), ck.get("step"), ", ".join(dict.fromkeys(codes)) or "not recorded",
                        len(codes), init_text, f"{ck.get('sha256', '')[:16]}"])
        details.append(f"<details><summary>{html.escape(run)}: resolved config</summary>"
                       f"<pre>{html.escape(json.dumps(conf, indent=1, sort_keys=True))}</pre></details>")
    body = [f"<p>Workflow code at report time: <b>{html.escape(workflow_code['describe'])}</b> "
            f"(package {html.escape(workflow_code['package'])}). A run's code version is recorded per training "
            "attempt; several values mean it was resumed under different code.</p>",
            _html_table(["run", "kind", "final step", "code version(s)", "attempts", "initial weights",
                         "checkpoint sha256"], summary), "<h2>Resolved configs</h2>", *details]
    return _page("Provenance", "\n".join(body))


# ------------------------------------------------------------------------------------------- entry

def build_assets(*, tables_config: dict, out_dir: str | os.PathLike, runs: Sequence[str], manifest: str,
                 splits_summary: str, bench_dir: str, probe_summaries: Iterable = (), rollout: Iterable = (),
                 tokenizer_eval: Iterable = (), train_root: str = "results/train",
                 dmcontrol_manifest: str | None = None) -> dict:
    """Write every report asset under out_dir; returns {name: path or list of paths}."""
    out = Path(out_dir)
    train_root = Path(train_root)
    names = dict.fromkeys([tables_config["tokenizer_run"], *[v["name"] for v in tables_config["variants"]], *runs])
    inp = T.load_inputs(tables_config, probe_summaries, rollout, tokenizer_eval, [train_root / n for n in names])
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
    _write_text(written["provenance"], provenance_html([(r, confs[r], inp.train[r].checkpoint) for r in runs],
                                                       inp.variants, code_version()))
    return written
