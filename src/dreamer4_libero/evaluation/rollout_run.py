"""The `rollout_eval` job (evaluation.md §2): one variant's rollout record, window lists, strips and GIF.

`run_rollout_eval` does the whole job for workflow_scripts/rollout_eval.py: window lists of
test_ood (headline) and val (secondary), the rollouts and their PSNR rows with paired bootstrap
deltas (evaluation/rollout.py), the §3 tokenizer block when the variant's tokenizer is not the study
tokenizer, the record (docs/results_format.md, "Rollout records"), a console summary per set, and
the strips / GIF / per-step PSNR plots.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.loader import episode_list
from ..data.shards import ShardStore
from ..fileio import read_json, sha256_file, write_json
from ..models.sampling import tau_schedule
from ..models.tokenizer_chunks import tokenizer_train_seq_len
from ..models.upstream import load_tokenizer_checkpoint
from ..reporting.plots import copy_last_frames, per_step_psnr, rollout_gif, rollout_strips, to_uint8
from .loading import load_run, versions
from .rollout import NOISE_RULE, NULL_ACTION, PROTOCOL, cap_windows, evaluate_rollouts, rollout_windows, write_windows
from .runtime import eval_autocast, precision_name, run_amp
from .tokenizer_psnr import evaluate_tokenizer

WINDOW_RULE = (
    "tasks sorted; per task the first eps_per_task demos in numeric order with T >= context + horizon; "
    "starts 0, stride, ... with s + context + horizon - 1 <= T - 1, at most per_episode per episode "
    "(evaluation.md §2)"
)
NOT_COMPUTED = ["ssim (optional, §2)", "lpips", "fvd", "several rollout seeds (n_rollout_seeds)"]


def tokenizer_block(
    tok_path: str, store, sets: dict, resolution: int, seed: int, bar, device="cpu", batch: int = 16
) -> dict:
    """§3 for the variant's own tokenizer (its training seq_len as chunk; upstream's 8 if unrecorded).
    Runs on `device`, `batch` chunks per pass, under the caller's autocast, as the tokenizer_eval rule does."""
    model, _ = load_tokenizer_checkpoint(tok_path)
    model = model.to(device)
    chunk, origin = tokenizer_train_seq_len(tok_path)
    res = evaluate_tokenizer(
        model, store, sets, resolution=resolution, chunk=chunk, seed=seed, progress=bar, batch=batch
    )
    return {
        "checkpoint": os.path.abspath(tok_path),
        "checkpoint_sha256": sha256_file(tok_path),
        "chunk": chunk,
        "chunk_origin": origin,
        "mae": "off (eval mode)",
        "sets": res,
        "episodes": sets,
    }


def window_sets(store: ShardStore, splits: dict[str, tuple[str, int | None]], ev: dict, out: Path) -> dict:
    """name -> {split, split_sha256, windows, windows_file, windows_sha256} for each (split file, cap); the
    window lists are written to `out/windows_<name>.json`."""
    meta = {
        "context": ev["context"],
        "horizon": ev["horizon"],
        "eps_per_task": ev["eps_per_task"],
        "stride": ev["stride"],
        "per_episode": ev["per_episode"],
        "rule": WINDOW_RULE,
    }
    sets = {}
    for name, (split, cap) in splits.items():
        wins = rollout_windows(
            store,
            episode_list(split),
            ev["eps_per_task"],
            ev["context"],
            ev["horizon"],
            ev["stride"],
            ev["per_episode"],
        )
        if not wins:
            raise ValueError(
                f"{split}: no episode with >= {ev['context'] + ev['horizon']} frames gives a rollout window"
            )
        wins = cap_windows(wins, cap)
        path = out / f"windows_{name}.json"
        sha = write_windows(path, wins, {**meta, "set": name, "split_sha256": sha256_file(split), "max_windows": cap})
        sets[name] = {
            "split": os.path.abspath(split),
            "split_sha256": sha256_file(split),
            "windows": wins,
            "windows_file": str(path),
            "windows_sha256": sha,
        }
    return sets


def summary_lines(record: dict) -> list[str]:
    """One console line per set (model, shuffled and null actions, copy-last per third, both ceilings),
    then the variant's own tokenizer PSNR when it has one."""
    lines = []
    for name, r in record["sets"].items():
        rows = r["rows"]
        m, da = rows["model"], r["delta_action"]
        lines.append(
            f"{name:9s} {r['n_windows']} windows: model {m['psnr_frame_mean']:.2f} dB frame-mean "
            f"[{m['ci'][0]:.2f}, {m['ci'][1]:.2f}], pooled {m['psnr_pooled']:.2f}; shuffled "
            f"{rows['action_shuffled']['psnr_frame_mean']:.2f} (Δ_action {da['mean']:+.2f} "
            f"[{da['ci'][0]:+.2f}, {da['ci'][1]:+.2f}]); null {rows['null_actions']['psnr_frame_mean']:.2f}; "
            f"copy-last {rows['copy_last_context']['psnr_frame_mean']:.2f} (Δ frames "
            + ", ".join(
                f"{b['frames'][0]}-{b['frames'][1]} {b['mean']:+.2f} [{b['ci'][0]:+.2f}, {b['ci'][1]:+.2f}]"
                for b in r["delta_copy_last_bins"]
            )
            + "); "
            f"ceiling {rows['tokenizer_ceiling']['psnr_frame_mean']:.2f} (whole window), "
            f"{rows['tokenizer_ceiling_chunked']['psnr_frame_mean']:.2f} (chunks of "
            f"{record['tokenizer_train_seq_len']})"
        )
    tok_eval = record["tokenizer_eval"]
    for name, r in (tok_eval or {}).get("sets", {}).items():
        lines.append(f"tokenizer {name}: PSNR frame-mean {r['tok_psnr_frame_mean']:.2f} dB (chunk {tok_eval['chunk']})")
    return lines


def write_media(examples: dict[str, list[dict]], results: dict, variant: str, ev: dict, out: Path) -> None:
    """strips.png (every example), rollout.gif (the first 4 test_ood examples) and per_step_psnr.png."""
    strips, clips = [], []
    for name, exs in examples.items():
        for e in exs:
            gt = to_uint8(e["gt"])
            rows = [
                ("ground truth", gt),
                ("rollout, true actions", to_uint8(e["model"])),
                ("rollout, shuffled actions", to_uint8(e["action_shuffled"])),
                ("copy last context frame", copy_last_frames(gt, ev["context"])),
            ]
            strips.append({"label": f"{name}: {e['id']}", "rows": rows})
            if name == "test_ood":
                clips.append({"rows": [(lab.split(",")[-1].strip(), v) for lab, v in rows]})
    if strips:
        rollout_strips(
            strips,
            out / "strips.png",
            f"{variant}: {ev['context']} context -> {ev['horizon']} predicted frames ({ev['euler_steps']} Euler steps)",
            context=ev["context"],
        )
    if clips:
        rollout_gif(clips[:4], out / "rollout.gif", context=ev["context"])
    per_step_psnr(
        {n: {k: v["per_step_psnr"] for k, v in r["rows"].items()} for n, r in results.items()},
        out / "per_step_psnr.png",
        f"{variant}: per-step rollout PSNR",
    )


def run_rollout_eval(
    checkpoint_json: str,
    manifest: str,
    test_ood: str,
    val: str,
    *,
    resolution: int,
    ev: dict,
    out_dir: str,
    device: torch.device,
    study_tokenizer_sha256: str | None = None,
    study_tokenizer_checkpoint_json: str | None = None,
    progress: bool = True,
) -> dict:
    """The whole rollout_eval job (module docstring); `ev` is the validated `rollout_eval` config section.
    Returns the record written to `out_dir/rollout.json`."""
    if ev["device"] != "auto":  # an explicit device of the eval config wins
        device = torch.device(ev["device"])
    for p in (manifest, test_ood, val):
        if not os.path.exists(p):
            raise FileNotFoundError(f"input file not found: {p}")
    tok, dyn, info = load_run(checkpoint_json, resolution, device)
    amp = run_amp(checkpoint_json)  # the variant's own mixed precision (CUDA only; CPU runs fp32)
    print(f"[rollout_eval] device {device}, precision {precision_name(device, amp)} (amp {amp})", flush=True)
    ck = read_json(checkpoint_json)
    args, tok_path, tok_sha = info["args"], info["tokenizer_path"], info["tokenizer_sha256"]
    variant = ck.get("run_name") or args.get("variant") or Path(checkpoint_json).parent.name
    d = 1.0 / ev["euler_steps"]
    tau_schedule(dyn.cfg.k_max, "shortcut", d)  # 1/d must be a power of two dividing k_max
    store = ShardStore(manifest)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sets = window_sets(store, {"test_ood": (test_ood, None), "val": (val, ev["max_val_windows"])}, ev, out)
    if study_tokenizer_checkpoint_json:
        study_tokenizer_sha256 = read_json(study_tokenizer_checkpoint_json)["sha256"]
    run_tok = bool(study_tokenizer_sha256) and study_tokenizer_sha256 != tok_sha
    tok_sets = {
        f"{n}_rollout_list" if n == "test_ood" else n: list(dict.fromkeys(w["episode"] for w in s["windows"]))
        for n, s in sets.items()
    }
    total = sum(len(s["windows"]) for s in sets.values()) + (sum(map(len, tok_sets.values())) if run_tok else 0)
    results, examples = {}, {}
    with (
        tqdm(total=total, desc=f"rollout eval {variant}", unit="win", disable=not progress, dynamic_ncols=True) as bar,
        eval_autocast(device, amp),
    ):
        for name, s in sets.items():
            bar.set_postfix_str(name)
            block, ex = evaluate_rollouts(
                tok,
                dyn,
                store,
                s["windows"],
                resolution=resolution,
                packing=info["packing_factor"],
                context=ev["context"],
                horizon=ev["horizon"],
                d=d,
                rollout_seed=ev["rollout_seed"],
                B=ev["bootstrap_B"],
                bootstrap_seed=ev["bootstrap_seed"],
                set_name=name,
                batch_size=ev["batch_size"],
                n_examples=ev["n_strips"],
                progress=bar,
                tokenizer_chunk=info["tokenizer_chunk"],
                ceiling_chunk=info["tokenizer_train_seq_len"],
            )
            results[name] = {
                "windows_file": s["windows_file"],
                "windows_sha256": s["windows_sha256"],
                "split": s["split"],
                "split_sha256": s["split_sha256"],
                **block,
            }
            examples[name] = ex
        tok_eval = None
        if run_tok:
            bar.set_postfix_str("tokenizer §3")
            tok_eval = tokenizer_block(tok_path, store, tok_sets, resolution, ev["rollout_seed"], bar, device)
    record = {
        "protocol": PROTOCOL,
        "variant": variant,
        "checkpoint": ck["path"],
        "checkpoint_sha256": ck.get("sha256") or sha256_file(ck["path"]),
        "step": ck.get("step"),
        "tokenizer_checkpoint": os.path.abspath(tok_path),
        "tokenizer_sha256": tok_sha,
        "study_tokenizer_sha256": study_tokenizer_sha256,
        "packing_factor": info["packing_factor"],
        "space_mode": dyn.cfg.space_mode,
        "resolution": resolution,
        "tokenizer_chunk": info["tokenizer_chunk"],
        "tokenizer_train_seq_len": info["tokenizer_train_seq_len"],
        "n_params": {
            "tokenizer": sum(p.numel() for p in tok.parameters()),
            "dynamics": sum(p.numel() for p in dyn.parameters()),
        },
        "context": ev["context"],
        "horizon": ev["horizon"],
        "euler_steps": ev["euler_steps"],
        "k_max": dyn.cfg.k_max,
        "decode_window": ev["context"] + ev["horizon"],
        "rollout_seeds": [ev["rollout_seed"]],
        "bootstrap_B": ev["bootstrap_B"],
        "bootstrap_seed": ev["bootstrap_seed"],
        "eval": ev,
        "precision": precision_name(device, amp),
        "device": str(next(dyn.parameters()).device),
        "noise": NOISE_RULE,
        "null_action": NULL_ACTION,
        "aux_head_loaded": False,
        "loader_report": info["load_report"],
        "not_computed": NOT_COMPUTED,
        "sets": results,
        "tokenizer_eval": tok_eval,
        "versions": versions(),
    }
    write_json(out / "rollout.json", record)
    for line in summary_lines(record):
        print(line, flush=True)
    write_media(examples, results, variant, ev, out)
    return record
