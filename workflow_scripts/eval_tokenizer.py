#!/usr/bin/env python
"""Tokenizer reconstruction PSNR on held-out episodes (rule `tokenizer_eval`), plus a PNG strip."""

import argparse
import json

from tqdm.auto import tqdm

from dreamer4_libero.cli import run_main
from dreamer4_libero.data.loader import episode_list
from dreamer4_libero.data.shards import ShardStore
from dreamer4_libero.evaluation.tokenizer_psnr import evaluate_tokenizer, rollout_episode_list, strip_frames
from dreamer4_libero.fileio import read_json, write_json
from dreamer4_libero.models.upstream import load_tokenizer_checkpoint
from dreamer4_libero.reporting.plots import frame_grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint-json", required=True, help="results/train/<run>/checkpoint.json")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--test-ood", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--resolution", type=int, required=True)
    ap.add_argument("--eval", required=True, help="JSON of tokenizer.eval")
    ap.add_argument("--out-json", required=True)
    ap.add_argument("--out-png", required=True)
    a = ap.parse_args()
    ev = json.loads(a.eval)
    ck = read_json(a.checkpoint_json)
    model, report = load_tokenizer_checkpoint(ck["path"])
    chunk = int(read_json(ck["config"])["task"]["tokenizer"]["seq_len"])
    store = ShardStore(a.manifest)
    ood = rollout_episode_list(episode_list(a.test_ood), store, ev["eps_per_task"], ev["min_len"])
    val = episode_list(a.val)
    if ev.get("max_val_episodes"):
        val = val[: ev["max_val_episodes"]]
    sets = {"test_ood_rollout_list": ood, "val": val}
    with tqdm(total=len(ood) + len(val), desc="tokenizer eval", unit="ep") as bar:
        res = evaluate_tokenizer(model, store, sets, resolution=a.resolution, chunk=chunk, seed=ev["seed"], progress=bar)
    out = {"run": ck["run_name"], "checkpoint": ck["path"], "checkpoint_sha256": ck["sha256"], "step": ck["step"],
           "resolution": a.resolution, "chunk": chunk, "mae": "off (eval mode)", "sets": res,
           "episodes": sets, "loader_report": report}
    write_json(a.out_json, out)
    for name, r in res.items():
        print(f"{name:22s} PSNR frame-mean {r['tok_psnr_frame_mean']:.2f} dB, pooled {r['tok_psnr_pooled']:.2f} dB, "
              f"mean-frame baseline {r['mean_frame_baseline_psnr_frame_mean']:.2f} dB "
              f"(gain {r['gain_over_mean_frame_db']:+.2f} dB), masked train-style {r['tok_psnr_masked_train_style']:.2f} dB")
    rows = {}
    for name, eps in sets.items():
        orig, rec = strip_frames(model, store, eps[0], a.resolution, chunk)
        rows[f"{name}: {eps[0]} original"] = orig
        rows[f"{name}: reconstruction"] = rec
    frame_grid(rows, a.out_png, f"{ck['run_name']} step {ck['step']}: originals vs reconstructions")


if __name__ == "__main__":
    run_main(main, "tokenizer_eval")
