"""Autoregressive rollout of the dynamics model with K Euler steps per frame (dreamer4_model.md §5).

Generating frame t after frames 0..t-1 (packed latents):
    z ~ N(0, I) (one draw per generated frame); context frames are labelled (step emax,
    signal k_max - 1); the new frame (step e, signal i * k_max / K) for i = 0..K-1:
        x1_hat = last-frame output;  z <- z + (x1_hat - z) / max(1e-4, 1 - tau_i) * (1 / K)
    the last step lands exactly on x1_hat.
Positions are relative to the window (at most `window` frames; older frames drop out). With the
KV cache each Euler step costs one frame's compute; without it, the whole window is recomputed
(upstream). Both give the same result up to float round-off (tested).
"""

from __future__ import annotations

import torch

from .dynamics import Dynamics, KVCache


def tau_schedule(k_max: int, schedule: str = "shortcut", d: float = 0.25):
    """(K, e, [signal_idx_i], [tau_i]) for schedule 'finest' (K = k_max) or 'shortcut' (K = 1/d)."""
    if schedule == "finest":
        K = k_max
    elif schedule == "shortcut":
        K = round(1.0 / d)
        if abs(K * d - 1.0) > 1e-9 or K < 1 or k_max % K or K & (K - 1):
            raise ValueError(f"shortcut step d={d}: 1/d must be a power of two dividing k_max={k_max}")
    else:
        raise ValueError(f"schedule must be 'finest' or 'shortcut', got {schedule!r}")
    e = K.bit_length() - 1
    return K, e, [i * (k_max // K) for i in range(K)], [i / K for i in range(K)]


def _labels(B, T_ctx, e_new, sig_new, cfg, device):
    step = torch.full((B, T_ctx + 1), cfg.emax, dtype=torch.long, device=device)
    sig = torch.full((B, T_ctx + 1), cfg.k_max - 1, dtype=torch.long, device=device)
    step[:, -1], sig[:, -1] = e_new, sig_new
    return step, sig


def _euler(z, x1_hat, tau, K):
    b = (x1_hat.float() - z.float()) / max(1e-4, 1.0 - tau)
    return (z.float() + b * (1.0 / K)).to(z.dtype)


@torch.no_grad()
def rollout(
    dyn: Dynamics,
    context: torch.Tensor,
    actions: torch.Tensor | None,
    act_mask: torch.Tensor | None,
    horizon: int,
    *,
    schedule: str = "shortcut",
    d: float = 0.25,
    window: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generate `horizon` frames after `context` (B,C,N,D) packed latents.

    actions/act_mask: (B, C + horizon, A) aligned with frames (token t = action producing frame t),
    or None. window: the most frames one call sees (default: all). noise: optional (B, horizon, N, D)
    initial noise of the generated frames (then `generator` is unused); without it one draw per
    generated frame comes from `generator`. Returns (B, C + horizon, N, D).
    """
    cfg = dyn.cfg
    B, C, N, D = context.shape
    K, e, sigs, taus = tau_schedule(cfg.k_max, schedule, d)
    window = window or (C + horizon)
    frames = [context[:, i : i + 1] for i in range(C)]
    act = (lambda a, b: None) if actions is None else (lambda a, b: actions[:, a:b])
    msk = (lambda a, b: None) if act_mask is None else (lambda a, b: act_mask[:, a:b])
    cache, lo = None, 0  # cache holds frames lo .. len(frames)-1
    ctx_step = torch.full((B, 1), cfg.emax, dtype=torch.long, device=context.device)  # clean-context labels
    ctx_sig = torch.full((B, 1), cfg.k_max - 1, dtype=torch.long, device=context.device)
    new_step = torch.full((B, 1), e, dtype=torch.long, device=context.device)
    if noise is not None and tuple(noise.shape) != (B, horizon, N, D):
        raise ValueError(f"noise must have shape {(B, horizon, N, D)}, got {tuple(noise.shape)}")
    for u in range(horizon):
        t = len(frames)
        if noise is None:
            z = torch.randn(B, 1, N, D, device=context.device, generator=generator).to(context.dtype)
        else:
            z = noise[:, u : u + 1].to(context.device, context.dtype)
        start = max(0, t + 1 - window)  # first frame of this call's window
        if use_cache:
            if cache is None or start != lo:  # (re)prime: positions restart at `start`
                cache, lo = KVCache(), start
                for i in range(start, t):
                    _, kv = dyn.forward_step(
                        i - start, cache, act(i, i + 1), ctx_step, ctx_sig, frames[i], act_mask=msk(i, i + 1)
                    )
                    cache.append(kv)
            for i in range(K):
                sig = torch.full((B, 1), sigs[i], dtype=torch.long, device=z.device)
                (x1_hat, _), _ = dyn.forward_step(
                    t - start, cache, act(t, t + 1), new_step, sig, z, act_mask=msk(t, t + 1)
                )
                z = _euler(z, x1_hat, taus[i], K)
            _, kv = dyn.forward_step(t - start, cache, act(t, t + 1), ctx_step, ctx_sig, z, act_mask=msk(t, t + 1))
            cache.append(kv)
        else:
            past = torch.cat(frames[start:t], dim=1) if t > start else z[:, :0]
            for i in range(K):
                step, sig = _labels(B, t - start, e, sigs[i], cfg, z.device)
                x1_hat = dyn(act(start, t + 1), step, sig, torch.cat([past, z], dim=1), act_mask=msk(start, t + 1))[0]
                z = _euler(z, x1_hat[:, -1:], taus[i], K)
        frames.append(z)
    return torch.cat(frames, dim=1)
