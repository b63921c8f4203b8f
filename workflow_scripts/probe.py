#!/usr/bin/env python
"""Linear action probe records of one world-model variant, or of the model-free baselines (rule `probe`).

Variant mode (--checkpoint-json): wm_agent and wm_spatial features, extraction past_actions and
video_only, probe modes policy and idm. Baselines mode (--baselines): tok_latent (study tokenizer),
pixels, frame_diff, time_only, lagged_actions (+ the demo's const_control / leak_control).
One record per (feature, extraction, probe mode, H, seed) in --out-dir, plus summary.json
(evaluation.md §1, docs/results_format.md). The folder is replaced atomically as a whole.
"""

import argparse
import json
import time


from tqdm.auto import tqdm

from dreamer4_libero.cli import run_main
from dreamer4_libero.data.shards import ShardStore
from dreamer4_libero.evaluation.features import baseline_feature_sets
from dreamer4_libero.evaluation.loading import load_run, versions
from dreamer4_libero.evaluation.probe_study import (PROTOCOL, FeatureGroup, load_probe_lists, record_name, run_study,
                                                    summarize)
from dreamer4_libero.evaluation.wm_features import EXTRACTIONS, NULL_ACTION, TokenizerFeatures, WorldModelFeatures
from dreamer4_libero.fileio import atomic_dir, dumps_json, read_json, sha256_file
from dreamer4_libero.evaluation.runtime import eval_autocast, eval_device, precision_name, run_amp
from dreamer4_libero.models.upstream import load_frozen_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    who = ap.add_mutually_exclusive_group(required=True)
    who.add_argument("--checkpoint-json", help="results/train/<variant>/checkpoint.json")
    who.add_argument("--baselines", action="store_true", help="model-free feature sets")
    ap.add_argument("--tokenizer-checkpoint-json", help="study tokenizer (baselines: tok_latent)")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--probe-root", required=True, help="results/preprocess/splits/probe")
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--resolution", type=int, required=True)
    ap.add_argument("--window", type=int, default=32, help="baselines: context window C of the window plan")
    ap.add_argument("--eval", required=True, help="JSON of config probe_eval")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--expect-gpus", type=int, default=0, help="GPUs the job was given: stop at once if torch "
                    "cannot use them (training/devices.py; $D4L_ALLOW_CPU_FALLBACK opts out)")
    a = ap.parse_args()
    # the GPU the job was given (checked before any data or checkpoint is loaded), else the CPU
    device = eval_device(a.expect_gpus, who="probe_baselines" if a.baselines else "probe")
    ev = json.loads(a.eval)
    t0 = time.perf_counter()
    amp = run_amp(a.checkpoint_json or a.tokenizer_checkpoint_json)  # the evaluated run's mixed precision
    store = ShardStore(a.manifest)
    lists = load_probe_lists(a.probe_root, a.seeds)
    groups = []
    if a.baselines:
        tok_info = {}
        enc = None
        if a.tokenizer_checkpoint_json:
            ck = read_json(a.tokenizer_checkpoint_json)
            tok, _ = load_frozen_tokenizer(ck["path"])
            enc = TokenizerFeatures(tok.to(device), resolution=a.resolution, device=device)
            tok_info = {"tokenizer_sha256": ck["sha256"],
                        "n_params": {"tokenizer": sum(p.numel() for p in tok.parameters()), "dynamics": None}}
        sets = baseline_feature_sets(ev["pixel_resolution"], ev["pca"], enc, a.window, controls=ev["control_features"])
        identity = {"variant": "baselines", "checkpoint_sha256": None, "space_mode": None,
                    "tokenizer_sha256": tok_info.get("tokenizer_sha256"), "n_params": tok_info.get("n_params"),
                    "null_action": None, "window": a.window}
        window = a.window
        for mode in ("policy", "idm"):
            groups.append(FeatureGroup("none", mode, lambda f, r, t, m=mode: {n: fs.extract(f, r, t, m)
                                                                               for n, fs in sets.items()}, sets))
    else:
        tok, dyn, info = load_run(a.checkpoint_json, a.resolution, device)
        window = info["seq_len"]
        wm = WorldModelFeatures(tok, dyn, packing=info["packing_factor"], window=window,
                                resolution=a.resolution, batch=ev["batch"], device=device,
                                tokenizer_chunk=info["tokenizer_chunk"])
        identity = {"variant": info["variant"], "checkpoint_sha256": info["checkpoint_sha256"],
                    "tokenizer_chunk": info["tokenizer_chunk"],
                    "tokenizer_sha256": info["tokenizer_sha256"], "space_mode": info["space_mode"],
                    "n_params": info["n_params"], "null_action": NULL_ACTION, "window": window,
                    "n_agent": dyn.cfg.n_agent}
        print(f"[probe] {info['variant']}: step {info['step']}, space_mode {info['space_mode']}, window {window}, "
              f"{info['n_params']['dynamics']:,} dynamics params", flush=True)
        for ext in EXTRACTIONS:
            for mode in ("policy", "idm"):
                groups.append(FeatureGroup(ext, mode, lambda f, r, t, m=mode, x=ext: wm.extract(f, r, t, m, x),
                                           wm.feature_sets(ext), stride=int(ev["frame_stride"].get(f"{mode}_{ext}", 1))))
    identity["versions"] = versions()
    print(f"[probe] device {device}, precision {precision_name(device, amp)} (amp {amp})", flush=True)
    with eval_autocast(device, amp):
        records = run_study(groups, store, lists, seeds=a.seeds, H_list=ev["H_list"], window=window,
                            B=ev["bootstrap_B"], identity=identity, leak_episodes=ev["leak_episodes"],
                            leak_targets=ev["leak_targets"], n_splits=ev["n_splits"], progress=tqdm)
    with atomic_dir(a.out_dir) as tmp:
        rows = []
        for rec in records:
            path = tmp / record_name(rec)
            path.write_text(dumps_json(rec))
            rows.append({"path": path.name, "sha256": sha256_file(path), "feature": rec["feature"],
                         "extraction": rec["extraction"], "probe_mode": rec["probe_mode"], "H": rec["H"],
                         "seed": rec["seed"], "flags": [k for k, on in rec["flags"].items() if on]})
        leak = {}
        for rec in records:
            key = f"{rec['feature']}__{rec['extraction']}__{rec['probe_mode']}"
            leak[key] = rec["leak_tests"]
        summary = {"protocol": PROTOCOL, "variant": identity["variant"], "n_records": len(rows), "records": rows,
                   "leak_tests": leak, "seeds": a.seeds, "H_list": sorted(ev["H_list"]),
                   "device": device.type, "precision": precision_name(device, amp),
                   "wall_s": round(time.perf_counter() - t0, 1)}
        (tmp / "summary.json").write_text(dumps_json(summary))
    for line in summarize(records):
        print(f"[probe] {line}", flush=True)
    print(f"[probe] {len(records)} records -> {a.out_dir}", flush=True)


if __name__ == "__main__":
    run_main(main, "probe")
