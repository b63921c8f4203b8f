#!/usr/bin/env python
"""Train one dynamics (world-model) variant (rule `train_dynamics`); run with python or torchrun.

The variant is the resolved run config (config `dynamics.defaults` + `dynamics.variants.<name>`).
Resumes from the newest valid checkpoint in --ckpt-dir; exits 75 after saving when the attempt's
--time-limit-min (minus the variant's deadline margin) is reached, 0 when max_steps are done.
"""

import argparse

from dreamer4_libero.cli import run_main
from dreamer4_libero.config import VARIANT_DERIVED_KEYS, parse_section
from dreamer4_libero.data.staging import add_staging_arg, staged_manifest
from dreamer4_libero.fileio import read_json
from dreamer4_libero.training.dynamics_task import DynamicsTask
from dreamer4_libero.training.engine import train_run
from dreamer4_libero.training.engine_config import (
    add_engine_args,
    job_loader_workers,
    require_job_gpus,
    section_engine_config,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--variant", required=True, help="JSON of the resolved variant config")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--train-split", required=True)
    ap.add_argument("--tokenizer-checkpoint-json", help="the tokenizer stage's checkpoint.json (study tokenizer)")
    add_engine_args(ap)
    add_staging_arg(ap)
    a = ap.parse_args()
    require_job_gpus(a, "train_dynamics")  # before any data is loaded
    run = parse_section(a.variant, "dynamics.defaults", "--variant", derived=VARIANT_DERIVED_KEYS, scheduling="allow")
    run["num_workers"] = job_loader_workers(a, run.get("num_workers"))  # per rank, from the job's CPUs
    tok = read_json(a.tokenizer_checkpoint_json)["path"] if a.tokenizer_checkpoint_json else None
    # data.stage_to_local: the shards from node-local scratch (a verified copy, removed at the end)
    with staged_manifest(a.manifest, a.stage_to_local) as manifest:
        task = DynamicsTask(run, manifest=manifest, train_split=a.train_split, tokenizer_ckpt=tok)
        for line in task.dyn_report.get("fallbacks", []):
            print(f"[train_dynamics] fallback: {line}", flush=True)
        for line in task.dyn_report.get("notes", []):
            print(f"[train_dynamics] note: {line}", flush=True)
        cfg = section_engine_config(
            a,
            run,
            run_name=run["name"],
            model_key="dynamics",
            extra_args=task.upstream_args(),
            grad_clip=run["grad_clip"],
        )
        return train_run(task, cfg, run, a.ckpt_root)


if __name__ == "__main__":
    run_main(main, "train_dynamics")
