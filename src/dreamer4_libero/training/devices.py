"""The GPUs a job was given versus the GPUs torch can use.

A job whose resources give it GPUs (config ``gpus`` > 0) must run on them. With a CPU build of torch
(the pinned ``torch==2.13.0`` resolves to one where the wheel index offers it), a missing driver or an
empty ``CUDA_VISIBLE_DEVICES``, ``torch.cuda.is_available()`` is false and the engine would quietly train
on the CPU: days of a GPU allocation for nothing. ``require_gpus`` stops such a job at once, before it
loads any data, naming the torch build, ``CUDA_VISIBLE_DEVICES``, the GPUs expected and seen, and the fix.
The only way past it is an explicit opt-in, config ``allow_cpu_fallback: true`` (the CI Slurm's fake
GPUs: config/ci_slurm.yaml), which reaches every job as ``$D4L_ALLOW_CPU_FALLBACK`` (rules/common.smk)
and prints a loud warning.

``check_gpu`` is the first part of ``make check-gpu``: the versions, each visible GPU, one bf16 matmul and one
SDPA call on the GPU, and a non-zero exit with the reason where a GPU job would fail; then
training/node_check.py runs the paper-scale configs on the node.
"""

from __future__ import annotations

import os
import sys

import torch

from ..cli import SetupError

#: set by the workflow from config `allow_cpu_fallback` (rules/common.smk shell prefix)
ALLOW_CPU_FALLBACK_ENV = "D4L_ALLOW_CPU_FALLBACK"
TORCH_PIN = "2.13.0"
FIX = (
    f"install the CUDA build of the pinned torch=={TORCH_PIN} (`pip uninstall -y torch; pip install "
    f"torch=={TORCH_PIN} --index-url https://download.pytorch.org/whl/cu<XYZ>` with a CUDA version your "
    f"driver supports; docs/slurm.md, \"GPUs: the CUDA build of torch\"), "
    f"check that the job really got GPUs (`make check-gpu` on "
    f"a GPU node), or - only where the GPUs are fake on purpose - set `allow_cpu_fallback: true` in the "
    f"config"
)


class GPUUnavailableError(SetupError):
    """The job's resources give it GPUs that this torch cannot use."""


def _nccl_version() -> str | None:
    try:
        v = torch.cuda.nccl.version()
    except Exception:  # CPU builds have no NCCL
        return None
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def build_info() -> dict:
    """The torch build and what it sees: versions (None where the build has no CUDA) and the visible GPUs."""
    cuda = torch.cuda.is_available()
    gpus = []
    for i in range(torch.cuda.device_count() if cuda else 0):
        p = torch.cuda.get_device_properties(i)
        gpus.append(
            {
                "index": i,
                "name": p.name,
                "memory_gib": round(p.total_memory / 2**30, 1),
                "capability": f"{p.major}.{p.minor}",
            }
        )
    return {
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "nccl": _nccl_version() if cuda else None,
        "cuda_available": cuda,
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpus": gpus,
    }


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def require_gpus(
    expected: int,
    allow_cpu_fallback: bool | None = None,
    *,
    who: str = "this job",
    stop: str = "stopped before loading any data",
) -> bool:
    """Check that torch sees at least ``expected`` GPUs (per node: each torchrun rank sees the node's GPUs).

    Returns True when the job runs on its GPUs (or expects none). Otherwise raises ``GPUUnavailableError``
    with the build, ``CUDA_VISIBLE_DEVICES``, the counts and the fix - unless ``allow_cpu_fallback``
    (default: ``$D4L_ALLOW_CPU_FALLBACK``), which prints a loud warning to stderr and returns False.
    """
    expected = int(expected or 0)
    if expected <= 0:
        return True
    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if seen >= expected:
        return True
    info = build_info()
    what = (
        f"{who} was given {expected} GPU(s) but torch sees {seen}: torch {info['torch']} "
        f"(torch.version.cuda={info['cuda']}{', a CPU-only build' if info['cuda'] is None else ''}), "
        f"CUDA_VISIBLE_DEVICES={info['CUDA_VISIBLE_DEVICES']!r}"
    )
    if allow_cpu_fallback is None:
        allow_cpu_fallback = _env_flag(ALLOW_CPU_FALLBACK_ENV)
    if allow_cpu_fallback:
        bar = "!" * 100
        print(
            f"{bar}\nWARNING: {what}.\nWARNING: allow_cpu_fallback is set: running on "
            f"{'the CPU' if seen == 0 else f'{seen} GPU(s)'} instead. Never do this for a real run.\n{bar}",
            file=sys.stderr,
            flush=True,
        )
        return False
    raise GPUUnavailableError(f"{what}; {stop}. Fix: {FIX}.")


def _smoke_test(device: torch.device) -> None:
    """One bf16 matmul and one SDPA call on ``device``, each checked against an fp32 reference."""
    import torch.nn.functional as F

    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(512, 512, generator=g)
    b = torch.randn(512, 512, generator=g)
    got = (a.to(device, torch.bfloat16) @ b.to(device, torch.bfloat16)).float().cpu()
    err = float((got - a @ b).abs().max() / (a @ b).abs().max())
    if not err < 0.05:
        raise RuntimeError(f"bf16 matmul on {device}: relative error {err:.3g} (expected < 0.05)")
    q, k, v = (torch.randn(2, 4, 64, 32, generator=g) for _ in range(3))
    got = F.scaled_dot_product_attention(*(t.to(device, torch.bfloat16) for t in (q, k, v)), is_causal=True)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    err = float((got.float().cpu() - ref).abs().max())
    if not err < 0.05:
        raise RuntimeError(f"SDPA (bf16, causal) on {device}: max abs error {err:.3g} (expected < 0.05)")


def print_build_info(out=None) -> dict:
    """Print the torch build's versions and the visible GPUs; return ``build_info()``."""
    out = out or sys.stdout
    info = build_info()
    for k in ("torch", "cuda", "cudnn", "nccl", "CUDA_VISIBLE_DEVICES"):
        print(f"{k:>20}: {info[k]}", file=out)
    if info["cuda"] is None:
        print(f"{'build':>20}: CPU-only torch build (no CUDA)", file=out)
    for gpu in info["gpus"]:
        print(
            f"{'gpu ' + str(gpu['index']):>20}: {gpu['name']}, {gpu['memory_gib']} GiB, "
            f"compute capability {gpu['capability']}",
            file=out,
        )
    return info


def check_gpu(expected: int = 1, out=None) -> int:
    """``make check-gpu``'s first part: print the build and the GPUs, run the smoke test on each; 0 = a GPU job
    would run (training/node_check.py then runs the paper-scale checks)."""
    out = out or sys.stdout
    info = print_build_info(out)
    try:
        require_gpus(expected, allow_cpu_fallback=False, who="a GPU job", stop="it would stop here")
        for gpu in info["gpus"]:
            _smoke_test(torch.device(f"cuda:{gpu['index']}"))
            print(f"{'gpu ' + str(gpu['index']):>20}: bf16 matmul and SDPA ok", file=out)
    except Exception as e:
        print(f"FAILED: {e}", file=out, flush=True)
        return 1
    print(f"OK: {len(info['gpus'])} GPU(s) usable (expected at least {expected})", file=out, flush=True)
    return 0
