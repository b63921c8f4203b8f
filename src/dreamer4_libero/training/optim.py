"""The parts of an update that are not the loop (training/engine.py): AdamW parameter groups, the lr schedule,
the mixed-precision dtype, batches to the device, metric values as floats and the task's config.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn


def lr_factor(schedule: str, step: int, max_steps: int) -> float:
    """lr multiplier of the update that takes `step` completed updates to step + 1."""
    if schedule == "constant" or max_steps <= 1:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * step / max_steps))


def param_groups(model: nn.Module, lr: float, lr_mult: dict | None) -> list[dict]:
    """AdamW parameter groups: one per distinct multiplier of `lr_mult` (name prefix -> factor,
    longest matching prefix wins; unmatched parameters get 1.0). Without multipliers: one group."""
    lr_mult = lr_mult or {}
    groups: dict[float, list] = {}
    for name, p in model.named_parameters():
        hits = [k for k in lr_mult if name.startswith(k)]
        m = float(lr_mult[max(hits, key=len)]) if hits else 1.0
        groups.setdefault(m, []).append(p)
    return [{"params": ps, "lr": lr * m, "lr_mult": m} for m, ps in sorted(groups.items())]


def resolve_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use GradScaler). AMP only on CUDA; GradScaler only for fp16."""
    if device.type != "cuda" or amp == "off":
        return None, False
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "bf16":
        return torch.bfloat16, False
    return torch.float16, True


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        seq = [to_device(v, device) for v in batch]
        return type(batch)(*seq) if hasattr(batch, "_fields") else type(batch)(seq)
    return batch


def float_metric(v: Any) -> float:
    if isinstance(v, torch.Tensor):
        return float(v.detach().float().mean().item())
    return float(v)


def task_config(task: Any) -> dict:
    c = getattr(task, "config", None)
    if callable(c):
        c = c()
    return dict(c or {})
