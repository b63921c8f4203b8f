#!/usr/bin/env python
"""Tokenizer training speed and peak memory (JSON output).

Cases: the demo config (32x32, its own batch and seq_len) and the default (paper) config at
128x128 with batch 1 x seq_len 4 and batch 1 x seq_len 16 (the paper's per-GPU batch of 8 does not
fit in 24 GiB of CPU RAM; on this machine seq_len 16 does not fit either, which the output records
as an out-of-memory kill), each with and without the LPIPS term. Every case runs in its own process so peak memory
(ru_maxrss on CPU, torch.cuda.max_memory_allocated on GPU) is that case's alone. Steps/s is
measured after warm-up steps, on random frames (data loading is benchmarked in bench_data.py).
Usage: python bench/bench_tokenizer.py --out bench/results/tokenizer.json [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch

from dreamer4_libero.config import demo_config, load_config
from dreamer4_libero.models.tokenizer import Tokenizer
from dreamer4_libero.objectives.mae import tokenizer_loss
from dreamer4_libero.training.tokenizer_task import tokenizer_model_config


def run_case(name: str, device: str, steps: int, warmup: int) -> dict:
    if name.startswith("demo"):
        cfg = demo_config()
        batch, seq = cfg["tokenizer"]["batch_size"], cfg["tokenizer"]["seq_len"]
    else:
        cfg = load_config()
        batch, seq = 1, int(name.split("_s")[1].split("+")[0])
    t = cfg["tokenizer"]
    res = cfg["data"]["model_resolution"]
    lp = name.endswith("lpips")
    model = Tokenizer(tokenizer_model_config(t, res)).to(device).train()
    lpips = None
    if lp:
        from dreamer4_libero.models.lpips import LPIPS

        lpips = LPIPS.from_cache().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, seq, 3, res, res, generator=g).to(device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)

    def step():
        with amp:
            out = model(x)
            loss, _ = tokenizer_loss(out["recon"].float(), x, out["mae_mask"], lpips_fn=lpips,
                                     lpips_weight=t["lpips_weight"] if lp else 0.0, lpips_frac=t["lpips_frac"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    out = {"case": name, "device": device, "resolution": res, "batch": batch, "seq_len": seq, "lpips": lp,
           "params": sum(p.numel() for p in model.parameters()), "steps": steps, "steps_per_s": steps / dt,
           "frames_per_s": steps * batch * seq / dt}
    if device == "cuda":
        out["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu"] = torch.cuda.get_device_name()
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/tokenizer.json")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run one case in this process
    ap.add_argument("--steps", type=int, default=None)
    a = ap.parse_args()
    if a.case:
        big = a.case.startswith("default")
        steps = a.steps or (3 if big and a.device == "cpu" else 20)
        print(json.dumps(run_case(a.case, a.device, steps, warmup=1 if big else 3)))
        return
    results = []
    for case in ("demo", "demo+lpips", "default_b1_s4", "default_b1_s4+lpips", "default_b1_s16", "default_b1_s16+lpips"):
        r = subprocess.run([sys.executable, __file__, "--case", case, "--device", a.device]
                           + (["--steps", str(a.steps)] if a.steps else []), capture_output=True, text=True)
        if r.returncode:
            why = "killed (out of memory: exit 137)" if r.returncode in (-9, 137) else f"exit {r.returncode}"
            results.append({"case": case, "error": why, "stderr_tail": r.stderr[-2000:]})
        else:
            results.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    from dreamer4_libero.fileio import write_json

    write_json(a.out, {"benchmark": "tokenizer_train", "torch": torch.__version__, "platform": platform.platform(),
                       "cases": results})


if __name__ == "__main__":
    main()
