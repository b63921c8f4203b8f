"""Cluster bootstraps over episodes and tasks from per-episode sufficient statistics (evaluation.md §1.7, §2).

A pooled R² only needs, per episode e and action dim d: the frame count n_e, Σy, Σy² and the
squared error Σ(y−ŷ)² of each predictor. A resample is a vector of counts c_e (how often episode e
was drawn); its pooled per-dim R² is

    R²_d = 1 − Σ_e c_e·sse_ed / (Σ_e c_e·Σy²_ed − (Σ_e c_e·Σy_ed)² / Σ_e c_e·n_e)        (ȳ recomputed per resample)

Two rows scored on the same episodes with the same seed get the same count matrix, so their
difference is a paired bootstrap. Generators are seeded by (seed, kind, set name) through sha256,
never by Python's salted hash, so every draw is reproducible across processes.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Sequence

import numpy as np

#: A target dim whose pooled std is below this (relative to 1 + |mean|) has an undefined R² (NaN rule, §1.5).
CONST_RTOL = 1e-9


def rng_for(seed: int, kind: str, set_name: str) -> np.random.Generator:
    """Generator seeded by (seed, kind, set name), e.g. (0, "boot", "probe_eval_test")."""
    digest = hashlib.sha256(f"{int(seed)}|{kind}|{set_name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def episode_counts(n_episodes: int, B: int, rng: np.random.Generator) -> np.ndarray:
    """(B, E) counts of a plain cluster bootstrap: E episodes drawn with replacement."""
    idx = rng.integers(0, n_episodes, size=(B, n_episodes))
    counts = np.zeros((B, n_episodes), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(B), n_episodes), idx.ravel()), 1)
    return counts


def task_counts(tasks: Sequence[str], B: int, rng: np.random.Generator) -> np.ndarray:
    """(B, E) counts of a two-level bootstrap: tasks with replacement, then episodes within each drawn task."""
    tasks = list(tasks)
    names = sorted(set(tasks))
    members = [np.array([i for i, t in enumerate(tasks) if t == name]) for name in names]
    counts = np.zeros((B, len(tasks)), dtype=np.int64)
    for b in range(B):
        for k in rng.integers(0, len(names), size=len(names)):
            m = members[k]
            np.add.at(counts[b], m[rng.integers(0, len(m), size=len(m))], 1)
    return counts


def resample_counts(level: str, tasks: Sequence[str], B: int, seed: int, set_name: str) -> np.ndarray:
    """Count matrix for `level` = "episode" (ci) or "task" (ci_task), seeded as the module says (cached; read-only)."""
    return _resample_counts(level, tuple(tasks), int(B), int(seed), str(set_name))


@functools.lru_cache(maxsize=256)
def _resample_counts(level: str, tasks: tuple, B: int, seed: int, set_name: str) -> np.ndarray:
    if level == "episode":
        return _readonly(episode_counts(len(tasks), B, rng_for(seed, "boot", set_name)))
    if level == "task":
        return _readonly(task_counts(tasks, B, rng_for(seed, "boot_task", set_name)))
    raise ValueError(f"bootstrap level must be 'episode' or 'task', got {level!r}")


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def r2_from_stats(
    counts: np.ndarray, n: np.ndarray, sum_y: np.ndarray, sum_y2: np.ndarray, sse: np.ndarray
) -> np.ndarray:
    """(B, D) pooled per-dim R² of each resample (NaN where the resampled target is constant)."""
    c = np.asarray(counts, dtype=np.float64)
    N = c @ np.asarray(n, dtype=np.float64)  # (B,)
    Sy = c @ np.asarray(sum_y, dtype=np.float64)  # (B,D)
    Sy2 = c @ np.asarray(sum_y2, dtype=np.float64)
    SSE = c @ np.asarray(sse, dtype=np.float64)
    Nn = np.maximum(N, 1.0)[:, None]
    mean = Sy / Nn
    sst = np.maximum(Sy2 - Sy * Sy / Nn, 0.0)
    const = np.sqrt(sst / Nn) < CONST_RTOL * (1.0 + np.abs(mean))
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 1.0 - SSE / sst
    r2[const] = np.nan
    return r2


def r2_uniform_from_stats(counts, n, sum_y, sum_y2, sse) -> np.ndarray:
    """(B,) uniform R² (mean over the defined dims) of each resample."""
    r2 = r2_from_stats(counts, n, sum_y, sum_y2, sse)
    ok = np.isfinite(r2)
    with np.errstate(invalid="ignore"):
        return np.where(ok.any(1), np.nansum(np.where(ok, r2, 0.0), 1) / np.maximum(ok.sum(1), 1), np.nan)


def percentile_ci(replicates: np.ndarray, level: float = 0.95) -> list[float | None]:
    """[lo, hi] percentile interval of the finite replicates ([None, None] if there are none)."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return [None, None]
    a = (1.0 - level) / 2.0
    lo, hi = np.percentile(r, [100 * a, 100 * (1 - a)])
    return [float(lo), float(hi)]


def r2_replicates(stats: dict, predictor: str, level: str, seed: int, set_name: str, B: int) -> np.ndarray:
    """(B,) uniform-R² replicates of `predictor` from a record's `stats` block (docs/results_format.md)."""
    counts = resample_counts(level, stats["tasks"], B, seed, set_name)
    return r2_uniform_from_stats(counts, stats["n"], stats["sum_y"], stats["sum_y2"], stats["sse"][predictor])


def paired_r2_diff(
    stats_a: dict, pred_a: str, stats_b: dict, pred_b: str, level: str, seed: int, set_name: str, B: int
) -> np.ndarray:
    """(B,) replicates of R²(a) − R²(b) from the same resamples (both rows must score the same episodes)."""
    if list(stats_a["episodes"]) != list(stats_b["episodes"]) or list(stats_a["n"]) != list(stats_b["n"]):
        raise ValueError("paired bootstrap needs two rows scored on the same episodes and frames")
    counts = resample_counts(level, stats_a["tasks"], B, seed, set_name)
    ra = r2_uniform_from_stats(counts, stats_a["n"], stats_a["sum_y"], stats_a["sum_y2"], stats_a["sse"][pred_a])
    rb = r2_uniform_from_stats(counts, stats_b["n"], stats_b["sum_y"], stats_b["sum_y2"], stats_b["sse"][pred_b])
    return ra - rb


def mean_replicates(counts: np.ndarray, sums: np.ndarray, n: np.ndarray) -> np.ndarray:
    """(B,) resampled pooled means Σc·sum / Σc·n (e.g. per-frame PSNR summed per episode)."""
    c = np.asarray(counts, dtype=np.float64)
    return (c @ np.asarray(sums, dtype=np.float64)) / np.maximum(c @ np.asarray(n, dtype=np.float64), 1.0)
