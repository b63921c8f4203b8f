#!/usr/bin/env python
"""Train the causal video tokenizer (rule `train_tokenizer`); run with python or torchrun.

Resumes from the newest valid checkpoint in --ckpt-dir; exits 75 after saving when the attempt's
--time-limit-min (minus the config's deadline margin) is reached, 0 when max_steps are done.
"""

import argparse

from dreamer4_libero.cli import run_main
from dreamer4_libero.config import parse_section
from dreamer4_libero.data.staging import add_staging_arg, staged_manifest
from dreamer4_libero.training.engine import train
from dreamer4_libero.training.engine_config import (add_engine_args, engine_config_from_args, job_loader_workers,
                                                     require_job_gpus)
from dreamer4_libero.training.identity import resolve_run_dir
from dreamer4_libero.training.tokenizer_task import TokenizerTask


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokenizer", required=True, help="JSON of the config's `tokenizer` section")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--train-split", required=True)
    ap.add_argument("--resolution", type=int, required=True)
    ap.add_argument("--lpips-cache", default=None, help="folder of the LPIPS weights made beforehand (rule fetch_lpips: "
                    "results/assets/lpips; default: the machine cache); never downloaded here")
    add_engine_args(ap)
    add_staging_arg(ap)
    a = ap.parse_args()
    require_job_gpus(a, "train_tokenizer")  # before any data is loaded
    t = parse_section(a.tokenizer, "tokenizer", "--tokenizer", scheduling="allow")
    t["num_workers"] = job_loader_workers(a, t.get("num_workers"))  # per rank, from the job's CPUs
    # data.stage_to_local: the shards from node-local scratch (a verified copy, removed at the end)
    with staged_manifest(a.manifest, a.stage_to_local) as manifest:
        task = TokenizerTask(t, manifest=manifest, train_split=a.train_split, resolution=a.resolution,
                             lpips_cache=a.lpips_cache)
        cfg = engine_config_from_args(
            a, run_name=t["run_name"], max_steps=t["max_steps"], lr=t["lr"], weight_decay=t["weight_decay"],
            **{k: t[k] for k in ("nonfinite", "nonfinite_max_skips") if k in t},
            grad_clip=None, save_every=t["save_every"], keep_last=t["keep_last"], log_every=t["log_every"],
            seed=t["seed"], amp=t["amp"], deterministic=t["deterministic"], deadline_margin_s=t.get("deadline_margin_s", 300.0),
            model_key="model", extra_args=task.upstream_args(), progress=True, lr_mult=dict(t["lr_mult"]),
            lr_schedule=t["lr_schedule"], attention=t["attention"], fused_adamw=t["fused_adamw"], compile=t["compile"],
            activation_checkpointing=t["activation_checkpointing"])
        if a.ckpt_root:
            cfg.ckpt_dir = str(resolve_run_dir(a.ckpt_root, t, task.identity_inputs()))
            print(f"[{cfg.run_name}] checkpoints: {cfg.ckpt_dir} (run identity)", flush=True)
        return train(task, cfg)


if __name__ == "__main__":
    run_main(main, "train_tokenizer")
