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
from dreamer4_libero.training import perf


def trained_dynamics_config(cfg: dict, variant: str = "dynamics_phase3") -> DynamicsConfig:
    """The architecture the dynamics trainer builds for ``variant`` (the step of training/perf.py)."""
    step = perf.dynamics_step(dynamics_variants(cfg)[variant], cfg["tokenizer"], cfg["data"]["model_resolution"])
    return step.model.dynamics.cfg  # built on the meta device: no memory, no init cost


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
            out = rollout(
                dyn,
                ctx,
                act,
                mask,
                24,
                schedule="shortcut",
                d=0.25,
                use_cache=cached,
                generator=torch.Generator(device=device).manual_seed(0),
            )
        _sync(device)
        res["cached" if cached else "uncached"] = repeats * batch * 24 / (time.perf_counter() - t0)
        res["out_" + ("cached" if cached else "uncached")] = out
    diff = (res.pop("out_cached") - res.pop("out_uncached")).abs().max().item()
    return {
        "case": name,
        "device": device,
        "batch": batch,
        "context": 8,
        "generated": 24,
        "euler_steps": 4,
        "frames_per_s_uncached": res["uncached"],
        "frames_per_s_cached": res["cached"],
        "speedup": res["cached"] / res["uncached"],
        "max_abs_diff": diff,
    }


def run_all(device: str, log=print) -> list[dict]:
    rows = [
        rollout_case("rollout_demo", trained_dynamics_config(demo_config()), device, 1, 2),
        rollout_case(
            "rollout_paper_d512", trained_dynamics_config(load_config()), device, 1 if device == "cpu" else 8, 1
        ),
    ]
    for r in rows:
        log(
            f"  rollout {r['case']:20s} cached {r['frames_per_s_cached']:8.1f} frames/s, uncached "
            f"{r['frames_per_s_uncached']:8.1f}: x{r['speedup']:.2f} (max |diff| {r['max_abs_diff']:.1e})"
        )
    return rows
