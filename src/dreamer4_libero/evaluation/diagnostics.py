"""Feature-degeneracy diagnostic and the flags of evaluation.md §1.9.

Why it matters: features with no usable signal make ridge predict the probe-train mean, whose
held-out-task R² is −mean_d δ_d² (δ = standardised shift of the task means, §1.8) — a small
negative number like the published −0.04 — and task-identifying features make it more negative.
So every R² is printed next to these numbers and flags.
"""

from __future__ import annotations

import numpy as np

from .features import time_features

#: DEGENERATE thresholds (§1.9)
MIN_NONCONSTANT = 2
MIN_EFFECTIVE_RANK = 1.5
MIN_RELATIVE_VARIATION = 1e-6
MIN_EPISODE_SPECIFICITY = 1e-3
MIN_IN_SAMPLE_R2 = 0.02
MAX_TIME_EXPLAINED = 0.99
NO_SIGNAL_MARGIN = 0.02
IDM_POLICY_MARGIN = 0.02


def effective_rank(X: np.ndarray) -> float:
    """exp(−Σ p_i log p_i), p_i = λ_i / Σλ over the eigenvalues of the covariance of centred X (0 if none)."""
    if X.shape[1] == 0 or X.shape[0] < 2:
        return 0.0
    Xc = X - X.mean(0)
    s = np.linalg.svd(Xc, compute_uv=False)
    lam = s**2
    if lam.sum() <= 0:
        return 0.0
    p = lam / lam.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def time_explained(X: np.ndarray, t: np.ndarray) -> float:
    """Variance-weighted R² of OLS X ~ [1, t, t², log(1+t)] (fraction of feature variance that is elapsed time)."""
    if X.shape[1] == 0:
        return 0.0
    A = np.concatenate([np.ones((len(t), 1)), time_features(t)], axis=1)
    A = A / np.maximum(np.abs(A).max(0), 1e-12)
    coef, *_ = np.linalg.lstsq(A, X, rcond=None)
    sse = ((X - A @ coef) ** 2).sum()
    sst = ((X - X.mean(0)) ** 2).sum()
    return float(1.0 - sse / sst) if sst > 0 else 0.0


def episode_specificity(X: np.ndarray, keys: np.ndarray) -> float:
    """Variance across episodes at equal (t, window position) / total variance (0 when all episodes agree)."""
    sst = ((X - X.mean(0)) ** 2).sum()
    if X.shape[1] == 0 or sst <= 0:
        return 0.0
    _, inv = np.unique(keys, axis=0, return_inverse=True)
    inv = inv.ravel()
    sums = np.zeros((inv.max() + 1, X.shape[1]))
    np.add.at(sums, inv, X)
    cnt = np.bincount(inv)[:, None]
    within = ((X - (sums / cnt)[inv]) ** 2).sum()
    return float(within / sst)


def degeneracy(
    X_raw: np.ndarray, X_used: np.ndarray, t: np.ndarray, keys: np.ndarray, *, in_sample_r2: float, cv_r2: float
) -> dict:
    """§1.9 numbers on probe-train and the reasons for DEGENERATE (empty list when not degenerate)."""
    X_raw = np.asarray(X_raw, np.float64)
    tr_raw = float(np.var(X_raw, axis=0).sum()) if X_raw.size else 0.0
    mean_sq = float((X_raw.mean(0) ** 2).sum()) if X_raw.size else 0.0
    rel = tr_raw / (tr_raw + mean_sq) if tr_raw + mean_sq > 0 else 0.0
    out = {
        "n_columns_raw": int(X_raw.shape[1]),
        "n_nonconstant": int(X_used.shape[1]),
        "total_variance": float(np.var(X_used, axis=0).sum()) if X_used.size else 0.0,
        "relative_variation": rel,
        "effective_rank": effective_rank(X_used),
        "time_explained": time_explained(X_used, t),
        "episode_specificity": episode_specificity(X_used, keys),
        "in_sample_r2": float(in_sample_r2),
        "cv_r2": float(cv_r2),
    }
    reasons = []
    if out["n_nonconstant"] < MIN_NONCONSTANT:
        reasons.append(f"{out['n_nonconstant']} non-constant columns (< {MIN_NONCONSTANT})")
    if out["effective_rank"] < MIN_EFFECTIVE_RANK:
        reasons.append(f"effective rank {out['effective_rank']:.3g} (< {MIN_EFFECTIVE_RANK})")
    if rel < MIN_RELATIVE_VARIATION:
        reasons.append(f"relative variation {rel:.3g} (< {MIN_RELATIVE_VARIATION:g})")
    if out["episode_specificity"] < MIN_EPISODE_SPECIFICITY:
        reasons.append(
            f"episode specificity {out['episode_specificity']:.3g} (< {MIN_EPISODE_SPECIFICITY:g}): "
            "the same features in every episode"
        )
    if not (out["in_sample_r2"] >= MIN_IN_SAMPLE_R2):
        reasons.append(f"in-sample R² {out['in_sample_r2']:+.3f} (< {MIN_IN_SAMPLE_R2})")
    if out["time_explained"] > MAX_TIME_EXPLAINED:
        reasons.append(f"elapsed time explains {100 * out['time_explained']:.1f}% of the feature variance")
    out["reasons"] = reasons
    return out
