#!/usr/bin/env python
"""Rollout PSNR, 8 context -> 24 predicted frames (rule `rollout_eval`, evaluation.md §2).

Writes into --out-dir: rollout.json (docs/results_format.md, "Rollout records"), the window lists
windows_test_ood.json / windows_val.json, strips.png (ground truth vs rollout), rollout.gif and
per_step_psnr.png. When the variant's tokenizer is not the study tokenizer, rollout.json also holds
the §3 tokenizer block of that tokenizer ("tokenizer_eval").
"""

import argparse
import json
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dreamer4_libero.cli import run_main
from dreamer4_libero.data.loader import episode_list
from dreamer4_libero.data.shards import ShardStore
from dreamer4_libero.evaluation.rollout import (NOISE_RULE, NULL_ACTION, PROTOCOL, cap_windows, evaluate_rollouts,
                                                rollout_windows, write_windows)
from dreamer4_libero.evaluation.tokenizer_psnr import evaluate_tokenizer
from dreamer4_libero.fileio import read_json, sha256_file, write_json
from dreamer4_libero.models.sampling import tau_schedule
from dreamer4_libero.models.tokenizer_chunks import tokenizer_train_seq_len
from dreamer4_libero.models.upstream import load_tokenizer_checkpoint
from dreamer4_libero.reporting.plots import copy_last_frames, per_step_psnr, rollout_gif, rollout_strips, to_uint8
from dreamer4_libero.evaluation.loading import load_run, versions
from dreamer4_libero.evaluation.runtime import eval_autocast, eval_device, precision_name, run_amp

EVAL_REQUIRED = ("eps_per_task", "context", "horizon", "euler_steps", "rollout_seed", "bootstrap_B",
                 "max_val_windows", "n_strips")
EVAL_OPTIONAL = {"bootstrap_seed": 0, "batch_size": 8, "stride": 40, "per_episode": 2, "device": "auto"}


def parse_eval(text: str) -> dict:
    try:
        ev = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--eval is not valid JSON: {exc}") from None
    if not isinstance(ev, dict):
        raise ValueError("--eval must be a JSON object")
    missing = [k for k in EVAL_REQUIRED if k not in ev]
    unknown = sorted(set(ev) - set(EVAL_REQUIRED) - set(EVAL_OPTIONAL))
    if missing:
        raise ValueError(f"--eval: missing key(s) {missing} (required: {list(EVAL_REQUIRED)})")
    if unknown:
        raise ValueError(f"--eval: unknown key(s) {unknown} (allowed: {list(EVAL_REQUIRED) + list(EVAL_OPTIONAL)})")
    ev = {**EVAL_OPTIONAL, **ev}
    for k in ("eps_per_task", "context", "horizon", "euler_steps", "bootstrap_B", "batch_size", "stride",
              "per_episode"):
        if not isinstance(ev[k], int) or ev[k] < 1:
            raise ValueError(f"--eval: {k} must be a positive integer, got {ev[k]!r}")
    if ev["max_val_windows"] is not None and (not isinstance(ev["max_val_windows"], int) or ev["max_val_windows"] < 1):
        raise ValueError(f"--eval: max_val_windows must be a positive integer or null, got {ev['max_val_windows']!r}")
    if not isinstance(ev["n_strips"], int) or ev["n_strips"] < 0:
        raise ValueError(f"--eval: n_strips must be an integer >= 0, got {ev['n_strips']!r}")
    return ev


def tokenizer_block(tok_path: str, store, sets: dict, resolution: int, seed: int, bar, device="cpu",
                    batch: int = 16) -> dict:
    """§3 for the variant's own tokenizer (its training seq_len as chunk; upstream's 8 if unrecorded).
    Runs on `device`, `batch` chunks per pass, under the caller's autocast, as the tokenizer_eval rule does."""
    model, _ = load_tokenizer_checkpoint(tok_path)
    model = model.to(device)
    chunk, origin = tokenizer_train_seq_len(tok_path)
    res = evaluate_tokenizer(model, store, sets, resolution=resolution, chunk=chunk, seed=seed, progress=bar,
                             batch=batch)
    return {"checkpoint": os.path.abspath(tok_path), "checkpoint_sha256": sha256_file(tok_path), "chunk": chunk,
            "chunk_origin": origin, "mae": "off (eval mode)", "sets": res, "episodes": sets}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint-json", required=True, help="results/train/<variant>/checkpoint.json")
    ap.add_argument("--manifest", required=True, help="preprocessing manifest.json")
    ap.add_argument("--test-ood", required=True, help="splits/test_ood.json (headline windows)")
    ap.add_argument("--val", required=True, help="splits/val.json (secondary windows: seen tasks, unseen demos)")
    ap.add_argument("--resolution", type=int, required=True, help="model resolution (data.model_resolution)")
    ap.add_argument("--eval", required=True, help="JSON: " + ", ".join(EVAL_REQUIRED) + " [, "
                    + ", ".join(EVAL_OPTIONAL) + "]")
    ap.add_argument("--study-tokenizer-checkpoint-json", default=None,
                    help="the study tokenizer's checkpoint.json (its sha256 is used as --study-tokenizer-sha256)")
    ap.add_argument("--study-tokenizer-sha256", default=None,
                    help="sha256 of the study tokenizer; a variant with another tokenizer also gets its §3 block")
    ap.add_argument("--out-dir", required=True, help="results/rollout/<variant>")
    ap.add_argument("--progress", default="true", choices=["true", "false"])
    ap.add_argument("--expect-gpus", type=int, default=0, help="GPUs the job was given: stop at once if torch "
                    "cannot use them (training/devices.py; $D4L_ALLOW_CPU_FALLBACK opts out)")
    a = ap.parse_args()
    device = eval_device(a.expect_gpus, who="rollout_eval")  # before any data or checkpoint is loaded
    ev = parse_eval(a.eval)
    if ev["device"] != "auto":  # an explicit device of the eval config wins
        device = torch.device(ev["device"])
    for p in (a.manifest, a.test_ood, a.val):
        if not os.path.exists(p):
            raise FileNotFoundError(f"input file not found: {p}")
    tok, dyn, info = load_run(a.checkpoint_json, a.resolution, device)
    amp = run_amp(a.checkpoint_json)  # the variant's own mixed precision (CUDA only; CPU runs fp32)
    print(f"[rollout_eval] device {device}, precision {precision_name(device, amp)} (amp {amp})", flush=True)
    ck = read_json(a.checkpoint_json)
    args, tok_path, tok_sha = info["args"], info["tokenizer_path"], info["tokenizer_sha256"]
    packing, report = info["packing_factor"], info["load_report"]
    variant = ck.get("run_name") or args.get("variant") or Path(a.checkpoint_json).parent.name
    d = 1.0 / ev["euler_steps"]
    tau_schedule(dyn.cfg.k_max, "shortcut", d)            # 1/d must be a power of two dividing k_max
    store = ShardStore(a.manifest)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    win_meta = {"context": ev["context"], "horizon": ev["horizon"], "eps_per_task": ev["eps_per_task"],
                "stride": ev["stride"], "per_episode": ev["per_episode"],
                "rule": "tasks sorted; per task the first eps_per_task demos in numeric order with T >= context + "
                        "horizon; starts 0, stride, ... with s + context + horizon - 1 <= T - 1, at most "
                        "per_episode per episode (evaluation.md §2)"}
    sets = {}
    for name, split, cap in (("test_ood", a.test_ood, None), ("val", a.val, ev["max_val_windows"])):
        wins = rollout_windows(store, episode_list(split), ev["eps_per_task"], ev["context"], ev["horizon"],
                               ev["stride"], ev["per_episode"])
        if not wins:
            raise ValueError(f"{split}: no episode with >= {ev['context'] + ev['horizon']} frames "
                             f"gives a rollout window")
        wins = cap_windows(wins, cap)
        path = out / f"windows_{name}.json"
        sha = write_windows(path, wins, {**win_meta, "set": name, "split_sha256": sha256_file(split),
                                         "max_windows": cap})
        sets[name] = {"split": os.path.abspath(split), "split_sha256": sha256_file(split), "windows": wins,
                      "windows_file": str(path), "windows_sha256": sha}
    if a.study_tokenizer_checkpoint_json:
        a.study_tokenizer_sha256 = read_json(a.study_tokenizer_checkpoint_json)["sha256"]
    run_tok = bool(a.study_tokenizer_sha256) and a.study_tokenizer_sha256 != tok_sha
    tok_sets = {f"{n}_rollout_list" if n == "test_ood" else n: list(dict.fromkeys(w["episode"] for w in s["windows"]))
                for n, s in sets.items()}
    total = sum(len(s["windows"]) for s in sets.values()) + (sum(map(len, tok_sets.values())) if run_tok else 0)
    results, examples = {}, {}
    with tqdm(total=total, desc=f"rollout eval {variant}", unit="win", disable=a.progress == "false",
              dynamic_ncols=True) as bar, eval_autocast(device, amp):
        for name, s in sets.items():
            bar.set_postfix_str(name)
            block, ex = evaluate_rollouts(tok, dyn, store, s["windows"], resolution=a.resolution, packing=packing,
                                          context=ev["context"], horizon=ev["horizon"], d=d,
                                          rollout_seed=ev["rollout_seed"], B=ev["bootstrap_B"],
                                          bootstrap_seed=ev["bootstrap_seed"], set_name=name,
                                          batch_size=ev["batch_size"], n_examples=ev["n_strips"], progress=bar,
                                          tokenizer_chunk=info["tokenizer_chunk"],
                                          ceiling_chunk=info["tokenizer_train_seq_len"])
            results[name] = {"windows_file": s["windows_file"], "windows_sha256": s["windows_sha256"],
                             "split": s["split"], "split_sha256": s["split_sha256"], **block}
            examples[name] = ex
        tok_eval = None
        if run_tok:
            bar.set_postfix_str("tokenizer §3")
            tok_eval = tokenizer_block(tok_path, store, tok_sets, a.resolution, ev["rollout_seed"], bar, device)
    record = {
        "protocol": PROTOCOL, "variant": variant, "checkpoint": ck["path"],
        "checkpoint_sha256": ck.get("sha256") or sha256_file(ck["path"]), "step": ck.get("step"),
        "tokenizer_checkpoint": os.path.abspath(tok_path), "tokenizer_sha256": tok_sha,
        "study_tokenizer_sha256": a.study_tokenizer_sha256, "packing_factor": packing,
        "space_mode": dyn.cfg.space_mode, "resolution": a.resolution,
        "tokenizer_chunk": info["tokenizer_chunk"], "tokenizer_train_seq_len": info["tokenizer_train_seq_len"],
        "n_params": {"tokenizer": sum(p.numel() for p in tok.parameters()),
                     "dynamics": sum(p.numel() for p in dyn.parameters())},
        "context": ev["context"], "horizon": ev["horizon"], "euler_steps": ev["euler_steps"], "k_max": dyn.cfg.k_max,
        "decode_window": ev["context"] + ev["horizon"], "rollout_seeds": [ev["rollout_seed"]],
        "bootstrap_B": ev["bootstrap_B"], "bootstrap_seed": ev["bootstrap_seed"], "eval": ev,
        "precision": precision_name(device, amp), "device": str(next(dyn.parameters()).device), "noise": NOISE_RULE,
        "null_action": NULL_ACTION, "aux_head_loaded": False, "loader_report": report,
        "not_computed": ["ssim (optional, §2)", "lpips", "fvd", "several rollout seeds (n_rollout_seeds)"],
        "sets": results, "tokenizer_eval": tok_eval, "versions": versions(),
    }
    write_json(out / "rollout.json", record)
    for name, r in results.items():
        rows = r["rows"]
        m, da = rows["model"], r["delta_action"]
        print(f"{name:9s} {r['n_windows']} windows: model {m['psnr_frame_mean']:.2f} dB frame-mean "
              f"[{m['ci'][0]:.2f}, {m['ci'][1]:.2f}], pooled {m['psnr_pooled']:.2f}; shuffled "
              f"{rows['action_shuffled']['psnr_frame_mean']:.2f} (Δ_action {da['mean']:+.2f} "
              f"[{da['ci'][0]:+.2f}, {da['ci'][1]:+.2f}]); null {rows['null_actions']['psnr_frame_mean']:.2f}; "
              f"copy-last {rows['copy_last_context']['psnr_frame_mean']:.2f} (Δ frames "
              + ", ".join(f"{b['frames'][0]}-{b['frames'][1]} {b['mean']:+.2f} [{b['ci'][0]:+.2f}, {b['ci'][1]:+.2f}]"
                          for b in r["delta_copy_last_bins"]) + "); "
              f"ceiling {rows['tokenizer_ceiling']['psnr_frame_mean']:.2f} (whole window), "
              f"{rows['tokenizer_ceiling_chunked']['psnr_frame_mean']:.2f} (chunks of "
              f"{info['tokenizer_train_seq_len']})", flush=True)
    if tok_eval is not None:
        for name, r in tok_eval["sets"].items():
            print(f"tokenizer {name}: PSNR frame-mean {r['tok_psnr_frame_mean']:.2f} dB (chunk {tok_eval['chunk']})")
    strips, clips = [], []
    for name, exs in examples.items():
        for e in exs:
            gt = to_uint8(e["gt"])
            rows = [("ground truth", gt), ("rollout, true actions", to_uint8(e["model"])),
                    ("rollout, shuffled actions", to_uint8(e["action_shuffled"])),
                    ("copy last context frame", copy_last_frames(gt, ev["context"]))]
            strips.append({"label": f"{name}: {e['id']}", "rows": rows})
            if name == "test_ood":
                clips.append({"rows": [(lab.split(",")[-1].strip(), v) for lab, v in rows]})
    if strips:
        rollout_strips(strips, out / "strips.png", f"{variant}: {ev['context']} context -> {ev['horizon']} predicted "
                       f"frames ({ev['euler_steps']} Euler steps)", context=ev["context"])
    if clips:
        rollout_gif(clips[:4], out / "rollout.gif", context=ev["context"])
    per_step_psnr({n: {k: v["per_step_psnr"] for k, v in r["rows"].items()} for n, r in results.items()},
                  out / "per_step_psnr.png", f"{variant}: per-step rollout PSNR")


if __name__ == "__main__":
    run_main(main, "rollout_eval")
