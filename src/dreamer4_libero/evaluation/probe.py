"""Numerical core of the linear action probe (evaluation.md §1.3–§1.5, §1.8).

Order of transforms for every feature set (§1.3): raw X → PCA where listed (on unscaled X,
full deterministic SVD) → standardise (§1.4 column-drop rule) → ridge with intercept, closed
form via the SVD of the centred X, float64. PCA and the scaler are fit once on all of
probe-train and reused unchanged inside the CV folds; α is chosen by grouped K-fold CV on
probe-train (ties → larger α), then the ridge is refit on all of probe-train.

Y is standardised with probe-train statistics, the ridge is fit in standardised Y and the
predictions are mapped back: every R² here is computed in ORIGINAL action units (§1.4/§1.5).
A target dim that is constant on an eval set has an undefined R²: it is reported as NaN,
excluded from both averages and listed in ``nan_dims`` (never silently 0 or 1).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "ALPHA_GRID",
    "PCA",
    "fit_pca",
    "Standardizer",
    "RidgeModel",
    "ridge_fit",
    "ridge_path",
    "ridge_predict",
    "r2_scores",
    "grouped_folds",
    "select_alpha",
    "select_alpha_many",
    "LinearProbe",
    "run_probe",
    "train_mean_r2",
    "train_mean_r2_analytic",
]

#: α grid of §1.4: 10^k for k = −3, −2.5, …, 6 (19 values, ascending).
ALPHA_GRID: tuple[float, ...] = tuple(float(10.0 ** (-3.0 + 0.5 * i)) for i in range(19))

#: Relative tolerance under which two CV scores count as tied (ties → larger α).
CV_TIE_RTOL = 1e-12

GRIPPER_DIM = 6


def _as_2d_float64(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 1-D or 2-D, got shape {arr.shape}")
    return arr


def _is_constant(std: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Absolute constancy test shared by the scaler and the R² NaN rule.

    ``std < 1e-9 × (1 + |mean|)`` catches exactly constant columns whose rounding noise is
    1e-15..1e-12 (the absolute term of §1.4).
    """
    return std < 1e-9 * (1.0 + np.abs(mean))


# --------------------------------------------------------------------------------------
# PCA
# --------------------------------------------------------------------------------------


@dataclass
class PCA:
    """Deterministic PCA on unscaled, centred X (full SVD, sign-fixed components).

    ``identity`` is True when X had ≤ n_components columns: ``transform`` then returns X
    unchanged (as float64), no centring or rotation.
    """

    n_components: int
    n_features_in: int
    identity: bool
    mean: np.ndarray | None = None
    components: np.ndarray | None = None  # (k, d), rows orthonormal
    singular_values: np.ndarray | None = None  # (k,)
    explained_variance: np.ndarray | None = None  # (k,), population (÷ n)
    explained_variance_ratio: np.ndarray | None = None  # (k,), of total variance

    @property
    def n_components_out(self) -> int:
        return self.n_features_in if self.identity else int(self.components.shape[0])

    def transform(self, X: Any) -> np.ndarray:
        X = _as_2d_float64(X, "X")
        if X.shape[1] != self.n_features_in:
            raise ValueError(f"PCA fit on {self.n_features_in} columns, got {X.shape[1]}")
        if self.identity:
            return X
        return (X - self.mean) @ self.components.T


def _top_components_gram(Xc: np.ndarray, k: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Top-k right singular vectors of a wide centred X (n < d) from the n×n Gram matrix (several
    times faster than an SVD of X). Returns (None, None) when X has rank < k (the SVD path then
    supplies an orthonormal completion)."""
    w, U = np.linalg.eigh(Xc @ Xc.T)
    order = np.argsort(w)[::-1][:k]
    w = np.maximum(w[order], 0.0)
    s = np.sqrt(w)
    if s.size < k or s[-1] <= 1e-6 * max(float(s[0]), 1e-300):
        return None, None
    Vt = (U[:, order].T @ Xc) / s[:, None]
    return Vt, s


def fit_pca(X: Any, n_components: int) -> PCA:
    """Fit a deterministic PCA with ``n_components`` on unscaled X (centred only).

    Full (non-randomised) SVD in float64; for tall X the SVD is taken of the R factor of a
    QR decomposition of the centred X, which has the same singular values and right singular
    vectors. Each component's sign is fixed so that its entry of largest magnitude (first such
    index on ties) is positive, which makes the result independent of LAPACK sign choices.
    No-op (identity transform) when X has ≤ n_components columns.
    """
    X = _as_2d_float64(X, "X")
    n, d = X.shape
    n_components = int(n_components)
    if n_components < 1:
        raise ValueError("n_components must be ≥ 1")
    if d <= n_components:
        return PCA(n_components=n_components, n_features_in=d, identity=True)
    if n < 1:
        raise ValueError("cannot fit PCA on zero rows")
    mean = X.mean(axis=0)
    Xc = X - mean
    k = min(n_components, n, d)
    Vt, s = _top_components_gram(Xc, k) if n < d else (None, None)
    if Vt is None:
        if n > d:
            R = np.linalg.qr(Xc, mode="r")
            _, s, Vt = np.linalg.svd(R, full_matrices=False)
        else:
            _, s, Vt = np.linalg.svd(Xc, full_matrices=False)
        Vt = Vt[:k].copy()
        s = s[:k].copy()
    pivot = np.argmax(np.abs(Vt), axis=1)
    signs = np.sign(Vt[np.arange(k), pivot])
    signs[signs == 0] = 1.0
    Vt *= signs[:, None]
    total_var = float((Xc**2).sum() / n)
    ev = s**2 / n
    ratio = ev / total_var if total_var > 0 else np.zeros_like(ev)
    return PCA(
        n_components=n_components,
        n_features_in=d,
        identity=False,
        mean=mean,
        components=Vt,
        singular_values=s,
        explained_variance=ev,
        explained_variance_ratio=ratio,
    )


# --------------------------------------------------------------------------------------
# Standardisation
# --------------------------------------------------------------------------------------


@dataclass
class Standardizer:
    """Per-column standardisation with the §1.4 column-drop rule.

    A column is dropped when its (population) std is below
    ``max(1e-6 × max column std, 1e-9 × (1 + |column mean|))``.
    """

    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    keep: np.ndarray | None = None  # bool mask over input columns
    n_features_in: int = 0

    @property
    def n_dropped(self) -> int:
        return int(self.n_features_in - int(self.keep.sum()))

    @property
    def n_kept(self) -> int:
        return int(self.keep.sum())

    def fit(self, X: Any) -> "Standardizer":
        X = _as_2d_float64(X, "X")
        if X.shape[0] < 1:
            raise ValueError("cannot fit a Standardizer on zero rows")
        mean = X.mean(axis=0)
        std = X.std(axis=0)
        max_std = float(std.max()) if std.size else 0.0
        threshold = np.maximum(1e-6 * max_std, 1e-9 * (1.0 + np.abs(mean)))
        self.keep = ~(std < threshold)
        self.mean = mean
        self.scale = np.where(self.keep, std, 1.0)
        self.n_features_in = X.shape[1]
        return self

    def transform(self, X: Any) -> np.ndarray:
        X = _as_2d_float64(X, "X")
        if X.shape[1] != self.n_features_in:
            raise ValueError(f"Standardizer fit on {self.n_features_in} columns, got {X.shape[1]}")
        k = self.keep
        return (X[:, k] - self.mean[k]) / self.scale[k]

    def fit_transform(self, X: Any) -> np.ndarray:
        return self.fit(X).transform(X)


# --------------------------------------------------------------------------------------
# Ridge (closed form via SVD of the centred X)
# --------------------------------------------------------------------------------------


@dataclass
class RidgeModel:
    """Ridge solution ``ŷ = X @ coef + intercept`` (coef (p, k), intercept (k,))."""

    coef: np.ndarray
    intercept: np.ndarray
    alpha: float
    squeeze: bool = False  # Y was 1-D

    def predict(self, X: Any) -> np.ndarray:
        return ridge_predict(X, self)


class _RidgeSVD:
    """One SVD of the centred X serving every α (fit or prediction on new rows)."""

    def __init__(self, X: Any, Y: Any):
        X = _as_2d_float64(X, "X")
        Y = _as_2d_float64(Y, "Y")
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows, Y has {Y.shape[0]}")
        if X.shape[0] < 1:
            raise ValueError("cannot fit ridge on zero rows")
        self.x_mean = X.mean(axis=0)
        self.y_mean = Y.mean(axis=0)
        self.p = X.shape[1]
        Xc = X - self.x_mean
        Yc = Y - self.y_mean
        if self.p == 0:
            self.s = np.zeros(0)
            self.V = np.zeros((0, 0))
            self.UtY = np.zeros((0, Y.shape[1]))
        else:
            U, s, Vt = np.linalg.svd(Xc, full_matrices=False)
            self.s = s
            self.V = Vt.T
            self.UtY = U.T @ Yc

    def _shrink(self, alpha: float) -> np.ndarray:
        if alpha < 0 or not math.isfinite(alpha):
            raise ValueError(f"alpha must be finite and ≥ 0, got {alpha}")
        s = self.s
        denom = s**2 + alpha
        out = np.zeros_like(s)
        np.divide(s, denom, out=out, where=denom > 0)
        return out

    def coef(self, alpha: float) -> np.ndarray:
        return self.V @ (self._shrink(alpha)[:, None] * self.UtY)

    def model(self, alpha: float, squeeze: bool = False) -> RidgeModel:
        coef = self.coef(alpha)
        intercept = self.y_mean - self.x_mean @ coef
        return RidgeModel(coef=coef, intercept=intercept, alpha=float(alpha), squeeze=squeeze)

    def predict_path(self, X_new: Any, alphas: Sequence[float]) -> np.ndarray:
        """Predictions on new rows for every α: array (n_alpha, n_new, k)."""
        X_new = _as_2d_float64(X_new, "X")
        Z = (X_new - self.x_mean) @ self.V  # (n_new, r)
        out = np.empty((len(alphas), X_new.shape[0], self.UtY.shape[1]))
        for i, a in enumerate(alphas):
            out[i] = Z @ (self._shrink(float(a))[:, None] * self.UtY) + self.y_mean
        return out


def ridge_fit(X: Any, Y: Any, alpha: float) -> RidgeModel:
    """Ridge with intercept: argmin ‖Yc − Xc W‖² + α‖W‖², intercept = ȳ − x̄ W.

    Same objective as ``sklearn.linear_model.Ridge(alpha, fit_intercept=True)``.
    """
    squeeze = np.asarray(Y).ndim == 1
    return _RidgeSVD(X, Y).model(float(alpha), squeeze=squeeze)


def ridge_path(X: Any, Y: Any, alphas: Sequence[float] = ALPHA_GRID) -> list[RidgeModel]:
    """Ridge solutions for every α in ``alphas`` (same order) from a single SVD."""
    squeeze = np.asarray(Y).ndim == 1
    solver = _RidgeSVD(X, Y)
    return [solver.model(float(a), squeeze=squeeze) for a in alphas]


def ridge_predict(X: Any, model: RidgeModel) -> np.ndarray:
    X = _as_2d_float64(X, "X")
    if X.shape[1] != model.coef.shape[0]:
        raise ValueError(f"model has {model.coef.shape[0]} inputs, X has {X.shape[1]} columns")
    pred = X @ model.coef + model.intercept
    return pred[:, 0] if model.squeeze else pred


# --------------------------------------------------------------------------------------
# R² (§1.5)
# --------------------------------------------------------------------------------------


def r2_scores(y_true: Any, y_pred: Any) -> dict[str, Any]:
    """R² conventions of §1.5 on one pooled eval set, in the units given (original units).

    Returns ``r2_uniform`` (mean of per-dim R² over non-constant dims), ``r2_varweighted``
    (1 − ΣSSE/ΣSST over non-constant dims), ``r2_per_dim`` (list, NaN for constant dims),
    ``gripper_sign_acc`` (fraction with sign(ŷ_6) = sign(y_6); None without a dim 6),
    ``nan_dims`` (indices of constant target dims), ``n_frames``. A dim counts as constant
    when its population std < 1e-9 × (1 + |mean|) on this set. If every dim is constant both
    averages are NaN.
    """
    yt = _as_2d_float64(y_true, "y_true")
    yp = _as_2d_float64(y_pred, "y_pred")
    if yt.shape != yp.shape:
        raise ValueError(f"shape mismatch: y_true {yt.shape} vs y_pred {yp.shape}")
    n, k = yt.shape
    if n < 1:
        raise ValueError("r2_scores needs at least one frame")
    mean = yt.mean(axis=0)
    sst = ((yt - mean) ** 2).sum(axis=0)
    sse = ((yt - yp) ** 2).sum(axis=0)
    const = _is_constant(np.sqrt(sst / n), mean)
    per_dim = np.full(k, np.nan)
    ok = ~const
    per_dim[ok] = 1.0 - sse[ok] / sst[ok]
    if ok.any():
        r2_uniform = float(per_dim[ok].mean())
        r2_vw = float(1.0 - sse[ok].sum() / sst[ok].sum())
    else:
        r2_uniform = float("nan")
        r2_vw = float("nan")
    gripper = None
    if k > GRIPPER_DIM:
        gripper = float(np.mean(np.sign(yp[:, GRIPPER_DIM]) == np.sign(yt[:, GRIPPER_DIM])))
    return {
        "r2_uniform": r2_uniform,
        "r2_varweighted": r2_vw,
        "r2_per_dim": [float(v) for v in per_dim],
        "gripper_sign_acc": gripper,
        "nan_dims": [int(i) for i in np.flatnonzero(const)],
        "n_frames": int(n),
    }


# --------------------------------------------------------------------------------------
# α selection by grouped CV (§1.4)
# --------------------------------------------------------------------------------------


def grouped_folds(
    groups: Any, seed: int, n_splits: int = 5
) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """Folds from ``GroupKFold(n_splits, shuffle=True, random_state=seed)``.

    With fewer than ``n_splits`` distinct groups, n_splits is reduced to the number of groups
    (reported in the info dict). Fewer than 2 groups is an error (no held-out fold possible).
    """
    from sklearn.model_selection import GroupKFold

    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError("groups must be 1-D")
    n_groups = int(np.unique(groups).size)
    if n_groups < 2:
        raise ValueError(f"grouped CV needs ≥ 2 distinct groups, got {n_groups}")
    used = min(int(n_splits), n_groups)
    info: dict[str, Any] = {
        "n_splits_requested": int(n_splits),
        "n_splits": used,
        "n_groups": n_groups,
        "cv": f"GroupKFold(n_splits={used}, shuffle=True, random_state={int(seed)})",
        "note": None,
    }
    if used < n_splits:
        info["note"] = f"only {n_groups} groups: n_splits reduced from {n_splits} to {used} (leave-one-group-out)"
    if "shuffle" not in inspect.signature(GroupKFold.__init__).parameters:
        raise RuntimeError("GroupKFold(shuffle=True) needs scikit-learn >= 1.6")
    cv = GroupKFold(n_splits=used, shuffle=True, random_state=int(seed))
    dummy = np.zeros((groups.shape[0], 1))
    folds = [(np.asarray(tr), np.asarray(te)) for tr, te in cv.split(dummy, groups=groups)]
    return folds, info


def _y_stats(Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = Y.mean(axis=0)
    std = Y.std(axis=0)
    std = np.where(_is_constant(std, mean), 1.0, std)
    return mean, std


def _uniform_r2_path(y_true: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """Uniform R² (NaN rule of §1.5) of every α's prediction; preds (n_alpha, n, k)."""
    n = y_true.shape[0]
    mean = y_true.mean(axis=0)
    sst = ((y_true - mean) ** 2).sum(axis=0)
    ok = ~_is_constant(np.sqrt(sst / n), mean)
    if not ok.any():
        return np.full(preds.shape[0], np.nan)
    sse = ((preds - y_true[None]) ** 2).sum(axis=1)  # (n_alpha, k)
    return (1.0 - sse[:, ok] / sst[ok]).mean(axis=1)


def _pick_alpha(alphas: np.ndarray, scores: np.ndarray) -> int:
    """Index of the best score; ties (within CV_TIE_RTOL) → the largest α."""
    finite = np.isfinite(scores)
    if not finite.any():
        return int(np.argmax(alphas))
    best = float(np.max(scores[finite]))
    tol = CV_TIE_RTOL * max(1.0, abs(best))
    cand = np.flatnonzero(finite & (scores >= best - tol))
    return int(cand[np.argmax(alphas[cand])])


def select_alpha(
    X: Any,
    Y: Any,
    groups: Any,
    seed: int,
    alphas: Sequence[float] = ALPHA_GRID,
    n_splits: int = 5,
) -> tuple[float, dict[str, Any], bool]:
    """Choose α by grouped K-fold CV on probe-train (§1.4).

    X must already be the ridge input (PCA'd and standardised with all-probe-train fits, as
    §1.3 prescribes); it is used unchanged inside the folds. Y (original units) is standardised
    with the statistics of all of the given Y (probe-train), the ridge is fit in standardised
    Y, predictions are mapped back, and each held-out fold is scored by the uniform R² in
    original units with the NaN rule. Score(α) = mean over folds (folds whose targets are all
    constant are skipped). Ties → larger α.

    Returns ``(alpha, cv_curve, on_grid_edge)``; ``cv_curve`` is a dict with ``alphas``,
    ``mean_r2`` (per α), ``fold_r2`` (per fold, per α), ``best_r2`` and the fold info
    (``n_splits``, ``n_groups``, ``note`` — set when n_splits had to be reduced).
    """
    return select_alpha_many(X, [Y], groups, seed, alphas=alphas, n_splits=n_splits)[0]


def select_alpha_many(
    X: Any,
    Ys: Sequence[Any],
    groups: Any,
    seed: int,
    alphas: Sequence[float] = ALPHA_GRID,
    n_splits: int = 5,
) -> list[tuple[float, dict[str, Any], bool]]:
    """`select_alpha` for several targets of the same X (e.g. the labels and their shuffle): one SVD per fold."""
    X = _as_2d_float64(X, "X")
    Ys = [_as_2d_float64(Y, "Y") for Y in Ys]
    alphas_arr = np.asarray(list(alphas), dtype=np.float64)
    if alphas_arr.size == 0:
        raise ValueError("empty α grid")
    if any(X.shape[0] != Y.shape[0] for Y in Ys) or X.shape[0] != np.asarray(groups).shape[0]:
        raise ValueError("X, Y and groups must have the same number of rows")
    folds, info = grouped_folds(groups, seed, n_splits)
    stats = [_y_stats(Y) for Y in Ys]
    Ystack = np.concatenate([(Y - m) / s for Y, (m, s) in zip(Ys, stats)], axis=1)
    widths = np.cumsum([0] + [Y.shape[1] for Y in Ys])
    fold_scores = np.full((len(Ys), len(folds), alphas_arr.size), np.nan)
    for f, (tr, te) in enumerate(folds):
        path = _RidgeSVD(X[tr], Ystack[tr]).predict_path(X[te], alphas_arr)
        for j, (Y, (m, s)) in enumerate(zip(Ys, stats)):
            fold_scores[j, f] = _uniform_r2_path(Y[te], path[:, :, widths[j] : widths[j + 1]] * s + m)
    out = []
    for j in range(len(Ys)):
        valid_folds = np.isfinite(fold_scores[j]).all(axis=1)
        if valid_folds.any():
            mean_scores = fold_scores[j][valid_folds].mean(axis=0)
        else:
            mean_scores = np.full(alphas_arr.size, np.nan)
        idx = _pick_alpha(alphas_arr, mean_scores)
        alpha = float(alphas_arr[idx])
        on_edge = bool(alpha == alphas_arr.min() or alpha == alphas_arr.max())
        curve = {
            "alphas": [float(a) for a in alphas_arr],
            "mean_r2": [float(v) for v in mean_scores],
            "fold_r2": [[float(v) for v in row] for row in fold_scores[j]],
            "best_r2": float(mean_scores[idx]),
            "n_valid_folds": int(valid_folds.sum()),
            "tie_rtol": CV_TIE_RTOL,
            **info,
        }
        if not valid_folds.any():
            curve["note"] = ((curve["note"] + "; ") if curve["note"] else "") + (
                "no fold had a non-constant target: α defaulted to the largest grid value"
            )
        out.append((alpha, curve, on_edge))
    return out


# --------------------------------------------------------------------------------------
# Full probe: PCA → standardise → CV α → refit (§1.3/§1.4)
# --------------------------------------------------------------------------------------


@dataclass
class LinearProbe:
    """Fitted probe: PCA (optional) → Standardizer → ridge in standardised Y."""

    pca: PCA | None = None
    scaler: Standardizer | None = None
    ridge: RidgeModel | None = None
    y_mean: np.ndarray | None = None
    y_std: np.ndarray | None = None
    alpha: float | None = None
    cv_curve: dict[str, Any] = field(default_factory=dict)
    alpha_on_grid_edge: bool = False
    n_features_in: int = 0

    def fit(
        self,
        X: Any,
        Y: Any,
        groups: Any,
        seed: int,
        pca_components: int | None = None,
        alphas: Sequence[float] = ALPHA_GRID,
        n_splits: int = 5,
    ) -> "LinearProbe":
        X = _as_2d_float64(X, "X_train")
        Y = _as_2d_float64(Y, "Y_train")
        self.n_features_in = X.shape[1]
        self.pca = fit_pca(X, pca_components) if pca_components is not None else None
        Xp = self.pca.transform(X) if self.pca is not None else X
        self.scaler = Standardizer().fit(Xp)
        Xs = self.scaler.transform(Xp)
        self.alpha, self.cv_curve, self.alpha_on_grid_edge = select_alpha(
            Xs, Y, groups, seed, alphas=alphas, n_splits=n_splits
        )
        self.y_mean, self.y_std = _y_stats(Y)
        self.ridge = ridge_fit(Xs, (Y - self.y_mean) / self.y_std, self.alpha)
        return self

    def features(self, X: Any) -> np.ndarray:
        """The ridge input for raw X (PCA → standardise with the probe-train fits)."""
        X = _as_2d_float64(X, "X")
        Xp = self.pca.transform(X) if self.pca is not None else X
        return self.scaler.transform(Xp)

    def predict(self, X: Any) -> np.ndarray:
        """Predictions in original action units."""
        return ridge_predict(self.features(X), self.ridge) * self.y_std + self.y_mean


def run_probe(
    X_train: Any,
    Y_train: Any,
    groups_train: Any,
    eval_sets: Mapping[str, tuple[Any, Any]],
    seed: int,
    pca_components: int | None = None,
    alphas: Sequence[float] = ALPHA_GRID,
    n_splits: int = 5,
    return_predictions: bool = False,
) -> dict[str, Any]:
    """Fit the probe on probe-train and score every eval set (§1.3 order, §1.4, §1.5).

    Returns a dict with ``alpha``, ``cv_curve``, ``alpha_on_grid_edge``, ``cv_r2`` (grouped-CV
    uniform R² at the chosen α), ``n_frames`` (train frames), ``n_features_raw``,
    ``n_features_pca`` (None without PCA), ``n_dropped_columns``, ``n_features_used``,
    ``pca_explained_variance_ratio`` (sum, None without PCA), ``train_in_sample`` (r2 dict of
    the refit model on probe-train) and ``eval`` = {name: r2 dict}. With
    ``return_predictions`` it also holds ``predictions`` = {name: ndarray (n, k)} in original
    units (for cluster bootstraps downstream).
    """
    X_train = _as_2d_float64(X_train, "X_train")
    Y_train = _as_2d_float64(Y_train, "Y_train")
    probe = LinearProbe().fit(
        X_train, Y_train, groups_train, seed, pca_components=pca_components, alphas=alphas, n_splits=n_splits
    )
    out: dict[str, Any] = {
        "alpha": probe.alpha,
        "cv_curve": probe.cv_curve,
        "alpha_on_grid_edge": probe.alpha_on_grid_edge,
        "cv_r2": probe.cv_curve["best_r2"],
        "n_frames": int(X_train.shape[0]),
        "n_groups": probe.cv_curve["n_groups"],
        "n_features_raw": int(X_train.shape[1]),
        "n_features_pca": None if probe.pca is None else probe.pca.n_components_out,
        "pca_identity": None if probe.pca is None else bool(probe.pca.identity),
        "pca_explained_variance_ratio": (
            None if probe.pca is None or probe.pca.identity else float(np.sum(probe.pca.explained_variance_ratio))
        ),
        "n_dropped_columns": probe.scaler.n_dropped,
        "n_features_used": probe.scaler.n_kept,
        "seed": int(seed),
        "train_in_sample": r2_scores(Y_train, probe.predict(X_train)),
        "eval": {},
    }
    preds: dict[str, np.ndarray] = {}
    for name, (X_e, Y_e) in eval_sets.items():
        Y_e = _as_2d_float64(Y_e, f"Y[{name}]")
        pred = probe.predict(X_e)
        out["eval"][name] = r2_scores(Y_e, pred)
        if return_predictions:
            preds[name] = pred
    if return_predictions:
        out["predictions"] = preds
    return out


# --------------------------------------------------------------------------------------
# Controls (§1.8)
# --------------------------------------------------------------------------------------


def train_mean_r2(Y_train: Any, Y_eval: Any) -> dict[str, Any]:
    """``train_mean`` control: ŷ = probe-train mean on every eval frame, scored by r2_scores."""
    Y_train = _as_2d_float64(Y_train, "Y_train")
    Y_eval = _as_2d_float64(Y_eval, "Y_eval")
    pred = np.broadcast_to(Y_train.mean(axis=0), Y_eval.shape)
    return r2_scores(Y_eval, pred)


def train_mean_r2_analytic(Y_train: Any, Y_eval: Any) -> float:
    """Analytic value of the train_mean control: −mean_d δ_d², δ_d = (μ_E − μ_tr)/σ_E.

    σ_E is the population std of the eval set; constant eval dims are excluded (NaN rule).
    """
    Y_train = _as_2d_float64(Y_train, "Y_train")
    Y_eval = _as_2d_float64(Y_eval, "Y_eval")
    mu_e = Y_eval.mean(axis=0)
    sd_e = Y_eval.std(axis=0)
    ok = ~_is_constant(sd_e, mu_e)
    if not ok.any():
        return float("nan")
    delta = (mu_e[ok] - Y_train.mean(axis=0)[ok]) / sd_e[ok]
    return float(-np.mean(delta**2))
