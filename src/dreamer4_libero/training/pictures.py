"""Pictures of a training run for its live view (TensorBoard / W&B; training/monitor.py).

At the engine's image cadence the trainers draw a few FIXED windows (the same ones at every step, in
every attempt) of the validation split (``val.json`` beside the training split; the training split
where there is none, e.g. the DMControl data):

* tokenizer: ``recon`` — per window a row of target frames over a row of reconstructions (no MAE);
* world model: ``rollout`` — per window the target frames over the model's frames: ``context`` true
  frames encoded, then generated ones (the shortcut sampler at K = 4, the KV cache), noise from a
  generator seeded by the window index, decoded and clamped to [0, 1].

Windows: the episodes of the split sorted by id, ``n`` picked evenly over the list (first, ..., last), each
from frame 0; episodes shorter than the window are skipped. The cost is a handful of frames per picture:
one encoder + decoder call (and ``horizon`` sampler steps) at batch ``n``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..data.loader import episode_list
from ..data.shards import ShardStore
from ..evaluation.rollout import load_window

IMAGE_WINDOWS = 3  # windows per picture
IMAGE_FRAMES = 6  # frames per window (tokenizer: at most its seq_len)
ROLLOUT_CONTEXT = 2  # world model: true context frames; the rest are generated


def image_split(train_split: str | os.PathLike) -> Path:
    """The split the pictures come from: val.json beside the training split, else the training split."""
    val = Path(train_split).with_name("val.json")
    return val if val.exists() else Path(train_split)


def fixed_windows(store: ShardStore, episodes: list[str], length: int, n: int = IMAGE_WINDOWS) -> list[str]:
    """`n` episodes with >= `length` frames, evenly spread over the sorted list (deterministic)."""
    ok = sorted(e for e in episodes if store.episodes[e].T >= length)
    if not ok:
        raise ValueError(f"no episode has >= {length} frames for the training pictures")
    idx = np.unique(np.linspace(0, len(ok) - 1, min(n, len(ok))).round().astype(int))
    return [ok[i] for i in idx]


def load_fixed(
    manifest: str | os.PathLike, split: str | os.PathLike, length: int, resolution: int, n: int = IMAGE_WINDOWS
) -> dict:
    """{"frames" (n,L,3,r,r) in [0,1], "actions" (n,L,16), "act_mask" (n,L,16), "episodes", "split"} of the fixed
    windows (frames 0..L-1 of each)."""
    store = ShardStore(manifest)
    eps = fixed_windows(store, episode_list(split), length, n)
    parts = [load_window(store, e, 0, length, resolution) for e in eps]
    return {
        "frames": torch.cat([p[0] for p in parts]),
        "actions": torch.cat([p[1] for p in parts]),
        "act_mask": torch.cat([p[2] for p in parts]),
        "episodes": eps,
        "split": str(split),
    }


def strip(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> np.ndarray:
    """One picture (2 n r, L r, 3) float in [0,1]: per window its target row (L,3,r,r) over its model row."""
    rows = []
    for target, model in pairs:
        for seq in (target, model):
            seq = seq.detach().float().clamp(0, 1).cpu()
            rows.append(torch.cat(list(seq), dim=-1))  # (3, r, L r)
    return torch.cat(rows, dim=-2).permute(1, 2, 0).numpy()  # (2 n r, L r, 3)


def tokenizer_recon(model, frames: torch.Tensor) -> np.ndarray:
    """Target vs reconstruction (one encoder call per window, MAE off) of frames (n,L,3,r,r)."""
    x = frames.to(next(model.parameters()).device)
    rec = model.decode(model.encode(x, mae=False)).float().clamp(0, 1)
    return strip(list(zip(x, rec)))


def world_model_rollout(
    tokenizer,
    dynamics,
    fixed: dict,
    *,
    packing: int,
    chunk: int | None,
    context: int = ROLLOUT_CONTEXT,
    d: float = 0.25,
) -> np.ndarray:
    """Target vs (context frames through the tokenizer, then generated frames) of the fixed windows; `fixed` as
    `load_fixed` gives it (actions / act_mask None: an action-free model)."""
    from ..models.dynamics import pack_latents, unpack_latents
    from ..models.sampling import rollout
    from ..models.tokenizer_chunks import decode_chunked, encode_chunked

    dev = next(dynamics.parameters()).device
    frames, act, mask = (None if fixed[k] is None else fixed[k].to(dev) for k in ("frames", "actions", "act_mask"))
    n, L = frames.shape[:2]
    z_ctx = pack_latents(encode_chunked(tokenizer, frames[:, :context], chunk).float(), packing)
    cfg = dynamics.cfg
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(n, L - context, cfg.n_spatial, cfg.d_spatial, generator=g).to(dev)
    lat = rollout(dynamics, z_ctx, act, mask, L - context, d=d, window=L, use_cache=True, noise=noise)
    video = decode_chunked(tokenizer, unpack_latents(lat.float(), packing), chunk).float().clamp(0, 1)
    return strip(list(zip(frames, video)))
