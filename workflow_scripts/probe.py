#!/usr/bin/env python
"""Linear action probe records of one world-model variant, or of the model-free baselines (rule `probe`).

Variant mode (--checkpoint-json): wm_agent and wm_spatial features, extraction past_actions and
video_only, probe modes policy and idm. Baselines mode (--baselines): tok_latent (study tokenizer),
pixels, frame_diff, time_only, lagged_actions (+ the demo's const_control / leak_control).
One record per (feature, extraction, probe mode, H, seed) in --out-dir, plus summary.json
(evaluation.md §1, docs/results_format.md). The folder is replaced atomically as a whole.
The job: evaluation/probe_run.py.
"""

import argparse

from dreamer4_libero.cli import run_main
from dreamer4_libero.config import parse_section
from dreamer4_libero.evaluation.probe_run import run_probe
from dreamer4_libero.evaluation.runtime import add_expect_gpus_arg, eval_device


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
    ap.add_argument("--eval", required=True, help="JSON of the config's `probe_eval` section (config/schema.yaml)")
    ap.add_argument("--out-dir", required=True)
    add_expect_gpus_arg(ap)
    a = ap.parse_args()
    # the GPU the job was given (checked before any data or checkpoint is loaded), else the CPU
    device = eval_device(a.expect_gpus, who="probe_baselines" if a.baselines else "probe")
    run_probe(
        parse_section(a.eval, "probe_eval", "--eval"),
        manifest=a.manifest,
        probe_root=a.probe_root,
        seeds=a.seeds,
        resolution=a.resolution,
        out_dir=a.out_dir,
        device=device,
        checkpoint_json=a.checkpoint_json,
        tokenizer_checkpoint_json=a.tokenizer_checkpoint_json,
        window=a.window,
    )


if __name__ == "__main__":
    run_main(main, "probe")
