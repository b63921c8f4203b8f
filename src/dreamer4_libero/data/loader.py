"""Training windows from the shards, with actions aligned as the model expects.

Alignment (dreamer4_model.md §9.3, evaluation.md §0): for a window of `seq_len` frames starting
at frame s of an episode, block t holds frame o_{s+t} and the action token of block t carries the
action that *produced* that frame, which is the raw stored `actions[s+t]` (libero_data.md §3.2:
frame k shows the result of `actions[k]`). Block 0 of every window gets a zero action with a zero
mask. Actions are zero-padded to `action_dim` (16) with ones in the mask on the task's own dims
(the first 7 for LIBERO).

The stream is a pure function of (seed, step, rank): batch `step` of rank `rank` draws its window
starts from `np.random.default_rng([seed, step, rank])`, uniformly over every valid window start of
the episode list, so a resumed run sees exactly the batches it would have seen, and workers can
build batches in any order. Windows never cross an episode boundary.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..fileio import read_json
from .shards import ShardStore


def _area_chw(frames: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 tensor (N, 3, size, size) in [0, 1], N = prod(leading dims)."""
    h, w = frames.shape[-3], frames.shape[-2]
    if h % size or w % size:
        raise ValueError(f"cannot area-downsample {h}x{w} to {size}x{size} (not an integer factor)")
    x = torch.from_numpy(np.require(frames, requirements=["C", "W"]).reshape(-1, h, w, 3)).permute(0, 3, 1, 2).float()
    if h != size or w != size:
        x = F.avg_pool2d(x, kernel_size=(h // size, w // size))  # block mean = area resampling
    return x.mul_(1.0 / 255.0)


def area_downsample(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., size, size, 3) in [0, 1] by block averaging."""
    x = _area_chw(frames, size).permute(0, 2, 3, 1)
    return np.ascontiguousarray(x.numpy()).reshape(*frames.shape[:-3], size, size, 3)


def model_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """Upright uint8 (T,128,128,3) -> the model's input float32 (T,3,size,size) in [0,1]."""
    return _area_chw(frames, size).numpy().reshape(*frames.shape[:-3], 3, size, size)


def window_actions(raw: np.ndarray, start: int, seq_len: int, action_dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Action tokens of the window [start, start+seq_len) of one episode's raw (T,A) actions.

    A is the task's own width (7 for LIBERO, 1-6 for DMControl tasks). Returns (act, mask), each
    float32 (seq_len, action_dim): act[t, :A] = raw[start+t] for t >= 1 with mask ones on those A
    dims (upstream's per-task action mask), act[0] = 0 and mask[0] = 0.
    """
    width = raw.shape[1]
    if width > action_dim:
        raise ValueError(f"actions of width {width} do not fit the {action_dim}-wide action token")
    act = np.zeros((seq_len, action_dim), np.float32)
    mask = np.zeros((seq_len, action_dim), np.float32)
    act[1:, :width] = raw[start + 1 : start + seq_len]
    mask[1:, :width] = 1.0
    return act, mask


def episode_list(path: str | os.PathLike) -> list[str]:
    """Episode ids of a split or probe file (canonical libero-split-v1 form)."""
    return list(read_json(path)["episodes"])


class WindowDataset(Dataset):
    """Map-style dataset whose item `step` is the whole per-rank batch of that training step."""

    def __init__(
        self,
        manifest: str | os.PathLike,
        episodes: list[str] | str | os.PathLike,
        *,
        seq_len: int,
        batch_size: int,
        resolution: int,
        seed: int = 0,
        rank: int = 0,
        action_dim: int = 16,
        cache_mb: float = 1024,
    ):
        self.store = ShardStore(manifest)
        # Downsampled whole episodes, kept while they fit in cache_mb (per process). Area resampling
        # acts on each frame alone, so a cached episode slice equals downsampling the window itself.
        self._cache: dict[str, np.ndarray] = {}
        self._cache_left = cache_mb * 2**20 if resolution < 128 else 0
        eps = episode_list(episodes) if isinstance(episodes, (str, Path)) else list(episodes)
        self.seq_len, self.batch_size, self.resolution = seq_len, batch_size, resolution
        self.seed, self.rank, self.action_dim = seed, rank, action_dim
        self.episode_ids = [e for e in eps if self.store.episodes[e].T >= seq_len]
        if not self.episode_ids:
            raise ValueError(f"no episode in the list has >= seq_len={seq_len} frames ({len(eps)} episodes)")
        n_starts = np.array([self.store.episodes[e].T - seq_len + 1 for e in self.episode_ids], np.int64)
        self._cum = np.concatenate([[0], np.cumsum(n_starts)])  # window w -> episode searchsorted(cum, w)

    @property
    def n_windows(self) -> int:
        return int(self._cum[-1])

    def locate(self, w: int) -> tuple[str, int]:
        """Global window index -> (episode id, start frame)."""
        i = int(np.searchsorted(self._cum, w, side="right") - 1)
        return self.episode_ids[i], int(w - self._cum[i])

    def window(self, episode_id: str, start: int) -> dict:
        frames, raw = self.store.episode(episode_id)
        L = self.seq_len
        act, mask = window_actions(raw, start, L, self.action_dim)
        cached = self._cache.get(episode_id)
        if cached is None and self._cache_left > 0:
            cached = model_frames(frames, self.resolution)
            if cached.nbytes <= self._cache_left:
                self._cache[episode_id] = cached
                self._cache_left -= cached.nbytes
        x = (
            cached[start : start + L]
            if cached is not None
            else model_frames(frames[start : start + L], self.resolution)
        )
        return {"frames": x, "actions": act, "act_mask": mask}  # a view; __getitem__ stacks (copies) it

    def starts_for_step(self, step: int) -> list[tuple[str, int]]:
        rng = np.random.default_rng([self.seed, step, self.rank])
        return [self.locate(int(w)) for w in rng.integers(0, self.n_windows, size=self.batch_size)]

    def __len__(self) -> int:  # steps are unbounded; the sampler decides which ones are drawn
        return 2**62

    def __getitem__(self, step: int) -> dict:
        items = [self.window(e, s) for e, s in self.starts_for_step(step)]
        return {
            "frames": torch.from_numpy(np.stack([it["frames"] for it in items])),  # (B,L,3,r,r)
            "actions": torch.from_numpy(np.stack([it["actions"] for it in items])),  # (B,L,16)
            "act_mask": torch.from_numpy(np.stack([it["act_mask"] for it in items])),  # (B,L,16)
            "step": step,
        }


def make_loader(
    dataset: WindowDataset, start_step: int, max_steps: int, num_workers: int = 0, pin_memory: bool | None = None
) -> DataLoader:
    """Batches for steps start_step .. max_steps-1, in order; a resumed run passes its next step.

    With workers, each keeps 2 batches prefetched; on a CUDA machine batches come in pinned memory
    (pin_memory None = when CUDA is available), so the engine's non_blocking copy overlaps the step.
    bench/ compares the loader's windows/s with what the train step consumes.

    The loader gets its own generator: by default creating a DataLoader iterator draws a base seed
    from the *global* torch RNG, which would shift the training RNG stream (MAE masks, dropout)
    of a resumed run against an uninterrupted one.
    """
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=range(start_step, max_steps),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        prefetch_factor=2 if num_workers > 0 else None,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        generator=torch.Generator().manual_seed(0),
    )
