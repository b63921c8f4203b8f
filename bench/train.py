"""Training-step speed: steps/s, tokens/s, FLOPs, MFU and peak memory of the trainers' own steps.

Cases: the tokenizer (MAE + LPIPS) and the world model (shortcut forcing + bootstrap + aux head) at
the demo config and at the paper config (d_model 512 and the 276M variant), each with SDPA and with
the explicit attention reference (the ratio is SDPA's speed-up). Every case runs in its own process,
so its peak memory (``torch.cuda.max_memory_allocated`` on GPU, ``ru_maxrss`` on CPU, which includes
the interpreter) is its own. The step = forward + backward + grad clip + AdamW (fused on CUDA), bf16
autocast on GPUs; the inputs are random frames / clean latents (data loading: bench/data.py; the
world model's frozen-tokenizer encode is not in the step). FLOPs per step are counted on the meta
device (training/perf.py) at the case's batch; MFU = FLOPs x steps/s / the GPU's dense bf16 peak.
On CPU the paper configs run at batch 1 (the tokenizer with 4 frames): their batches of 8 x 16 and
4 x 32 take minutes per step here, and the tokenizer's does not fit in 24 GiB.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

from dreamer4_libero.config import demo_config, dynamics_variants, load_config
from dreamer4_libero.models.blocks import set_attention_backend
from dreamer4_libero.training import perf

# name: (config, kind, variant, (batch, seq_len) on CPU (None = configured), timed steps CPU, GPU, warm-up)
CASES = {
    "tokenizer_demo": ("demo", "tokenizer", None, None, 10, 50, 2),
    # 128x128 x 16 frames at batch 1 needs ~30 GB on CPU (fp32, SDPA's math kernel keeps the attention
    # probabilities): CPU runs 4 frames
    "tokenizer_paper": ("paper", "tokenizer", None, (1, 4), 2, 20, 1),
    "dynamics_demo": ("demo", "dynamics", "dynamics_aux_phase6_leakfree", None, 10, 50, 2),
    "dynamics_paper_d512": ("paper", "dynamics", "dynamics_aux_phase6_leakfree", (1, None), 2, 20, 1),
    "dynamics_paper_276M": ("paper", "dynamics", "dynamics_aux_param_matched_276M", (1, None), 1, 20, 1),
}
SKIP_EXPLICIT_ON_CPU = {"dynamics_paper_276M", "tokenizer_paper"}  # minutes per step on 2 cores


def _config(which: str) -> dict:
    return demo_config() if which == "demo" else load_config()


def build(
    name: str, device: str, batch: int | None = None, seq: int | None = None, dtype=torch.float32
) -> tuple[perf.TrainStep, dict]:
    which, kind, variant, cpu_shape, *_ = CASES[name]
    cfg = _config(which)
    res = cfg["data"]["model_resolution"]
    if batch is None and device == "cpu" and cpu_shape:
        batch, seq = cpu_shape
    if kind == "tokenizer":
        t = cfg["tokenizer"]
        lp = None
        if t["lpips_weight"] > 0:
            from dreamer4_libero.models.lpips import LPIPS

            lp = LPIPS.from_cache(cfg["paths"].get("lpips_cache"))
        step = perf.tokenizer_step(
            t, res, batch or t["batch_size"], seq or t["seq_len"], device=device, lpips=lp, dtype=dtype
        )
        section = t
    else:
        run = dynamics_variants(cfg)[variant]
        step = perf.dynamics_step(run, cfg["tokenizer"], res, batch=batch, seq_len=seq, device=device, dtype=dtype)
        section = run
    return step, section


def run_case(name: str, attention: str, device: str, steps: int | None = None) -> dict:
    which, kind, variant, _, steps_cpu, steps_gpu, warmup = CASES[name]
    steps = steps or (steps_cpu if device == "cpu" else steps_gpu)
    set_attention_backend(attention)
    step, section = build(name, device)
    meta, _ = build(name, "meta", batch=step.batch, seq=step.seq_len)
    flops = perf.count_step_flops(meta)
    model = step.model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, **({"fused": True} if device == "cuda" else {}))
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def one():
        with amp:
            loss = step.loss()
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    for _ in range(warmup):
        one()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    if device == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    out = {
        "case": name,
        "config": which,
        "kind": kind,
        "variant": variant,
        "attention": attention,
        "device": device,
        "batch": step.batch,
        "seq_len": step.seq_len,
        "configured_batch": section["batch_size"],
        "params": step.params(),
        "steps": steps,
        "steps_per_s": 1 / dt,
        "tokens_per_step": step.tokens,
        "tokens_per_s": step.tokens / dt,
        "flops_per_step": flops,
        "achieved_tflops": flops / dt / 1e12,
        "amp": "bf16" if bf16 else "fp32",
        "torch_threads": torch.get_num_threads(),
    }
    if device == "cuda":
        name_gpu = torch.cuda.get_device_name()
        peak = perf.gpu_bf16_peak(name_gpu)
        out.update(
            gpu=name_gpu,
            peak_gpu_mem_GiB=torch.cuda.max_memory_allocated() / 2**30,
            bf16_peak_tflops=peak / 1e12 if peak else None,
            mfu=flops / dt / peak if peak else None,
        )
    else:
        out.update(peak_rss_GiB=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, mfu=None)
    return out


def run_all(device: str, cases=None, log=print) -> list[dict]:
    """Every case x attention backend, each in a fresh process; errors are recorded, not raised."""
    rows = []
    for name in cases or CASES:
        for attention in ("sdpa", "explicit"):
            if attention == "explicit" and device == "cpu" and name in SKIP_EXPLICIT_ON_CPU:
                continue
            t0 = time.time()
            r = subprocess.run(
                [sys.executable, "-m", "bench.train", "--case", name, "--attention", attention, "--device", device],
                capture_output=True,
                text=True,
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            )
            if r.returncode:
                why = "killed (out of memory?)" if r.returncode in (-9, 137) else f"exit {r.returncode}"
                row = {"case": name, "attention": attention, "error": why, "stderr_tail": r.stderr[-1500:]}
            else:
                row = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append(row)
            log(
                f"  train {name:22s} {attention:8s} "
                + (
                    f"{row['steps_per_s']:8.3f} steps/s  {row['tokens_per_s']:10.0f} tok/s"
                    if "error" not in row
                    else row["error"]
                )
                + f"  ({time.time() - t0:.0f} s)"
            )
    return rows


def speedups(rows: list[dict]) -> dict:
    """SDPA over explicit steps/s per case (both measured in this run)."""
    by = {(r["case"], r["attention"]): r for r in rows if "error" not in r}
    return {
        c: by[(c, "sdpa")]["steps_per_s"] / by[(c, "explicit")]["steps_per_s"]
        for c in CASES
        if (c, "sdpa") in by and (c, "explicit") in by
    }


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=list(CASES), required=True)
    ap.add_argument("--attention", choices=["sdpa", "explicit"], default="sdpa")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=None)
    a = ap.parse_args()
    res = run_case(a.case, a.attention, a.device, a.steps)
    res["platform"] = platform.platform()
    print(json.dumps(res))
