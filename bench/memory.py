"""Per-GPU memory plan and FLOPs per step of every paper-scale run (training/perf.py, meta device).

For each world-model variant of config.yaml (enabled or not) and the tokenizer: parameters, counted
FLOPs per step at the configured per-GPU batch, static memory (weights, grads, AdamW, DDP buckets,
frozen modules), activations (fp32 and bf16; with activation checkpointing), the total per GPU and
the largest per-GPU batch on an 80 GB GPU. No device memory is used: the counts run on shapes.
"""

from __future__ import annotations

import torch

from dreamer4_libero.config import dynamics_variants, load_config
from dreamer4_libero.training import perf


def run_all(log=print, runs: list[str] | None = None) -> list[dict]:
    """Every run's row, or only those named in `runs` ("tokenizer" and/or variant names)."""
    cfg = load_config()
    variants = dynamics_variants(cfg)
    unknown = sorted(set(runs or ()) - {"tokenizer", *variants})
    if unknown:
        raise SystemExit(f"bench memory: unknown run(s) {unknown}; choose from {['tokenizer', *variants]}")
    res = cfg["data"]["model_resolution"]
    t = cfg["tokenizer"]
    rows = []

    def add(name, make, batch, gpus, **extra):
        if runs is not None and name not in runs:
            return
        flops = perf.model_flops_summary(make(batch=batch, dtype=torch.float32))
        plan = perf.memory_plan(make, batch, world_size=gpus)
        row = {"run": name, "gpus": gpus, **extra, **flops, **plan}
        rows.append(row)
        log(
            f"  memory {name:44s} {row['params'] / 1e6:6.1f}M params, batch {batch}: "
            f"{row['total_bf16_GiB']:6.2f} GiB/GPU (bf16), {row['total_bf16_ckpt_GiB']:6.2f} with checkpointing; "
            f"largest batch/80GB {row['largest_batch_per_80GB_bf16']} ({row['largest_batch_per_80GB_bf16_ckpt']} "
            f"with checkpointing); {row['flops_per_step'] / 1e12:.2f} TFLOP/step"
        )

    from dreamer4_libero.models.lpips import LPIPS

    lp = LPIPS.from_cache(cfg["paths"].get("lpips_cache")).to("meta")  # frozen; its activations are counted
    add(
        "tokenizer",
        lambda batch, dtype: perf.tokenizer_step(t, res, batch, t["seq_len"], dtype=dtype, lpips=lp),
        t["batch_size"],
        t["gpus"],
        seq_len=t["seq_len"],
        enabled=True,
    )
    for name, run in variants.items():
        add(
            name,
            lambda batch, dtype, run=run: perf.dynamics_step(run, t, res, batch=batch, dtype=dtype),
            run["batch_size"],
            run["gpus"],
            seq_len=run["seq_len"],
            enabled=run["enabled"],
            d_model=run["model"]["d_model"],
            depth=run["model"]["depth"],
            aux_input=run["aux_input"] if run["aux_weight"] > 0 else None,
        )
    return rows
