"""The model-card archive (evaluation.md §5): one folder per trained run under `results/archive/<run>/`.

Each folder (written atomically, `fileio.atomic_dir`) holds

    dynamics.pt | tokenizer.pt   final weights + args only, in the upstream (nicklashansen/dreamer4) layout:
                                 {"step", "epoch", "dynamics" | "model", "opt" (empty), "scaler", "args",
                                  "scale_pos_embeds"}, fp32, no wrapper prefixes, no aux head
    aux_head.pt                  aux variants: {"aux_head": state dict, "aux_input", "aux_weight", "d_model"}
    config.json                  the checkpoint's args (the resolved run config)
    metrics.json                 every probe / rollout / tokenizer record of this run, gathered
    curve_*.png                  loss curves (total, per-term group, aux MSE)
    rollout strips               *.png / *.gif of results/rollout/<variant>/ when given
    README.md                    the model card (description, data, results, loading, protocol,
                                 limitations, licences, file list with sha256)

and `results/archive/README.md` holds the tables and plots of the whole study. Numbers come from
the same code as the tables (`reporting.tables`), so a card never disagrees with the tables.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

from ..fileio import atomic_dir, atomic_path, dumps_json, read_json, safe_torch_load, sha256_file
from .plots import aux_mse_png, plot_metrics
from .reference import ARCHIVED_TOKENIZER_PSNR, DAGGER
from .render import Table, render_cell, render_md
from .results import PROTOCOL, Inputs, load_inputs
from .tables import build_tables, render_all_md, write_plots

log = logging.getLogger(__name__)

LIBERO_LICENCE = "LIBERO data (Liu et al., 2023): CC BY 4.0."
UPSTREAM_LICENCE = (
    "Model and training code follow nicklashansen/dreamer4 (state-dict layout, checkpoint format); "
    "for the upstream code's licence see nicklashansen/dreamer4."
)
ROLLOUT_MEDIA = (".png", ".gif")


# ============================================================================ checkpoints


def _torch():
    import torch

    return torch


def read_engine_checkpoint(path: str | os.PathLike, expected_sha256: str | None = None) -> dict:
    """Load an engine checkpoint (weights_only); check its sha256 against checkpoint.json when given."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if expected_sha256 and sha256_file(path) != expected_sha256:
        raise ValueError(f"{path}: sha256 differs from the one recorded in checkpoint.json (not the evaluated weights)")
    return safe_torch_load(path, map_location="cpu")


def upstream_checkpoint(ck: dict, key: str) -> dict:
    """Weights and args only, in the upstream layout (`upstream_*_checkpoint`): no optimizer, RNG or aux head."""
    from ..models.upstream import to_upstream_state_dict

    if not isinstance(ck.get(key), dict):
        raise ValueError(f"engine checkpoint has no {key!r} state dict (keys: {sorted(ck)})")
    args = dict(ck.get("args") or {})
    spe = args.get("scale_pos_embeds", ck.get("scale_pos_embeds"))
    return {
        "step": int(ck.get("step", 0)),
        "epoch": int(ck.get("epoch", 0)),
        key: to_upstream_state_dict(ck[key]),
        "opt": {"state": {}, "param_groups": []},
        "scaler": {},
        "args": args,
        "scale_pos_embeds": spe,
    }


def aux_head_file(ck: dict) -> dict | None:
    """The aux head as train_dynamics writes aux_head.pt, or None for a variant without one."""
    sd = ck.get("aux_head")
    if not isinstance(sd, dict):
        return None
    args = ck.get("args") or {}
    return {
        "aux_head": {k: v.detach().cpu().float().clone() for k, v in sd.items()},
        "aux_input": args.get("aux_input"),
        "aux_weight": args.get("aux_weight"),
        "d_model": args.get("d_model_dyn"),
    }


def state_dict_summary(sd: dict) -> dict:
    """Key count, parameter count and key groups (`transformer.layers.{i}` folded) of a state dict."""
    groups: Counter = Counter()
    for k in sd:
        parts = k.split(".")
        if parts[:2] == ["transformer", "layers"] and len(parts) > 3:
            g = "transformer.layers.{i}." + parts[3]
        elif parts[0] in ("encoder", "decoder") and parts[1:3] == ["transformer", "layers"] and len(parts) > 4:
            g = f"{parts[0]}.transformer.layers.{{i}}.{parts[4]}"
        else:
            g = ".".join(parts[:2]) if len(parts) > 2 else k
        groups[g] += 1
    return {
        "n_keys": len(sd),
        "n_params": int(sum(v.numel() for v in sd.values())),
        "groups": dict(sorted(groups.items())),
        "first_keys": list(sd)[:6],
    }


# ============================================================================ data description


def split_files(splits_dir: str | os.PathLike | None, manifest: str | os.PathLike | None = None) -> list[dict]:
    """Every split JSON under splits_dir: path, sha256, episodes, tasks (and frames with a manifest)."""
    if not splits_dir:
        return []
    splits_dir = Path(splits_dir)
    if not splits_dir.is_dir():
        raise FileNotFoundError(f"splits folder not found: {splits_dir}")
    lengths = {}
    if manifest and Path(manifest).exists():
        for f in read_json(manifest).get("files", []):
            for d in f.get("demos", []):
                lengths[f"{f.get('task_id')}/{d.get('name')}"] = int(d.get("T", 0))
    out = []
    for p in sorted(splits_dir.rglob("*.json")):
        rel = p.relative_to(splits_dir).as_posix()
        ent = {"file": rel, "sha256": sha256_file(p), "episodes": None, "tasks": None, "frames": None}
        try:
            data = read_json(p)
        except ValueError:
            data = None
        eps = data.get("episodes") if isinstance(data, dict) else None
        if isinstance(eps, list):
            ent["episodes"] = len(eps)
            ent["tasks"] = len({str(e).rpartition("/")[0] for e in eps})
            if lengths:
                ent["frames"] = int(sum(lengths.get(str(e), 0) for e in eps))
        out.append(ent)
    return out


# ============================================================================ README


def _subset(table: Table, variant: str | None, keep_refs: bool = False) -> Table:
    """The rows of one run (and, with keep_refs, the reference rows); notes about absent rows dropped."""
    rows = [r for r in table.rows if r.variant == variant or (keep_refs and r.variant is None)]
    text = " ".join(str(c[1]) for r in rows for c in r.cells if c and c[0] == "text")
    labels = {str(r.cells[0][1]) for r in rows if r.cells and r.cells[0][0] == "text"}
    notes = [
        n
        for n in table.notes
        if not (n.startswith(DAGGER) and DAGGER not in text)
        and not (n.startswith("‡") and "‡" not in text)
        and not (n.startswith("Row “") and n[len("Row “") :].split("”", 1)[0] not in labels)
    ]
    return replace(table, rows=rows, notes=notes)


def _md_table(table: Table) -> str:
    return render_md(table, None, level=4)


def _fmt_int(n) -> str:
    return f"{int(n):,}" if isinstance(n, (int, float)) else "—"


def _describe(kind: str, run: str, args: dict, sd_info: dict, variant: dict | None, step) -> str:
    if kind == "tokenizer":
        return (
            f"Causal video tokenizer `{run}` (Dreamer 4 tokenizer, nicklashansen/dreamer4 layout) trained on "
            f"LIBERO frames: d_model {args.get('d_model')}, depth {args.get('depth')}, {args.get('n_latents')} "
            f"latents × {args.get('d_bottleneck')} bottleneck, patch {args.get('patch')} at "
            f"{args.get('H')}×{args.get('W')}, sequence length {args.get('seq_len')}, MAE masking "
            f"p ∈ [{args.get('mae_p_min')}, {args.get('mae_p_max')}], LPIPS weight {args.get('lpips_weight')}; "
            f"{step} updates; {_fmt_int(sd_info['n_params'])} parameters. It is the frozen tokenizer of the "
            "study's world models."
        )
    v = variant or {}
    init = args.get("init_from")
    init_txt = "from scratch" if not init else f"initialised from {init if isinstance(init, str) else 'DMControl'}"
    aux = float(args.get("aux_weight") or 0.0)
    aux_txt = (
        (
            f"inverse-dynamics aux head λ = {aux:g} ({args.get('aux_input')} aux input"
            + (
                ": the published setup, where the predicted action token is visible"
                if args.get("aux_input") == "leaky"
                else ": every action token nulled for the aux rows, no leak"
            )
            + ")"
        )
        if aux > 0
        else "no aux head"
    )
    txt = (
        f"Dreamer 4 world model (dynamics) `{run}` on LIBERO, {init_txt}, {aux_txt}; d_model "
        f"{args.get('d_model_dyn')}, depth {args.get('dyn_depth')}, space_mode `{args.get('space_mode')}`, "
        f"{args.get('n_agent')} agent token(s), sequence length {args.get('seq_len')}, {step} updates "
        f"(max_steps {args.get('max_steps')}); {_fmt_int(sd_info['n_params'])} dynamics parameters (aux head "
        "excluded). Shortcut forcing with the upstream token layout; actions condition every block."
    )
    if v.get("stand_in_for"):
        txt += f" **Stand-in:** {v['stand_in_for']}."
    if v.get("init_note"):
        txt += f" **Initial weights:** {v['init_note']}."
    return txt


def _limitations(kind: str, args: dict, variant: dict | None) -> list[str]:
    out = []
    if kind == "dynamics":
        sm = args.get("space_mode")
        if sm in (None, "wm_agent_isolated"):
            out.append(
                "Agent-token isolation: with `space_mode = wm_agent_isolated` (the upstream default) agent "
                "tokens attend only to agent tokens and get zero inputs without task tokens, so the agent "
                "output is a function of the window position only — identical in every episode. Probing "
                "it gives the degenerate ≈ −0.04 signature (evaluation.md §1.3, §1.8), not a finding "
                "about "
                "the world model."
            )
        else:
            out.append(f"space_mode `{sm}`: agent tokens can read the frame, unlike the upstream default.")
        if args.get("aux_input") == "leaky" and float(args.get("aux_weight") or 0) > 0:
            out.append(
                "Leaky aux input (published setup): the aux head reads the main pass, where the action "
                "token it predicts is visible."
            )
        out.append(
            "Single training seed: probe seeds change the probe lists, folds and bootstrap only; their "
            "spread is probe variance, not training variance."
        )
    out.append(
        "Probe convention vs the paper's quoted rows (V-JEPA 2, LAPA): their mode and R² averaging are not "
        "stated, so comparisons are indicative (a factor of two is possible)."
    )
    if (variant or {}).get("stand_in_for"):
        out.append(f"This run is a scaled-down stand-in: {variant['stand_in_for']}.")
    return out


def _load_section(kind: str, weights: str, sd_info: dict, args: dict, has_aux: bool, tok_run: str | None) -> str:
    if kind == "tokenizer":
        fn, cls = "load_tokenizer_checkpoint", "dreamer4_libero.models.tokenizer.Tokenizer"
    else:
        fn, cls = "load_dynamics_checkpoint", "dreamer4_libero.models.dynamics.Dynamics"
    key = "model" if kind == "tokenizer" else "dynamics"
    lines = [
        "```python",
        f"from dreamer4_libero.models.upstream import {fn}",
        "",
        f'model, report = {fn}("{weights}")   # {cls}, eval mode, strict load',
        "```",
        "",
        f"`{weights}` is a dict in the upstream (nicklashansen/dreamer4 `train_{kind}.py`) "
        f"layout: `step`, `epoch`, `{key}` (the state dict), `opt` (empty), `scaler`, `args`, "
        "`scale_pos_embeds`. The architecture is read from the state-dict shapes, the parameter-free settings "
        "from `args` (`config.json` holds the same args).",
        "",
        f"Expected state dict: {sd_info['n_keys']} keys, {_fmt_int(sd_info['n_params'])} parameters; key groups:",
        "",
    ]
    lines += [f"- `{g}` × {n}" for g, n in sd_info["groups"].items()]
    lines += [
        "",
        "Keys carry no wrapper prefix. A checkpoint saved from a `torch.compile`d module prefixes every "
        "key with `_orig_mod.` (DDP: `module.`); `read_checkpoint` / the load functions strip both, and "
        "`dreamer4_libero.models.upstream.add_prefix(sd, \"_orig_mod.\")` restores it for code that "
        "expects a compiled module's keys.",
    ]
    if has_aux:
        lines += [
            "",
            "The aux head is not part of the world model (feature extraction asserts it is absent): it is "
            "in `aux_head.pt`, `torch.load(...)[\"aux_head\"]` loads into "
            "`dreamer4_libero.models.dynamics.InverseDynamicsHead(d_model, 16)`.",
        ]
    if kind == "dynamics":
        lines += [
            "",
            f"Latents come from the frozen tokenizer with sha256 `{args.get('tokenizer_sha256')}`"
            + (f" (card: `../{tok_run}/`)." if tok_run else "."),
        ]
    return "\n".join(lines)


def render_readme(
    run: str,
    kind: str,
    weights: str,
    args: dict,
    sd_info: dict,
    inp: Inputs,
    tables: Sequence[Table],
    splits: list[dict],
    files: list[tuple[str, int, str]],
    step,
    has_aux: bool,
    rollout_seeds,
) -> str:
    variant = inp.variant(run)
    by_key = {t.key: t for t in tables}
    tok_run = inp.config.get("tokenizer_run")
    out = [f"# Model card — `{run}`", "", _describe(kind, run, args, sd_info, variant, step), ""]
    out += ["## Training data", ""]
    if splits:
        out += ["| split file | sha256 | episodes | tasks | frames |", "|---|---|---|---|---|"]
        for s in splits:
            out.append(
                f"| {s['file']} | `{s['sha256']}` | {s['episodes'] if s['episodes'] is not None else '—'} | "
                f"{s['tasks'] if s['tasks'] is not None else '—'} | "
                f"{s['frames'] if s['frames'] is not None else '—'} |"
            )
        out.append("")
        out.append(
            "Trained on `train.json`; `val.json` and `test_ood.json` (held-out tasks) are for evaluation; "
            "`probe/seed<s>/` are the probe lists of each probe seed."
        )
    else:
        out.append("Split files not given to the archive stage.")
    out += ["", "## Results", ""]
    if kind == "dynamics":
        for key, refs in (
            ("table1_probe", False),
            ("paper_table_probe", False),
            ("table2_quality", True),
            ("paper_table_rollout", False),
            ("degeneracy", False),
            ("quality_bars", False),
            ("power", False),
        ):
            if key in by_key:
                sub = _subset(by_key[key], run, keep_refs=refs and key == "table2_quality")
                if key == "power":  # the case sentences of the other variants do not belong on this card
                    others = tuple(f"{v['name']}: " for v in inp.variants if v["name"] != run)
                    sub = replace(sub, notes=[n for n in sub.notes if not n.startswith(others)])
                out.append(_md_table(sub))
        if "controls" in by_key:
            ctl = by_key["controls"]
            rows = [
                r
                for r in ctl.rows
                if r.variant == run
                or (
                    r.variant is None
                    and r.not_run is None
                    and len(r.extra) > 6
                    and r.extra[5] == "policy"
                    and r.extra[6] == 1
                )
            ]
            out.append(
                _md_table(
                    replace(
                        ctl,
                        title="Controls (this run: every mode and H; controls and baselines: policy, H = 1)",
                        rows=rows,
                    )
                )
            )
    else:
        tok = inp.tokenizer.get(run)
        out.append("#### Reconstruction PSNR (evaluation.md §3)\n")
        out += [
            "| set | tok_psnr_frame_mean (dB) | tok_psnr_pooled (dB) | tok_psnr_masked_train_style (dB) |",
            "|---|---|---|---|",
        ]
        for sname, s in sorted(((tok or {}).get("sets") or {}).items()):
            out.append(
                f"| {sname} | {render_cell(('psnr', s.get('tok_psnr_frame_mean')), 'md')} | "
                f"{render_cell(('psnr', s.get('tok_psnr_pooled')), 'md')} | "
                f"{render_cell(('psnr', s.get('tok_psnr_masked_train_style')), 'md')} |"
            )
        out.append(f"\nArchived tokenizer PSNR: {ARCHIVED_TOKENIZER_PSNR:.2f} dB (convention not stated).\n")
        if "quality_bars" in by_key:
            out.append(_md_table(_subset(by_key["quality_bars"], run)))
    out += [
        "## Evaluation protocol and seeds",
        "",
        f"Protocol version `{PROTOCOL}` (evaluation.md). Probe seeds: {', '.join(map(str, inp.seeds))} "
        f"(bootstrap B = {inp.B} per seed); H ∈ {{{', '.join(map(str, inp.H_list))}}}; rollout seeds: "
        f"{rollout_seeds if rollout_seeds else '—'}; training seed: {args.get('seed', '—')} "
        "(one training run).",
        "",
        "## Known limitations",
        "",
    ]
    out += [f"- {x}" for x in _limitations(kind, args, variant)]
    out += [
        "",
        "## How to load",
        "",
        _load_section(kind, weights, sd_info, args, has_aux, tok_run),
        "",
        "## Licences",
        "",
        f"- {LIBERO_LICENCE}",
        f"- {UPSTREAM_LICENCE}",
        "",
        "## Files",
        "",
        "| file | bytes | sha256 |",
        "|---|---|---|",
    ]
    out += [f"| {name} | {size} | `{h}` |" for name, size, h in files]
    return "\n".join(out) + "\n"


# ============================================================================ driver


def _run_records(inp: Inputs, run: str) -> dict:
    probe = {
        inp.probe_paths[k]: inp.probe[k] for k in sorted(inp.probe, key=lambda k: inp.probe_paths[k]) if k[0] == run
    }
    return {
        "protocol": PROTOCOL,
        "run": run,
        "probe": probe,
        "rollout": inp.rollout.get(run),
        "tokenizer_eval": inp.tokenizer.get(run),
    }


def build_run_archive(
    run: str,
    out_dir: str | os.PathLike,
    inp: Inputs,
    tables: Sequence[Table],
    rollout_dir: str | os.PathLike | None = None,
    splits: list[dict] | None = None,
    verify: bool = True,
) -> Path:
    """Write `<out_dir>/<run>/` atomically; returns the folder."""
    train = inp.train.get(run)
    if train is None or train.checkpoint is None:
        raise FileNotFoundError(f"run {run}: no checkpoint.json in its training folder")
    ckj = train.checkpoint
    for k in ("path",):
        if k not in ckj:
            raise ValueError(f"{train.folder / 'checkpoint.json'}: malformed checkpoint.json: missing key '{k}'")
    ck = read_engine_checkpoint(ckj["path"], ckj.get("sha256"))
    kind = "tokenizer" if (ckj.get("model_key") == "model" or ("model" in ck and "dynamics" not in ck)) else "dynamics"
    key = "model" if kind == "tokenizer" else "dynamics"
    weights = f"{kind}.pt"
    up = upstream_checkpoint(ck, key)
    aux = aux_head_file(ck) if kind == "dynamics" else None
    sd_info = state_dict_summary(up[key])
    torch = _torch()
    final = Path(out_dir) / run
    with atomic_dir(final) as tmp:
        torch.save(up, str(tmp / weights))
        if aux is not None:
            torch.save(aux, str(tmp / "aux_head.pt"))
        if verify:
            from ..models.upstream import load_dynamics_checkpoint, load_tokenizer_checkpoint

            fn = load_tokenizer_checkpoint if kind == "tokenizer" else load_dynamics_checkpoint
            fn(str(tmp / weights))  # strict load: the card's instructions work
        (tmp / "config.json").write_text(dumps_json(up["args"]))
        # compact (probe records carry per-episode statistics; indented JSON would be several times larger)
        (tmp / "metrics.json").write_text(
            json.dumps(_run_records(inp, run), sort_keys=True, separators=(",", ":")) + "\n"
        )
        if train.has_metrics:
            plot_metrics(train.metrics, tmp, prefix="curve_", title=run)
            aux_mse_png(train.metrics, tmp / "curve_aux_mse.png", f"{run} aux head MSE")
        if rollout_dir and Path(rollout_dir).is_dir():
            for p in sorted(Path(rollout_dir).iterdir()):
                if p.is_file() and p.suffix.lower() in ROLLOUT_MEDIA:
                    shutil.copyfile(p, tmp / f"rollout_{p.name}" if not p.name.startswith("rollout") else tmp / p.name)
        files = [(p.name, p.stat().st_size, sha256_file(p)) for p in sorted(tmp.iterdir()) if p.is_file()]
        rseeds = (inp.rollout.get(run) or {}).get("rollout_seeds")
        text = render_readme(
            run,
            kind,
            weights,
            up["args"],
            sd_info,
            inp,
            tables,
            splits or [],
            files,
            up["step"],
            aux is not None,
            rseeds,
        )
        (tmp / "README.md").write_text(text)
    return final


def render_index(inp: Inputs, runs: Sequence[str], tables_md: str) -> str:
    out = [
        f"# Model archive ({PROTOCOL})",
        "",
        "One folder per trained run (model card `README.md`, upstream-format weights, config, records, curves).",
        "",
    ]
    out += ["| run | card |", "|---|---|"]
    out += [f"| {r} | [{r}/README.md]({r}/README.md) |" for r in runs]
    not_run = [(v["name"], inp.not_run_reason(v["name"])) for v in inp.variants if inp.not_run_reason(v["name"])]
    out += [f"| {n} | not run: {why} |" for n, why in not_run]
    body = tables_md
    if body.startswith("# "):
        body = body.split("\n", 1)[1] if "\n" in body else ""
    out += ["", "# Tables and plots", "", body.strip(), ""]
    return "\n".join(out)


def make_archive(
    tables_config: dict,
    out_dir: str | os.PathLike,
    probe_summaries: Iterable = (),
    rollout: Iterable = (),
    tokenizer_eval: Iterable = (),
    train_dirs: Iterable = (),
    tables_dir: str | os.PathLike | None = None,
    rollout_dirs: Iterable = (),
    splits_dir: str | os.PathLike | None = None,
    manifest: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    verify: bool = True,
) -> list[Path]:
    """Every run's card folder plus `<out_dir>/README.md` (tables and plots); returns the paths written."""
    inp = load_inputs(tables_config, probe_summaries, rollout, tokenizer_eval, train_dirs, root=root)
    tables = build_tables(inp)
    splits = split_files(splits_dir, manifest)
    rdirs = {Path(d).name: Path(d) for d in rollout_dirs}
    out_dir = Path(out_dir)
    order = [inp.config.get("tokenizer_run")] + [v["name"] for v in inp.variants]
    runs = [r for r in order if r and r in inp.train and inp.train[r].not_run is None and inp.train[r].checkpoint]
    runs += sorted(r for r, t in inp.train.items() if r not in runs and t.not_run is None and t.checkpoint)
    written = []
    for run in runs:
        written.append(build_run_archive(run, out_dir, inp, tables, rdirs.get(run), splits, verify=verify))
        log.info("archived %s", run)
    # the study's tables and plots
    tdir = Path(tables_dir) if tables_dir else None
    if tdir is not None and (tdir / "tables.md").exists():
        tables_md = (tdir / "tables.md").read_text()
        src_plots = tdir / "plots"
    else:
        tables_md = render_all_md(tables, inp)
        src_plots = None
    with atomic_dir(out_dir / "plots") as tmp:
        if src_plots is not None and src_plots.is_dir():
            for p in sorted(src_plots.glob("*.png")):
                shutil.copyfile(p, tmp / p.name)
        else:
            write_plots(inp, tmp)
    with atomic_path(out_dir / "README.md") as tmp:
        tmp.write_text(render_index(inp, runs, tables_md))
    written.append(out_dir / "README.md")
    return written
