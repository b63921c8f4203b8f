#!/usr/bin/env python
"""World-model rollout speed with and without the KV cache.

8 context -> 24 generated frames, K = 4 Euler steps of the shortcut sampler per frame, frames/s
with and without the KV cache, measured in the same process, interleaved (the second round is
timed), so the ratio compares like with like; the two rollouts' outputs must agree.
"""

from __future__ import annotations

import time

import torch

from dreamer4_libero.config import demo_config, dynamics_variants, load_config
from dreamer4_libero.models.dynamics import Dynamics, DynamicsConfig
from dreamer4_libero.models.sampling import rollout


def variant_model(run: dict, n_spatial: int, d_spatial: int) -> DynamicsConfig:
    m = run["model"]
    return DynamicsConfig(d_model=m["d_model"], depth=m["depth"], n_heads=m["n_heads"] or 4, n_spatial=n_spatial,
                          d_spatial=d_spatial, n_register=m["n_register"], time_every=m["time_every"])


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


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


def run_all(device: str, log=print) -> list[dict]:
    demo = dynamics_variants(demo_config())["dynamics_phase3"]
    dtok = demo_config()["tokenizer"]["model"]
    paper = dynamics_variants(load_config())["dynamics_phase3"]
    ptok = load_config()["tokenizer"]["model"]
    pf = paper["model"]["packing_factor"]
    rows = [rollout_case("rollout_demo", variant_model(demo, dtok["n_latents"] // demo["model"]["packing_factor"],
                                                         dtok["d_bottleneck"] * demo["model"]["packing_factor"]),
                         device, 1, 2),
            rollout_case("rollout_paper_d512", variant_model(paper, ptok["n_latents"] // pf, ptok["d_bottleneck"] * pf),
                         device, 1 if device == "cpu" else 8, 1)]
    for r in rows:
        log(f"  rollout {r['case']:20s} cached {r['frames_per_s_cached']:8.1f} frames/s, uncached "
            f"{r['frames_per_s_uncached']:8.1f}: x{r['speedup']:.2f} (max |diff| {r['max_abs_diff']:.1e})")
    return rows
