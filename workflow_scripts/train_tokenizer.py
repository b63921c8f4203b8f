#!/usr/bin/env python
"""Train the causal video tokenizer (rule `train_tokenizer`); run with python or torchrun.

Resumes from the newest valid checkpoint in --ckpt-dir; exits 75 after saving when the attempt's
--time-limit-min (minus the config's deadline margin) is reached, 0 when max_steps are done.
"""

import argparse

from dreamer4_libero.cli import run_main
from dreamer4_libero.config import parse_section
from dreamer4_libero.data.staging import add_staging_arg, staged_manifest
from dreamer4_libero.training.engine import train_run
from dreamer4_libero.training.engine_config import (
    add_engine_args,
    job_loader_workers,
    require_job_gpus,
    section_engine_config,
)
from dreamer4_libero.training.tokenizer_task import TokenizerTask


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokenizer", required=True, help="JSON of the config's `tokenizer` section")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--train-split", required=True)
    ap.add_argument("--resolution", type=int, required=True)
    ap.add_argument(
        "--lpips-cache",
        default=None,
        help="folder of the LPIPS weights made beforehand (rule fetch_lpips: "
        "results/assets/lpips; default: the machine cache); never downloaded here",
    )
    add_engine_args(ap)
    add_staging_arg(ap)
    a = ap.parse_args()
    require_job_gpus(a, "train_tokenizer")  # before any data is loaded
    t = parse_section(a.tokenizer, "tokenizer", "--tokenizer", scheduling="allow")
    t["num_workers"] = job_loader_workers(a, t.get("num_workers"))  # per rank, from the job's CPUs
    # data.stage_to_local: the shards from node-local scratch (a verified copy, removed at the end)
    with staged_manifest(a.manifest, a.stage_to_local) as manifest:
        task = TokenizerTask(
            t, manifest=manifest, train_split=a.train_split, resolution=a.resolution, lpips_cache=a.lpips_cache
        )
        cfg = section_engine_config(
            a,
            t,
            run_name=t["run_name"],
            model_key="model",
            extra_args=task.upstream_args(),
            grad_clip=None,
            lr_mult=dict(t["lr_mult"]),
        )
        return train_run(task, cfg, t, a.ckpt_root)


if __name__ == "__main__":
    run_main(main, "train_tokenizer")
