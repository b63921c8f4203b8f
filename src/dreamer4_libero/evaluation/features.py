"""Probe targets and the non-learned feature sets (evaluation.md §0, §1.2, §1.3).

Canonical indexing: o_t = upright agentview frame t, a_t = raw `actions[t+1]` (the action executed
at frame t, whose result is o_{t+1}). Every function here takes one episode.
"""

from __future__ import annotations

import numpy as np

MODES = ("policy", "idm")


def probe_targets(raw_actions: np.ndarray, horizon: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(t, a_{t+H-1}) for every target frame t valid in policy mode: 0 <= t <= T-1-H.

    a_t = raw_actions[t+1], so the target of frame t is raw_actions[t+H].
    """
    T = len(raw_actions)
    t = np.arange(0, T - horizon)
    return t, np.asarray(raw_actions[t + horizon], dtype=np.float64)


def frame_diff(frames: np.ndarray, t: np.ndarray, mode: str) -> np.ndarray:
    """frame_diff features for target frames t, flattened.

    policy: o_t - o_{t-1} (o_{-1} := o_0, so zero at t = 0) - only the previous action's effect;
    idm:    o_{t+1} - o_t - the visible result of a_t itself.
    frames: (T, ...) float array at the model resolution.
    """
    x = np.asarray(frames, dtype=np.float32).reshape(len(frames), -1)
    if mode == "policy":
        return x[t] - x[np.maximum(t - 1, 0)]
    if mode == "idm":
        return x[t + 1] - x[t]
    raise ValueError(f"probe mode must be one of {MODES}, got {mode!r}")
