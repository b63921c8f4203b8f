"""World-model evaluation windows: one-step latent prediction and 8 -> 24 rollout PSNR.

A window of an episode: frames o_s .. o_{s+L-1} at the model resolution, action tokens exactly as
in training (block 0 null, block j = raw actions[s+j], evaluation.md §0/§2). The frozen tokenizer
encodes the window's context in one causal call (as in training); the dynamics model generates
the rest with the shortcut sampler (K Euler steps, the KV cache by default); generated frames are
fed back as clean context; the full window of latents is decoded in one decoder call.
Rollout noise comes from a generator seeded by (seed, window index): common random numbers
across variants.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.loader import model_frames, window_actions
from ..data.shards import ShardStore
from ..models.dynamics import pack_latents, unpack_latents
from ..models.sampling import rollout
from .tokenizer_psnr import psnr


def window_starts(T: int, length: int, stride: int = 40, per_episode: int = 2) -> list[int]:
    """evaluation.md §2: s = 0, stride, 2*stride, ... with s + length <= T, at most per_episode."""
    return [s for s in range(0, T - length + 1, stride)][:per_episode]


def load_window(store: ShardStore, episode: str, start: int, length: int, resolution: int):
    """(frames (1,L,3,r,r) float in [0,1], actions (1,L,16), act_mask (1,L,16))."""
    frames, raw = store.episode(episode)
    x = torch.from_numpy(model_frames(frames[start:start + length], resolution))[None]
    act, mask = window_actions(raw, start, length)
    return x, torch.from_numpy(act)[None], torch.from_numpy(mask)[None]


@torch.no_grad()
def evaluate_windows(tokenizer, dyn, store: ShardStore, episodes: list[str], *, resolution: int, packing: int,
                     context: int = 8, horizon: int = 24, d: float = 0.25, seed: int = 0, max_windows: int | None = None,
                     use_cache: bool = True) -> dict:
    """One-step and rollout metrics over the windows of `episodes` (length context + horizon).

    Returns dict with: n_windows; one_step_mse / copy_last_mse (latents of frame `context` given
    frames < context; mean over windows) and their ratio; rollout_psnr_frame_mean,
    rollout_psnr_pooled, copy_last_psnr_frame_mean, copy_last_psnr_pooled (decoded frames
    context..context+horizon-1 vs ground truth, data range 1), and per_step_psnr (horizon values).
    """
    L = context + horizon
    wins = [(e, s) for e in episodes for s in window_starts(store.episodes[e].T, L)]
    if max_windows is not None:
        wins = wins[:max_windows]
    if not wins:
        raise ValueError(f"no episode has a window of {L} frames")
    one, copy, mse_roll, mse_copy = [], [], [], []
    psnr_roll, psnr_copy = [], []
    for w, (e, s) in enumerate(wins):
        frames, act, mask = load_window(store, e, s, L, resolution)
        z = pack_latents(tokenizer.encode(frames, mae=False).float(), packing)         # (1,L,N,D) one call
        g = torch.Generator().manual_seed(seed * 1_000_003 + w)
        pred1 = rollout(dyn, z[:, :context], act[:, :context + 1], mask[:, :context + 1], 1, d=d,
                        window=L, use_cache=use_cache, generator=g)[:, context]
        one.append(float((pred1 - z[:, context]).pow(2).mean()))
        copy.append(float((z[:, context - 1] - z[:, context]).pow(2).mean()))
        g = torch.Generator().manual_seed(seed * 1_000_003 + w)
        lat = rollout(dyn, z[:, :context], act, mask, horizon, d=d, window=L, use_cache=use_cache, generator=g)
        video = tokenizer.decode(unpack_latents(lat, packing)).clamp(0, 1)              # one decoder call
        gt = frames[:, context:]
        err = (video[:, context:] - gt).pow(2).mean(dim=(0, 2, 3, 4))                   # (horizon,)
        err_c = (frames[:, context - 1:context] - gt).pow(2).mean(dim=(0, 2, 3, 4))
        mse_roll.append(err.numpy())
        mse_copy.append(err_c.numpy())
        psnr_roll.append([psnr(v) for v in err.tolist()])
        psnr_copy.append([psnr(v) for v in err_c.tolist()])
    mse_roll, mse_copy = np.stack(mse_roll), np.stack(mse_copy)
    return {"n_windows": len(wins), "context": context, "horizon": horizon, "euler_steps": round(1 / d),
            "one_step_mse": float(np.mean(one)), "copy_last_mse": float(np.mean(copy)),
            "one_step_over_copy": float(np.mean(one) / max(np.mean(copy), 1e-12)),
            "rollout_psnr_frame_mean": float(np.mean(psnr_roll)), "rollout_psnr_pooled": psnr(mse_roll.mean()),
            "copy_last_psnr_frame_mean": float(np.mean(psnr_copy)), "copy_last_psnr_pooled": psnr(mse_copy.mean()),
            "per_step_psnr": [float(v) for v in np.mean(psnr_roll, axis=0)]}
