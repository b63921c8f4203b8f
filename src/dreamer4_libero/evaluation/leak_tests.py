"""Leak tests of evaluation.md §1.3, measured on any FeatureSet (model features, baselines, controls).

For a few targets t of a few episodes, perturb the inputs and measure max |Δ features of target t|:
1. `future_actions`: a_t, a_{t+1}, ... (raw[t+1:]) get random values -> must not change (≤ tol);
2. `non_vacuity`: with action-reading features (`past_actions`, lagged actions) perturbing a_{t-1}
   (raw[t], never block 0 of the read-out window for the targets chosen) must change them; with
   `video_only` features perturbing every action must change nothing;
3. `future_frames`: frames after the read-out frame get random pixels -> must not change.
A feature set that copies a_t fails test 1 whatever it is called; that is how `leak_control` is caught.
"""

from __future__ import annotations

import numpy as np

from .features import FeatureSet, readout_frame, valid_targets

TOL = 1e-6


def leak_targets(T: int, n: int, C: int) -> list[int]:
    """Spread targets with t >= 2 (so a_{t-1} exists and is not block 0), valid for H = 1."""
    valid = valid_targets(T, 1)
    valid = valid[valid >= 2]
    if valid.size == 0:
        return []
    pick = np.unique(np.linspace(valid[0], valid[-1], n).round().astype(int))
    return [int(x) for x in pick]


def _delta(fs: FeatureSet, frames, raw, t: int, mode: str, frames2=None, raw2=None) -> float:
    ta = np.array([t])
    f0 = np.asarray(fs.extract(frames, raw, ta, mode), dtype=np.float64)
    f1 = np.asarray(
        fs.extract(frames if frames2 is None else frames2, raw if raw2 is None else raw2, ta, mode), dtype=np.float64
    )
    return float(np.max(np.abs(f1 - f0))) if f0.size else 0.0


def run_leak_tests(
    fs: FeatureSet,
    episodes: list[tuple[np.ndarray, np.ndarray]],
    mode: str,
    *,
    n_targets: int = 3,
    window: int = 32,
    seed: int = 0,
    tol: float = TOL,
) -> dict:
    """The three tests on `episodes` [(frames uint8 (T,...), raw (T,7))]; returns the record's `leak_tests` block."""
    rng = np.random.default_rng(seed)
    d_fut_a, d_vac, d_fut_f, n = 0.0, 0.0, 0.0, 0
    for frames, raw in episodes:
        frames = np.asarray(frames)
        raw = np.asarray(raw, dtype=np.float64)
        for t in leak_targets(len(frames), n_targets, window):
            n += 1
            r2 = raw.copy()
            r2[t + 1 :] = rng.uniform(-1, 1, size=r2[t + 1 :].shape)
            d_fut_a = max(d_fut_a, _delta(fs, frames, raw, t, mode, raw2=r2))
            b = int(readout_frame(np.array([t]), mode)[0])
            f2 = frames.copy()
            f2[b + 1 :] = rng.integers(0, 256, size=f2[b + 1 :].shape, dtype=np.uint8)
            d_fut_f = max(d_fut_f, _delta(fs, frames, raw, t, mode, frames2=f2))
            if fs.action_sensitivity == "change":
                r3 = raw.copy()
                r3[t] = rng.uniform(-1, 1, size=raw.shape[1])  # a_{t-1} only
                d_vac = max(d_vac, _delta(fs, frames, raw, t, mode, raw2=r3))
            elif fs.action_sensitivity == "no_change":
                r3 = rng.uniform(-1, 1, size=raw.shape)  # every action
                d_vac = max(d_vac, _delta(fs, frames, raw, t, mode, raw2=r3))
    out = {
        "future_actions": {"max_abs_delta": d_fut_a, "pass": bool(d_fut_a <= tol), "n_targets": n, "tol": tol},
        "future_frames": {"max_abs_delta": d_fut_f, "pass": bool(d_fut_f <= tol), "n_targets": n, "tol": tol},
        "non_vacuity": None,
    }
    if fs.action_sensitivity is not None:
        ok = d_vac > tol if fs.action_sensitivity == "change" else d_vac <= tol
        out["non_vacuity"] = {
            "max_abs_delta": d_vac,
            "pass": bool(ok),
            "expect": fs.action_sensitivity,
            "perturbed": "a_{t-1}" if fs.action_sensitivity == "change" else "every action",
            "n_targets": n,
            "tol": tol,
        }
    if n == 0:
        for v in out.values():
            if v is not None:
                v["pass"] = None
    return out


def leak_failed(block: dict | None) -> list[str]:
    """Names of the failed tests of a `leak_tests` block."""
    return [k for k, v in (block or {}).items() if v is not None and v.get("pass") is False]
