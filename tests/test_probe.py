"""Tests for the numerical core of the linear action probe (evaluation.md §1.3–§1.5, §1.8)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

from dreamer4_libero.evaluation.probe import (
    ALPHA_GRID,
    Standardizer,
    fit_pca,
    grouped_folds,
    r2_scores,
    ridge_fit,
    ridge_path,
    run_probe,
    select_alpha,
    train_mean_r2,
    train_mean_r2_analytic,
)


def test_alpha_grid():
    assert len(ALPHA_GRID) == 19
    ks = np.log10(ALPHA_GRID)
    np.testing.assert_allclose(ks, np.arange(-3.0, 6.01, 0.5), atol=1e-12)
    assert ALPHA_GRID[0] == pytest.approx(1e-3) and ALPHA_GRID[-1] == pytest.approx(1e6)


# ---------------------------------------------------------------- ridge


@pytest.mark.parametrize("shape", [(80, 12, 7), (30, 50, 3), (40, 5, 1)])
@pytest.mark.parametrize("alpha", [1e-3, 1.0, 3162.2776601683795])
def test_ridge_fit_matches_sklearn(shape, alpha):
    n, p, k = shape
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, p)) * rng.uniform(0.1, 5, size=p) + rng.normal(size=p)
    Y = X @ rng.normal(size=(p, k)) + rng.normal(size=(n, k)) + 3.0
    m = ridge_fit(X, Y, alpha)
    Xn = rng.normal(size=(10, p))
    for solver in ("auto", "svd"):
        ref = Ridge(alpha=alpha, fit_intercept=True, solver=solver).fit(X, Y)
        np.testing.assert_allclose(m.coef, ref.coef_.reshape(k, p).T, atol=1e-8, rtol=0)
        np.testing.assert_allclose(m.intercept, np.reshape(ref.intercept_, k), atol=1e-8, rtol=0)
        np.testing.assert_allclose(m.predict(Xn), ref.predict(Xn).reshape(10, k), atol=1e-8, rtol=0)


def test_ridge_fit_1d_target():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 4))
    y = X @ np.arange(1.0, 5.0) + 0.5
    m = ridge_fit(X, y, 0.1)
    ref = Ridge(alpha=0.1).fit(X, y)
    assert m.predict(X).shape == (50,)
    np.testing.assert_allclose(m.predict(X), ref.predict(X), atol=1e-8)


def test_ridge_path_equals_ridge_fit():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(60, 9))
    Y = rng.normal(size=(60, 7))
    path = ridge_path(X, Y, ALPHA_GRID)
    assert len(path) == len(ALPHA_GRID)
    for a, m in zip(ALPHA_GRID, path):
        single = ridge_fit(X, Y, a)
        assert m.alpha == a
        np.testing.assert_allclose(m.coef, single.coef, atol=1e-12, rtol=0)
        np.testing.assert_allclose(m.intercept, single.intercept, atol=1e-12, rtol=0)


def test_ridge_no_features_predicts_mean():
    Y = np.arange(20.0).reshape(10, 2)
    m = ridge_fit(np.zeros((10, 0)), Y, 1.0)
    np.testing.assert_allclose(m.predict(np.zeros((3, 0))), np.tile(Y.mean(0), (3, 1)))


# ---------------------------------------------------------------- R²


def test_r2_matches_sklearn():
    rng = np.random.default_rng(3)
    yt = rng.normal(size=(200, 7)) * np.array([0.5, 0.4, 0.3, 0.1, 0.1, 0.1, 1.0])
    yt[:, 6] = np.sign(yt[:, 6])
    yp = yt + rng.normal(size=yt.shape) * 0.3
    r = r2_scores(yt, yp)
    assert r["r2_uniform"] == pytest.approx(r2_score(yt, yp), abs=1e-12)
    assert r["r2_varweighted"] == pytest.approx(r2_score(yt, yp, multioutput="variance_weighted"), abs=1e-12)
    np.testing.assert_allclose(r["r2_per_dim"], r2_score(yt, yp, multioutput="raw_values"), atol=1e-12)
    assert r["nan_dims"] == []
    assert r["gripper_sign_acc"] == pytest.approx(np.mean(np.sign(yp[:, 6]) == yt[:, 6]))
    assert r["n_frames"] == 200


def test_r2_constant_dim_is_nan_and_flagged():
    rng = np.random.default_rng(4)
    yt = rng.normal(size=(100, 3))
    yt[:, 1] = 0.1  # constant (mean has rounding noise)
    yp = yt + rng.normal(size=yt.shape) * 0.5
    r = r2_scores(yt, yp)
    assert math.isnan(r["r2_per_dim"][1])
    assert r["nan_dims"] == [1]
    ok = [0, 2]
    expected = r2_score(yt[:, ok], yp[:, ok])
    assert r["r2_uniform"] == pytest.approx(expected, abs=1e-12)
    assert r["r2_varweighted"] == pytest.approx(
        r2_score(yt[:, ok], yp[:, ok], multioutput="variance_weighted"), abs=1e-12
    )
    assert r["gripper_sign_acc"] is None  # no dim 6


def test_r2_all_constant_gives_nan():
    r = r2_scores(np.ones((5, 2)), np.zeros((5, 2)))
    assert math.isnan(r["r2_uniform"]) and math.isnan(r["r2_varweighted"])
    assert r["nan_dims"] == [0, 1]


# ---------------------------------------------------------------- train-mean control


def test_train_mean_is_minus_mean_delta_squared():
    rng = np.random.default_rng(5)
    Ytr = rng.normal(size=(500, 7))
    Yev = rng.normal(size=(300, 7)) * rng.uniform(0.5, 2, size=7) + rng.normal(size=7) * 0.4
    delta = (Yev.mean(0) - Ytr.mean(0)) / Yev.std(0)  # population std
    expected = -np.mean(delta**2)
    r = train_mean_r2(Ytr, Yev)
    assert r["r2_uniform"] == pytest.approx(expected, abs=1e-12)
    assert train_mean_r2_analytic(Ytr, Yev) == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(r["r2_per_dim"], -(delta**2), atol=1e-12)
    assert r["r2_uniform"] < 0


# ---------------------------------------------------------------- PCA / standardiser


def test_pca_deterministic_and_orthonormal():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(300, 40)) @ rng.normal(size=(40, 40)) + 5.0
    a = fit_pca(X, 10)
    b = fit_pca(X.copy(), 10)
    np.testing.assert_array_equal(a.components, b.components)
    np.testing.assert_array_equal(a.transform(X), b.transform(X))
    np.testing.assert_allclose(a.components @ a.components.T, np.eye(10), atol=1e-10)
    # sign convention: largest-|.| entry of each component is positive
    piv = np.argmax(np.abs(a.components), axis=1)
    assert np.all(a.components[np.arange(10), piv] > 0)
    # same subspace / variances as a direct SVD of the centred data
    s = np.linalg.svd(X - X.mean(0), compute_uv=False)
    np.testing.assert_allclose(a.singular_values, s[:10], rtol=1e-10)
    Z = a.transform(X)
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(Z.var(0), s[:10] ** 2 / 300, rtol=1e-9)
    # wide case (n < d) also works
    W = rng.normal(size=(20, 60))
    w = fit_pca(W, 8)
    assert w.transform(W).shape == (20, 8)


def test_pca_noop_when_few_columns():
    X = np.random.default_rng(7).normal(size=(50, 6))
    p = fit_pca(X, 6)
    assert p.identity
    np.testing.assert_array_equal(p.transform(X), X)


def test_standardizer_drops_exactly_constant_columns():
    rng = np.random.default_rng(8)
    X = rng.normal(size=(200, 6))
    X[:, 1] = 0.3  # constant, mean carries rounding noise
    X[:, 4] = 1e6  # large constant
    X[:, 5] *= 1e-3  # small but genuine variation: kept
    s = Standardizer().fit(X)
    assert s.n_dropped == 2
    assert list(np.flatnonzero(~s.keep)) == [1, 4]
    Z = s.transform(X)
    assert Z.shape == (200, 4)
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(Z.std(0), 1, atol=1e-12)


def test_standardizer_relative_rule():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(100, 2))
    X[:, 1] *= 1e-8  # < 1e-6 × max std → dropped
    assert Standardizer().fit(X).n_dropped == 1


# ---------------------------------------------------------------- α selection


def _grouped_linear(rng, n_groups=20, per_group=30, p=8, k=3, noise=0.0, task_offset=0.0):
    groups = np.repeat(np.arange(n_groups), per_group)
    X = rng.normal(size=(groups.size, p)) + task_offset * rng.normal(size=(n_groups, p))[groups]
    W = rng.normal(size=(p, k))
    Y = X @ W + noise * rng.normal(size=(groups.size, k))
    return X, Y, groups, W


def test_select_alpha_noiseless_picks_small():
    rng = np.random.default_rng(10)
    X, Y, g, _ = _grouped_linear(rng)
    alpha, curve, edge = select_alpha(X, Y, g, seed=0)
    assert alpha == ALPHA_GRID[0] and edge
    assert curve["best_r2"] > 0.999
    assert curve["n_splits"] == 5 and curve["note"] is None
    assert len(curve["mean_r2"]) == 19 and len(curve["fold_r2"]) == 5


def test_select_alpha_pure_noise_picks_large():
    rng = np.random.default_rng(11)
    g = np.repeat(np.arange(20), 20)
    X = rng.normal(size=(g.size, 30))
    Y = rng.normal(size=(g.size, 4))
    alpha, curve, _ = select_alpha(X, Y, g, seed=1)
    assert alpha >= 1e3
    assert curve["best_r2"] <= 0.01


def test_select_alpha_ties_go_to_larger_alpha():
    rng = np.random.default_rng(12)
    g = np.repeat(np.arange(10), 10)
    Y = rng.normal(size=(100, 2))
    for X in (np.zeros((100, 3)), np.zeros((100, 0))):  # every α predicts the same
        for grid in (ALPHA_GRID, ALPHA_GRID[::-1], (1.0, 10.0, 0.1)):
            alpha, curve, edge = select_alpha(X, Y, g, seed=0, alphas=grid)
            assert alpha == max(grid) and edge
            assert len(set(curve["mean_r2"])) == 1


def test_select_alpha_few_groups_reduces_splits():
    rng = np.random.default_rng(13)
    X, Y, g, _ = _grouped_linear(rng, n_groups=3, per_group=20)
    alpha, curve, _ = select_alpha(X, Y, g, seed=0)
    assert curve["n_splits"] == 3 and curve["n_groups"] == 3
    assert "reduced" in curve["note"]
    with pytest.raises(ValueError):
        select_alpha(X, Y, np.zeros(len(g)), seed=0)


def test_grouped_folds_are_group_disjoint_and_seeded():
    g = np.repeat(np.arange(12), 7)
    f0, info = grouped_folds(g, seed=0)
    assert info["n_splits"] == 5
    seen = np.concatenate([te for _, te in f0])
    assert sorted(seen) == list(range(g.size))
    for tr, te in f0:
        assert not set(g[tr]) & set(g[te])
    f0b, _ = grouped_folds(g, seed=0)
    f1, _ = grouped_folds(g, seed=1)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(f0, f0b))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(f0, f1))


def test_select_alpha_nan_rule_inside_folds():
    # one target dim constant everywhere: scores stay finite (dim excluded, not 0/1)
    rng = np.random.default_rng(14)
    X, Y, g, _ = _grouped_linear(rng, k=2, noise=0.1)
    Y = np.column_stack([Y, np.full(len(g), -1.0)])
    alpha, curve, _ = select_alpha(X, Y, g, seed=0)
    assert np.all(np.isfinite(curve["mean_r2"]))
    assert curve["best_r2"] > 0.9


# ---------------------------------------------------------------- run_probe


def _task_problem(rng, n_tasks, eps_per_task=4, frames=25, p=16, W=None, signal=True):
    """Grouped synthetic data: task-dependent feature offsets, linear action readout."""
    task = np.repeat(np.arange(n_tasks), eps_per_task * frames)
    episode = np.repeat(np.arange(n_tasks * eps_per_task), frames)
    X = rng.normal(size=(task.size, p)) + 0.5 * rng.normal(size=(n_tasks, p))[task]
    Y = X @ W + 0.1 * rng.normal(size=(task.size, W.shape[1]))
    if not signal:
        X = rng.normal(size=X.shape)
    return X, Y, task, episode


def test_run_probe_recovers_linear_signal_on_heldout_groups():
    rng = np.random.default_rng(15)
    W = rng.normal(size=(16, 7)) * 0.3
    Xtr, Ytr, gtr, _ = _task_problem(rng, 12, W=W)
    Xte, Yte, _, _ = _task_problem(rng, 5, W=W)
    res = run_probe(Xtr, Ytr, gtr, {"test": (Xte, Yte)}, seed=0, return_predictions=True)
    assert res["eval"]["test"]["r2_uniform"] > 0.9
    assert res["eval"]["test"]["r2_varweighted"] > 0.9
    assert res["n_frames"] == Xtr.shape[0]
    assert res["n_dropped_columns"] == 0 and res["n_features_used"] == 16
    assert res["alpha"] in ALPHA_GRID
    assert res["predictions"]["test"].shape == Yte.shape
    assert res["cv_r2"] > 0.9


def test_run_probe_pure_noise_is_not_positive():
    rng = np.random.default_rng(16)
    W = rng.normal(size=(16, 7)) * 0.3
    Xtr, Ytr, gtr, _ = _task_problem(rng, 12, W=W, signal=False)
    Xte, Yte, _, _ = _task_problem(rng, 5, W=W, signal=False)
    res = run_probe(Xtr, Ytr, gtr, {"test": (Xte, Yte)}, seed=0)
    r = res["eval"]["test"]["r2_uniform"]
    assert r <= 0.02
    # close to the train-mean control (ridge shrinks to the intercept)
    assert abs(r - train_mean_r2(Ytr, Yte)["r2_uniform"]) < 0.05
    assert res["alpha"] >= 1e2


def test_run_probe_with_pca_and_constant_columns():
    rng = np.random.default_rng(17)
    W = rng.normal(size=(16, 7)) * 0.3
    Xtr, Ytr, gtr, etr = _task_problem(rng, 10, W=W)
    Xte, Yte, _, _ = _task_problem(rng, 4, W=W)
    # embed in a higher-dimensional space with a constant block; PCA to 20 keeps the signal
    M = rng.normal(size=(16, 60))

    def lift(X):
        Z = X @ M
        return np.column_stack([Z, np.full((len(X), 5), 2.0)])

    res = run_probe(
        lift(Xtr), Ytr, etr, {"test": (lift(Xte), Yte), "train": (lift(Xtr), Ytr)}, seed=3, pca_components=20
    )
    assert res["n_features_raw"] == 65 and res["n_features_pca"] == 20
    # rank-16 data: the trailing PCA columns are numerically zero and get dropped
    assert res["n_dropped_columns"] == 4 and res["n_features_used"] == 16
    assert res["eval"]["test"]["r2_uniform"] > 0.9
    # deterministic: rerun gives identical numbers
    res2 = run_probe(lift(Xtr), Ytr, etr, {"test": (lift(Xte), Yte)}, seed=3, pca_components=20)
    assert res2["eval"]["test"] == res["eval"]["test"]
    assert res2["alpha"] == res["alpha"]
