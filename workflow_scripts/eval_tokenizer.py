#!/usr/bin/env python
"""Tokenizer reconstruction PSNR on held-out episodes (rule `tokenizer_eval`), plus a PNG strip.
The job: evaluation/tokenizer_run.py."""

import argparse

from dreamer4_libero.cli import run_main
from dreamer4_libero.config import parse_section
from dreamer4_libero.evaluation.runtime import AMP_CHOICES, add_expect_gpus_arg, eval_device
from dreamer4_libero.evaluation.tokenizer_run import run_tokenizer_eval


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint-json", required=True, help="results/train/<run>/checkpoint.json")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--test-ood", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--resolution", type=int, required=True)
    ap.add_argument("--eval", required=True, help="JSON of the config's `tokenizer.eval` section")
    ap.add_argument("--out-json", required=True)
    ap.add_argument("--out-png", required=True)
    ap.add_argument(
        "--batch",
        type=int,
        default=16,
        help="causal chunks per model pass (default 16: about "
        "1 GB of activations at the paper's 128 px, seq_len 16 under bf16)",
    )
    ap.add_argument(
        "--amp",
        choices=AMP_CHOICES,
        default=None,
        help="mixed precision on CUDA (default: the run's own, from its config.json); CPU runs fp32",
    )
    add_expect_gpus_arg(ap)
    a = ap.parse_args()
    device = eval_device(a.expect_gpus, who="tokenizer_eval")  # before any data or checkpoint is loaded
    run_tokenizer_eval(
        parse_section(a.eval, "tokenizer.eval", "--eval"),
        checkpoint_json=a.checkpoint_json,
        manifest=a.manifest,
        test_ood=a.test_ood,
        val=a.val,
        resolution=a.resolution,
        out_json=a.out_json,
        out_png=a.out_png,
        device=device,
        batch=a.batch,
        amp=a.amp,
    )


if __name__ == "__main__":
    run_main(main, "tokenizer_eval")
