#!/usr/bin/env python
"""Tokenizer reconstruction PSNR on held-out episodes (rule `tokenizer_eval`), plus a PNG strip."""

import argparse
import json

from tqdm.auto import tqdm

from dreamer4_libero.cli import run_main
from dreamer4_libero.data.loader import episode_list
from dreamer4_libero.data.shards import ShardStore
from dreamer4_libero.evaluation.runtime import AMP_CHOICES, eval_autocast, eval_device, precision_name, run_amp
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
    ap.add_argument("--batch", type=int, default=16, help="causal chunks per model pass (default 16: about "
                    "1 GB of activations at the paper's 128 px, seq_len 16 under bf16)")
    ap.add_argument("--amp", choices=AMP_CHOICES, default=None,
                    help="mixed precision on CUDA (default: the run's own, from its config.json); CPU runs fp32")
    ap.add_argument("--expect-gpus", type=int, default=0, help="GPUs the job was given: stop at once if torch "
                    "cannot use them (training/devices.py; $D4L_ALLOW_CPU_FALLBACK opts out)")
    a = ap.parse_args()
    if a.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {a.batch}")
    device = eval_device(a.expect_gpus, who="tokenizer_eval")  # before any data or checkpoint is loaded
    ev = json.loads(a.eval)
    ck = read_json(a.checkpoint_json)
    amp = a.amp or run_amp(a.checkpoint_json)
    model, report = load_tokenizer_checkpoint(ck["path"])
    model = model.to(device)
    print(f"[tokenizer_eval] device {device}, precision {precision_name(device, amp)} (amp {amp}), "
          f"{a.batch} chunks per pass", flush=True)
    chunk = int(read_json(ck["config"])["task"]["tokenizer"]["seq_len"])
    store = ShardStore(a.manifest)
    ood = rollout_episode_list(episode_list(a.test_ood), store, ev["eps_per_task"], ev["min_len"])
    val = episode_list(a.val)
    if ev.get("max_val_episodes"):
        val = val[: ev["max_val_episodes"]]
    sets = {"test_ood_rollout_list": ood, "val": val}
    with tqdm(total=len(ood) + len(val), desc="tokenizer eval", unit="ep") as bar, eval_autocast(device, amp):
        res = evaluate_tokenizer(model, store, sets, resolution=a.resolution, chunk=chunk, seed=ev["seed"], progress=bar,
                                 batch=a.batch)
    out = {"run": ck["run_name"], "checkpoint": ck["path"], "checkpoint_sha256": ck["sha256"], "step": ck["step"],
           "resolution": a.resolution, "chunk": chunk, "mae": "off (eval mode)", "sets": res,
           "episodes": sets, "loader_report": report, "device": device.type,
           "precision": precision_name(device, amp), "batch_chunks": a.batch}
    write_json(a.out_json, out)
    for name, r in res.items():
        print(f"{name:22s} PSNR frame-mean {r['tok_psnr_frame_mean']:.2f} dB, pooled {r['tok_psnr_pooled']:.2f} dB, "
              f"mean-frame baseline {r['mean_frame_baseline_psnr_frame_mean']:.2f} dB "
              f"(gain {r['gain_over_mean_frame_db']:+.2f} dB), masked train-style {r['tok_psnr_masked_train_style']:.2f} dB")
    rows = {}
    for name, eps in sets.items():
        with eval_autocast(device, amp):
            orig, rec = strip_frames(model, store, eps[0], a.resolution, chunk, batch=a.batch)
        rows[f"{name}: {eps[0]} original"] = orig
        rows[f"{name}: reconstruction"] = rec
    frame_grid(rows, a.out_png, f"{ck['run_name']} step {ck['step']}: originals vs reconstructions")


if __name__ == "__main__":
    run_main(main, "tokenizer_eval")
