"""Probe targets and feature sets, one episode at a time (evaluation.md §0, §1.2, §1.3).

Canonical indexing: o_t = upright agentview frame t, a_t = raw `actions[t+1]` (the action executed
at frame t, whose result is o_{t+1}). A target frame t predicts a_{t+H-1} = raw[t+H]; it is valid
for 0 <= t <= T-1-H in both probe modes (H = 1: t <= T-2, so o_{t+1} exists for idm mode).

Every feature set is a `FeatureSet`: ``extract(frames, raw, t, mode) -> (len(t), F)`` from one
episode's uint8 frames (T,128,128,3) and raw actions (T,7). That one signature lets the leak
tests of §1.3 (evaluation/leak_tests.py) treat model features, baselines and the deliberately
broken controls alike: they perturb the inputs and measure the change, never trust a name.

Read-out frame: o_t (policy mode) or o_{t+1} (idm mode). Visible context: o_{<=read-out} and
a_{<t}; the target a_t and everything after it are never inputs (except in `leak_control`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..data.loader import area_downsample

MODES = ("policy", "idm")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"probe mode must be one of {MODES}, got {mode!r}")
    return mode


def valid_targets(T: int, horizon: int) -> np.ndarray:
    """Target frames t with a label a_{t+H-1} = raw[t+H]: 0 <= t <= T-1-H (both modes)."""
    return np.arange(0, max(T - horizon, 0))


def probe_targets(raw_actions: np.ndarray, horizon: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(t, a_{t+H-1}) for every valid target frame: a_t = raw_actions[t+1], so the label is raw[t+H]."""
    t = valid_targets(len(raw_actions), horizon)
    return t, np.asarray(raw_actions[t + horizon], dtype=np.float64)


def readout_frame(t: np.ndarray, mode: str) -> np.ndarray:
    """o_t in policy mode, o_{t+1} in idm mode."""
    return np.asarray(t) + (1 if check_mode(mode) == "idm" else 0)


# -- windows of the world model's context (§1.3) -------------------------------------------------


def window_plan(T: int, C: int) -> list[int]:
    """Starts of windows of C frames, stride C//2, the last one aligned to the episode end."""
    if T <= C:
        return [0]
    starts = list(range(0, T - C + 1, max(C // 2, 1)))
    if starts[-1] != T - C:
        starts.append(T - C)
    return starts


def readout_window(b: int, starts: list[int], C: int) -> int:
    """The window holding block b with the most preceding context (the smallest start; ties -> earlier)."""
    for s in starts:
        if s <= b < s + C:
            return s
    raise ValueError(f"block {b} is in no window of {starts} (C={C})")


def window_position(t: np.ndarray, mode: str, T: int, C: int) -> np.ndarray:
    """Position of the read-out block inside its window (episode-specificity key, §1.9)."""
    starts = window_plan(T, C)
    b = readout_frame(t, mode)
    return np.array([int(x) - readout_window(int(x), starts, C) for x in b], dtype=np.int64)


# -- feature sets -----------------------------------------------------------------------------


@dataclass
class FeatureSet:
    """A named feature extractor. `pca`: PCA dimension when the raw width is larger (§1.3), else None."""

    name: str
    extract: Callable[[np.ndarray, np.ndarray, np.ndarray, str], np.ndarray]
    pca: int | None = None
    needs_model: bool = False
    #: `non_vacuity` leak test: "change" (must react to a_{t-1}), "no_change" (must ignore all actions), None (n/a)
    action_sensitivity: str | None = None


def frame_diff(frames: np.ndarray, t: np.ndarray, mode: str) -> np.ndarray:
    """frame_diff features for target frames t, flattened.

    policy: o_t - o_{t-1} (o_{-1} := o_0, so zero at t = 0) - only the previous action's effect;
    idm:    o_{t+1} - o_t - the visible result of a_t itself.
    frames: (T, ...) float array at the probe resolution.
    """
    x = np.asarray(frames, dtype=np.float32).reshape(len(frames), -1)
    if check_mode(mode) == "policy":
        return x[t] - x[np.maximum(t - 1, 0)]
    return x[t + 1] - x[t]


def time_features(t: np.ndarray) -> np.ndarray:
    """[t, t^2, log(1+t)] of the target's frame index (both modes)."""
    t = np.asarray(t, dtype=np.float64)
    return np.stack([t, t * t, np.log1p(t)], axis=1)


def lagged_actions(raw: np.ndarray, t: np.ndarray, n_lags: int = 4) -> np.ndarray:
    """[a_{t-1}, ..., a_{t-n}] with a validity bit each; a_{t-k} = raw[t-k+1], unavailable (t-k < 0) -> zeros, bit 0."""
    raw = np.asarray(raw, dtype=np.float64)
    cols = []
    for k in range(1, n_lags + 1):
        idx = np.asarray(t) - k + 1
        ok = (np.asarray(t) - k) >= 0
        a = np.where(ok[:, None], raw[np.clip(idx, 0, len(raw) - 1)], 0.0)
        cols += [a, ok[:, None].astype(np.float64)]
    return np.concatenate(cols, axis=1)


def copy_prev_prediction(raw: np.ndarray, t: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """`copy_prev` control: a_{t-1} = raw[t] for t >= 1; t = 0 has no previous action -> `fallback` (train mean)."""
    raw = np.asarray(raw, dtype=np.float64)
    t = np.asarray(t)
    return np.where((t >= 1)[:, None], raw[np.clip(t, 0, len(raw) - 1)], np.asarray(fallback)[None])


def baseline_feature_sets(
    resolution: int = 32, pca: dict | None = None, encode_tokens=None, window: int = 32, controls: bool = False
) -> dict[str, FeatureSet]:
    """Feature sets that need no world model (§1.3 table, §1.8).

    encode_tokens: optional callable (frames uint8 (T,...), t, mode, window) -> tokenizer latents of the
    read-out frames (tok_latent); without it tok_latent is omitted. `controls` adds the demo's deliberately
    constant (`const_control`) and deliberately leaking (`leak_control`, copies a_t) feature sets.
    """
    pca = {"tok_latent": 1024, "pixels": 256, "frame_diff": 256, **(pca or {})}

    def pixels(frames, raw, t, mode):
        small = area_downsample(np.asarray(frames[: int(readout_frame(t, mode).max()) + 1]), resolution)
        return small.reshape(len(small), -1)[readout_frame(t, mode)].astype(np.float64)

    def fdiff(frames, raw, t, mode):
        hi = int(np.max(t)) + (2 if mode == "idm" else 1)
        return frame_diff(area_downsample(np.asarray(frames[:hi]), resolution), t, mode).astype(np.float64)

    sets = {
        "pixels": FeatureSet("pixels", pixels, pca["pixels"]),
        "frame_diff": FeatureSet("frame_diff", fdiff, pca["frame_diff"]),
        "time_only": FeatureSet("time_only", lambda f, r, t, m: time_features(t)),
        "lagged_actions": FeatureSet(
            "lagged_actions", lambda f, r, t, m: lagged_actions(r, t), action_sensitivity="change"
        ),
    }
    if encode_tokens is not None:
        sets = {
            "tok_latent": FeatureSet(
                "tok_latent", lambda f, r, t, m: encode_tokens(f, t, m, window), pca["tok_latent"]
            ),
            **sets,
        }
    if controls:
        sets["const_control"] = FeatureSet("const_control", lambda f, r, t, m: np.ones((len(t), 8)))
        # a_t = raw[t+1]: the target itself. Must be caught by the leak test, not by its name.
        sets["leak_control"] = FeatureSet(
            "leak_control", lambda f, r, t, m: np.asarray(r, np.float64)[np.asarray(t) + 1]
        )
    return sets


def pca_dim(fs: FeatureSet, n_raw: int) -> int | None:
    """The PCA width to apply (None when the raw width is not larger than the target width)."""
    return fs.pca if fs.pca is not None and n_raw > fs.pca else None
