#!/usr/bin/env python
"""Rollout PSNR, 8 context -> 24 predicted frames (rule `rollout_eval`, evaluation.md §2).

Writes into --out-dir: rollout.json (docs/results_format.md, "Rollout records"), the window lists
windows_test_ood.json / windows_val.json, strips.png (ground truth vs rollout), rollout.gif and
per_step_psnr.png. When the variant's tokenizer is not the study tokenizer, rollout.json also holds
the §3 tokenizer block of that tokenizer ("tokenizer_eval"). The job: evaluation/rollout_run.py.
"""

import argparse

from dreamer4_libero.cli import run_main
from dreamer4_libero.config import parse_section
from dreamer4_libero.evaluation.rollout_run import run_rollout_eval
from dreamer4_libero.evaluation.runtime import add_expect_gpus_arg, eval_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint-json", required=True, help="results/train/<variant>/checkpoint.json")
    ap.add_argument("--manifest", required=True, help="preprocessing manifest.json")
    ap.add_argument("--test-ood", required=True, help="splits/test_ood.json (headline windows)")
    ap.add_argument("--val", required=True, help="splits/val.json (secondary windows: seen tasks, unseen demos)")
    ap.add_argument("--resolution", type=int, required=True, help="model resolution (data.model_resolution)")
    ap.add_argument("--eval", required=True, help="JSON of the config's `rollout_eval` section (config/schema.yaml)")
    ap.add_argument(
        "--study-tokenizer-checkpoint-json",
        default=None,
        help="the study tokenizer's checkpoint.json (its sha256 is used as --study-tokenizer-sha256)",
    )
    ap.add_argument(
        "--study-tokenizer-sha256",
        default=None,
        help="sha256 of the study tokenizer; a variant with another tokenizer also gets its §3 block",
    )
    ap.add_argument("--out-dir", required=True, help="results/rollout/<variant>")
    ap.add_argument("--progress", default="true", choices=["true", "false"])
    add_expect_gpus_arg(ap)
    a = ap.parse_args()
    device = eval_device(a.expect_gpus, who="rollout_eval")  # before any data or checkpoint is loaded
    run_rollout_eval(
        a.checkpoint_json,
        a.manifest,
        a.test_ood,
        a.val,
        resolution=a.resolution,
        ev=parse_section(a.eval, "rollout_eval", "--eval"),
        out_dir=a.out_dir,
        device=device,
        study_tokenizer_sha256=a.study_tokenizer_sha256,
        study_tokenizer_checkpoint_json=a.study_tokenizer_checkpoint_json,
        progress=a.progress == "true",
    )


if __name__ == "__main__":
    run_main(main, "rollout_eval")
