"""Where an evaluation job runs its networks, and in which precision.

Every evaluation script that runs a network (tokenizer_eval, probe, probe_baselines, rollout_eval)
calls ``eval_device(expect_gpus, who)`` before it loads any data: a job whose resources give it GPUs
stops at once when torch cannot use them (``training/devices.require_gpus``; ``allow_cpu_fallback``
opts out), and runs on ``cuda`` when it can. A job given no GPUs runs on the CPU, even where a GPU is
visible, so a CPU configuration (demo, tests) gives the same numbers on every machine.

``eval_autocast(device, amp)`` is the run's mixed precision, as its trainer used it
(``training/engine.resolve_amp``: ``auto`` = bf16 where supported, ``off`` = fp32): autocast on CUDA
only; the CPU always runs fp32, so CPU results do not depend on the amp setting. ``run_amp`` reads
the amp a run was trained with from its checkpoint.json -> config.json (``engine.amp``).
"""

from __future__ import annotations

import contextlib
import os

import torch

from ..fileio import read_json
from ..training.devices import require_gpus
from ..training.optim import resolve_amp

AMP_CHOICES = ("auto", "bf16", "fp16", "off")


def add_expect_gpus_arg(parser) -> None:
    """The evaluation scripts' --expect-gpus flag (the rule passes its job's GPUs; checked by eval_device)."""
    parser.add_argument(
        "--expect-gpus",
        type=int,
        default=0,
        help="GPUs the job was given: stop at once if torch "
        "cannot use them (training/devices.py; $D4L_ALLOW_CPU_FALLBACK opts out)",
    )


def eval_device(expect_gpus: int, who: str) -> torch.device:
    """The device of an evaluation job given ``expect_gpus`` GPUs (checked: stops at once if unusable)."""
    on_gpu = require_gpus(expect_gpus, who=who)  # False only under allow_cpu_fallback
    return torch.device("cuda" if int(expect_gpus or 0) > 0 and on_gpu else "cpu")


def run_amp(checkpoint_json: str | None, default: str = "auto") -> str:
    """The ``amp`` setting a run was trained with (its config.json ``engine.amp``), else ``default``."""
    if not checkpoint_json:
        return default
    conf_path = read_json(checkpoint_json).get("config")
    if not conf_path or not os.path.exists(conf_path):
        return default
    amp = read_json(conf_path).get("engine", {}).get("amp", default)
    if amp not in AMP_CHOICES:
        raise ValueError(f"{conf_path}: engine.amp = {amp!r}, expected one of {list(AMP_CHOICES)}")
    return amp


def amp_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The autocast dtype on ``device`` (None = fp32: always on the CPU)."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {list(AMP_CHOICES)}, got {amp!r}")
    return resolve_amp(amp, torch.device(device))[0]


def eval_autocast(device: torch.device, amp: str):
    """Context manager: autocast to the run's amp dtype on CUDA, nothing (fp32) on the CPU."""
    dt = amp_dtype(device, amp)
    return torch.autocast("cuda", dtype=dt) if dt is not None else contextlib.nullcontext()


def precision_name(device: torch.device, amp: str) -> str:
    dt = amp_dtype(device, amp)
    return str(dt).replace("torch.", "") if dt is not None else "fp32"
