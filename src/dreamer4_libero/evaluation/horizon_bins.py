"""Bins of predicted frames for per-horizon rollout deltas (issue 27); numpy only, so the tables stage can use it."""

from __future__ import annotations

import numpy as np

N_HORIZON_BINS = 3


def horizon_bins(horizon: int, n_bins: int = N_HORIZON_BINS) -> list[tuple[int, int]]:
    """Predicted-frame bins of a horizon as 1-based inclusive (first, last) frame numbers.

    The horizon is cut into `n_bins` consecutive bins (thirds by default) as np.array_split does: when
    it is not divisible, the earlier bins are one frame longer; a horizon shorter than `n_bins` gives
    one bin per frame. horizon 24 -> [(1, 8), (9, 16), (17, 24)]."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    out, start = [], 0
    for part in np.array_split(np.arange(horizon), min(n_bins, horizon)):
        out.append((start + 1, start + len(part)))
        start += len(part)
    return out
