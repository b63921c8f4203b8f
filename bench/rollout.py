#!/usr/bin/env python
"""Dynamics training speed and rollout speed with and without the KV cache (JSON output).

Training: steps/s of the shortcut-forcing loss (+ aux head, bootstrap on) for the demo variant
config and the default (paper) config (d_model 512, depth 8, seq_len 32, the paper's per-GPU batch
of 4), on random packed latents (the frozen tokenizer's encode is not included; see
bench_tokenizer.py). Rollout: 8 context -> 24 generated frames, K = 4 Euler steps, frames/s with
and without the KV cache, measured in the same process so the ratio compares like with like.
Usage: python bench/bench_dynamics.py --out bench/results/dynamics.json [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch

from dreamer4_libero.config import demo_config, dynamics_variants, load_config
from dreamer4_libero.models.dynamics import Dynamics, DynamicsConfig, InverseDynamicsHead
from dreamer4_libero.models.sampling import rollout
from dreamer4_libero.objectives.shortcut import shortcut_loss


def variant_model(run: dict, n_spatial: int, d_spatial: int) -> DynamicsConfig:
    m = run["model"]
    return DynamicsConfig(d_model=m["d_model"], depth=m["depth"], n_heads=m["n_heads"] or 4, n_spatial=n_spatial,
                          d_spatial=d_spatial, n_register=m["n_register"], time_every=m["time_every"])


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def train_case(name: str, cfg: DynamicsConfig, batch: int, seq: int, device: str, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    dyn = Dynamics(cfg).to(device).train()
    head = InverseDynamicsHead(cfg.d_model).to(device)
    opt = torch.optim.AdamW(list(dyn.parameters()) + list(head.parameters()), lr=1e-4, weight_decay=0.01)
    z1 = torch.randn(batch, seq, cfg.n_spatial, cfg.d_spatial, device=device).tanh()
    act = torch.rand(batch, seq, 16, device=device) * 2 - 1
    mask = torch.ones_like(act)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)

    def step():
        with amp:
            loss, _ = shortcut_loss(dyn, z1, act, mask, step=10, bootstrap_start=0, aux_head=head, aux_weight=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dyn.parameters(), 1.0)
        opt.step()

    for _ in range(warmup):
        step()
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    dt = time.perf_counter() - t0
    out = {"case": name, "device": device, "batch": batch, "seq_len": seq, "d_model": cfg.d_model, "depth": cfg.depth,
           "params": sum(p.numel() for p in dyn.parameters()), "steps": steps, "steps_per_s": steps / dt}
    if device == "cuda":
        out["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


@torch.no_grad()
def rollout_case(name: str, cfg: DynamicsConfig, device: str, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    dyn = Dynamics(cfg).to(device).eval()
    for p in dyn.parameters():
        p.normal_(0, 0.02)
    ctx = torch.randn(batch, 8, cfg.n_spatial, cfg.d_spatial, device=device)
    act = torch.rand(batch, 32, 16, device=device)
    mask = torch.ones_like(act)
    res = {}
    for cached in (False, True, False, True):  # interleaved, second round timed
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            out = rollout(dyn, ctx, act, mask, 24, schedule="shortcut", d=0.25, use_cache=cached,
                          generator=torch.Generator(device=device).manual_seed(0))
        _sync(device)
        res["cached" if cached else "uncached"] = repeats * batch * 24 / (time.perf_counter() - t0)
        res["out_" + ("cached" if cached else "uncached")] = out
    diff = (res.pop("out_cached") - res.pop("out_uncached")).abs().max().item()
    return {"case": name, "device": device, "batch": batch, "context": 8, "generated": 24, "euler_steps": 4,
            "frames_per_s_uncached": res["uncached"], "frames_per_s_cached": res["cached"],
            "speedup": res["cached"] / res["uncached"], "max_abs_diff": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/dynamics.json")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    cpu = a.device == "cpu"
    demo = dynamics_variants(demo_config())["dynamics_phase3"]
    dtok = demo_config()["tokenizer"]["model"]
    demo_cfg = variant_model(demo, dtok["n_latents"] // 2, dtok["d_bottleneck"] * 2)
    paper = dynamics_variants(load_config())["dynamics_phase3"]
    paper_cfg = variant_model(paper, 8, 64)
    results = [
        train_case("train_demo", demo_cfg, demo["batch_size"], demo["seq_len"], a.device, 20, 3),
        train_case("train_default_b4_s32", paper_cfg, paper["batch_size"], paper["seq_len"], a.device, 2 if cpu else 20, 1),
        rollout_case("rollout_demo", demo_cfg, a.device, 1, 2),
        rollout_case("rollout_default", paper_cfg, a.device, 1, 1),
    ]
    for r in results:
        print(json.dumps(r), flush=True)
    from dreamer4_libero.fileio import write_json

    write_json(a.out, {"benchmark": "dynamics", "torch": torch.__version__, "platform": platform.platform(),
                       "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cases": results})


if __name__ == "__main__":
    main()
