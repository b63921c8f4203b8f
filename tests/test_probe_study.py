"""Probe stage (evaluation.md §0-§1): time alignment, world-model feature extraction without leakage,
leak tests, the inert agent token, records (controls, scorings, bootstrap CIs, flags) and the CLI.

Everything runs on the conftest's synthetic LIBERO data with tiny models; BLAS and torch use one
thread (a shared 2-core machine: multi-threaded OpenBLAS SVDs were ~5x slower there).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import threadpoolctl
import torch

from dreamer4_libero.data.loader import episode_list, model_frames
from dreamer4_libero.data.shards import ShardStore, parse_episode_id
from dreamer4_libero.evaluation.bootstrap import percentile_ci, r2_replicates, r2_uniform_from_stats
from dreamer4_libero.evaluation.diagnostics import degeneracy
from dreamer4_libero.evaluation.features import (
    FeatureSet,
    baseline_feature_sets,
    copy_prev_prediction,
    lagged_actions,
    probe_targets,
    readout_frame,
    readout_window,
    valid_targets,
    window_plan,
    window_position,
)
from dreamer4_libero.evaluation.leak_tests import run_leak_tests
from dreamer4_libero.evaluation.probe import Standardizer
from dreamer4_libero.evaluation.probe_study import (
    FeatureGroup,
    FeatureTable,
    ProbeLists,
    cross_record_flags,
    load_probe_lists,
    probe_record,
    record_name,
    run_study,
)
from dreamer4_libero.evaluation.wm_features import WorldModelFeatures, window_jobs
from dreamer4_libero.fileio import read_json, sha256_file
from dreamer4_libero.models.dynamics import Dynamics, DynamicsConfig, pack_latents
from dreamer4_libero.models.upstream import load_frozen_tokenizer

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "workflow_scripts" / "probe.py"
RES = 32  # tiny tokenizer's frame size (conftest) = test config's model_resolution
PIX_CLI = 16  # the CLI test's pixel resolution (smaller PCAs; the in-process study keeps RES)
C = 12  # world-model context window in these tests (episodes have 40-64 frames)
PACKING = 2  # tiny tokenizer: 4 latents x 8 -> 2 packed spatial tokens x 16
TOL = 1e-6


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpoolctl.threadpool_limits(1):
        yield
    torch.set_num_threads(n)


def _raw(T: int, dims: int = 7) -> np.ndarray:
    """raw[k, d] = 100 k + d: every entry names its own row."""
    return 100.0 * np.arange(T)[:, None] + np.arange(dims)[None]


# =============================================================================================
# 1. time alignment
# =============================================================================================


@pytest.mark.parametrize("H", [1, 2, 4])
def test_targets_and_labels_are_raw_t_plus_H(H):
    T = 10
    raw = _raw(T)
    np.testing.assert_array_equal(valid_targets(T, H), np.arange(T - H))  # 0 <= t <= T-1-H
    t, y = probe_targets(raw, H)
    np.testing.assert_array_equal(t, np.arange(T - H))
    np.testing.assert_array_equal(y, raw[t + H])  # a_{t+H-1} = raw[t+H]
    np.testing.assert_array_equal(y[:, 0], 100.0 * (np.arange(T - H) + H))
    assert y.dtype == np.float64
    assert valid_targets(3, 4).size == 0 and probe_targets(_raw(3), 4)[1].shape == (0, 7)


def test_readout_frame_is_plus_one_in_idm():
    t = np.array([0, 3, 7])
    np.testing.assert_array_equal(readout_frame(t, "policy"), [0, 3, 7])
    np.testing.assert_array_equal(readout_frame(t, "idm"), [1, 4, 8])
    with pytest.raises(ValueError):
        readout_frame(t, "oracle")


def test_lagged_actions_values_and_validity_bits():
    raw = _raw(8)
    t = np.array([0, 1, 3, 5])
    X = lagged_actions(raw, t)
    assert X.shape == (4, 4 * 8)
    lag = lambda row, k: X[row, (k - 1) * 8 : (k - 1) * 8 + 7]  # noqa: E731
    bit = lambda row, k: X[row, (k - 1) * 8 + 7]  # noqa: E731
    # t = 0: nothing before a_0 -> zeros, bits 0 (raw[0] would be "a_{-1}", which does not exist)
    assert not X[0].any()
    # t = 1: a_0 = raw[1] only
    np.testing.assert_array_equal(lag(1, 1), raw[1])
    assert bit(1, 1) == 1 and [bit(1, k) for k in (2, 3, 4)] == [0, 0, 0]
    assert not np.concatenate([lag(1, k) for k in (2, 3, 4)]).any()
    # t = 3: a_2, a_1, a_0 = raw[3], raw[2], raw[1]; a_{-1} unavailable even though raw[0] exists
    for k, r in ((1, 3), (2, 2), (3, 1)):
        np.testing.assert_array_equal(lag(2, k), raw[r])
        assert bit(2, k) == 1
    assert bit(2, 4) == 0 and not lag(2, 4).any()
    # t = 5: a_4..a_1 = raw[5], raw[4], raw[3], raw[2]
    for k in (1, 2, 3, 4):
        np.testing.assert_array_equal(lag(3, k), raw[5 - k + 1])
        assert bit(3, k) == 1


def test_copy_prev_is_previous_action_with_train_mean_at_t0():
    raw = _raw(6)
    fb = np.full(7, -1.5)
    p = copy_prev_prediction(raw, np.array([0, 1, 4]), fb)
    np.testing.assert_array_equal(p[0], fb)  # a_{-1} unavailable
    np.testing.assert_array_equal(p[1], raw[1])  # a_0 = raw[1]
    np.testing.assert_array_equal(p[2], raw[4])  # a_3 = raw[4]


def test_window_plan_examples():
    assert window_plan(40, 32) == [0, 8]
    assert window_plan(64, 32) == [0, 16, 32]
    assert window_plan(70, 32) == [0, 16, 32, 38]
    assert window_plan(33, 32) == [0, 1]
    assert window_plan(32, 32) == [0] and window_plan(20, 32) == [0] and window_plan(1, 32) == [0]
    assert window_plan(12, 4) == [0, 2, 4, 6, 8]
    assert window_plan(13, 5) == [0, 2, 4, 6, 8]  # stride 5 // 2 = 2
    assert window_plan(14, 5) == [0, 2, 4, 6, 8, 9]


@pytest.mark.parametrize("Cw", [2, 3, 4, 7, 8, 12, 32])
def test_window_plan_and_readout_window_properties(Cw):
    for T in range(1, 90):
        st = window_plan(T, Cw)
        if T <= Cw:
            assert st == [0]
        else:
            assert st[0] == 0 and st[-1] == T - Cw  # last window aligned to the end
            d = np.diff(st)
            assert (d > 0).all() and (d[:-1] == Cw // 2).all() and d[-1] <= Cw // 2
        for b in range(T):
            s = readout_window(b, st, Cw)
            holding = [w for w in st if w <= b < w + Cw]
            assert s == min(holding)  # most preceding context
            assert b - s >= min(b, Cw / 2)  # >= C/2 context, or all of it
        np.testing.assert_array_equal(
            window_position(np.arange(T), "policy", T, Cw), [b - readout_window(b, st, Cw) for b in range(T)]
        )
    with pytest.raises(ValueError):
        readout_window(50, window_plan(40, Cw), Cw)


# =============================================================================================
# 2. world-model features
# =============================================================================================


def _dyn(space_mode: str = "wm_agent", seed: int = 0, action_scale: float = 30.0) -> Dynamics:
    """Fresh tiny Dynamics; the action MLP output is scaled up so the past-action pathway is clearly visible
    (fresh init: a_{t-1} moves idm features by only ~1e-5, too close to the 1e-6 tolerance)."""
    torch.manual_seed(seed)
    m = Dynamics(DynamicsConfig(d_model=32, depth=2, n_heads=2, n_spatial=2, d_spatial=16, space_mode=space_mode))
    with torch.no_grad():
        m.action_encoder.fc2.weight.mul_(action_scale)
        m.action_encoder.fc2.bias.mul_(action_scale)
    return m.eval()


class PixelProjTokenizer(torch.nn.Module):
    """Stand-in encoder whose latents carry the frame content: a fixed random projection of the pixels.

    The conftest's random tiny tokenizer gives latents that are almost a function of the window position
    only (variance across episodes ~1e-4 of the variance over time), so every feature of a world model on
    top of it is nearly episode-independent; this one makes the world model's input episode-specific.
    """

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("P", torch.randn(3 * RES * RES, 32, generator=g) * (8 / (3 * RES * RES) ** 0.5))

    def encode(self, frames, mae=False):
        return ((frames.flatten(2) - 0.25) @ self.P).reshape(*frames.shape[:2], 4, 8)


@pytest.fixture(scope="module")
def wm_env(preprocessed, tiny_tokenizer_ckpt):
    tok, _ = load_frozen_tokenizer(str(tiny_tokenizer_ckpt))
    store = ShardStore(preprocessed / "manifest.json")
    test_eps = sorted(episode_list(preprocessed / "splits" / "probe" / "seed0" / "probe_eval_test.json"))
    by_task = {}
    for e in test_eps:
        by_task.setdefault(parse_episode_id(e)[0], e)
    eps = list(by_task.values())[:3]
    assert len(eps) == 3
    episodes = {e: store.episode(e) for e in eps}
    return {"tok": {"tiny": tok, "pix": PixelProjTokenizer().eval()}, "store": store, "eps": eps, "episodes": episodes}


def _wm(env, space_mode="wm_agent", batch=16, tok="tiny"):
    return WorldModelFeatures(env["tok"][tok], _dyn(space_mode), packing=PACKING, window=C, resolution=RES, batch=batch)


@torch.no_grad()
def _direct(tok, dyn, frames, raw, start, stop, *, null_last=False, video_only=False):
    """A hand-built window o_start..o_{stop-1}: block j carries raw[start+j] (j >= 1), block 0 the null token."""
    L = stop - start
    x = torch.from_numpy(model_frames(np.asarray(frames[start:stop]), RES))[None]
    z = pack_latents(tok.encode(x, mae=False).float(), PACKING)
    act = torch.zeros(1, L, 16)
    mask = torch.zeros(1, L, 16)
    if not video_only:
        for j in range(1, L):
            act[0, j, :7] = torch.tensor(np.asarray(raw[start + j], np.float32))
            mask[0, j, :7] = 1.0
    if null_last:
        act[0, -1] = 0.0
        mask[0, -1] = 0.0
    step = torch.full((1, L), dyn.cfg.emax, dtype=torch.long)
    sig = torch.full((1, L), dyn.cfg.k_max - 1, dtype=torch.long)
    _, h_ag, h_sp = dyn(act, step, sig, z, act_mask=mask, return_spatial=True)
    return h_ag[0].flatten(1).double().numpy(), h_sp[0].mean(1).double().numpy()


def test_window_jobs_one_pass_per_window_or_per_target():
    T = 40
    t = valid_targets(T, 1)
    starts = window_plan(T, C)
    jobs = window_jobs(T, t, "policy", "past_actions", C)
    assert [j[0] for j in jobs] == sorted({readout_window(int(b), starts, C) for b in t})
    assert all(L == C and not null for _, L, null, _ in jobs)
    read = np.concatenate([j[3] for j in jobs])
    assert sorted(read.tolist()) == list(range(len(t)))  # every target exactly once
    for s, L, _, idx in jobs:
        assert all(readout_window(int(t[i]), starts, C) == s for i in idx)
    # video_only, idm: still one pass per window, read at block t+1
    jv = window_jobs(T, t, "idm", "video_only", C)
    assert all(not null for _, _, null, _ in jv)
    for s, L, _, idx in jv:
        assert all(s <= t[i] + 1 < s + L and readout_window(int(t[i]) + 1, starts, C) == s for i in idx)
    # idm with past actions: one pass per target, window ends at block t+1, whose action is nulled
    ji = window_jobs(T, t, "idm", "past_actions", C)
    assert len(ji) == len(t)
    for i, (s, L, null, idx) in enumerate(ji):
        assert idx == [i] and null
        assert s + L - 1 == t[i] + 1 and L == min(C, t[i] + 2) and s == max(0, t[i] + 2 - C)
    # short episodes: one window of T frames
    assert window_jobs(8, valid_targets(8, 1), "policy", "past_actions", C) == [(0, 8, False, list(range(7)))]


@pytest.mark.parametrize(
    "mode,extraction",
    [("policy", "past_actions"), ("idm", "past_actions"), ("policy", "video_only"), ("idm", "video_only")],
)
def test_wm_features_equal_a_hand_built_window(wm_env, mode, extraction):
    e = wm_env["eps"][0]
    frames, raw = wm_env["episodes"][e]
    T = len(raw)
    t = valid_targets(T, 1)
    wm = _wm(wm_env, batch=5)  # several batches of passes
    out = wm.extract(frames, raw, t, mode, extraction)
    n_jobs = len(window_jobs(T, t, mode, extraction, C))
    assert wm.n_calls == n_jobs
    assert n_jobs == (len(t) if (mode, extraction) == ("idm", "past_actions") else len(window_plan(T, C)))
    sp, ag = out["wm_spatial"], out["wm_agent"]
    assert sp.shape == (len(t), 32) and ag.shape == (len(t), 32)
    assert np.isfinite(sp).all() and sp.std(0).mean() > 1e-2 and ag.std(0).mean() > 1e-2  # non-trivial
    starts = window_plan(T, C)
    for ti in [0, 1, 2, C - 2, C - 1, C, 23, T - 2]:
        b = ti + (1 if mode == "idm" else 0)
        if extraction == "past_actions" and mode == "idm":
            s, stop = max(0, b + 1 - C), b + 1
        else:
            s = readout_window(b, starts, C)
            stop = s + min(C, T)
        h_ag, h_sp = _direct(
            wm.tok,
            wm.dyn,
            frames,
            raw,
            s,
            stop,
            null_last=(mode == "idm" and extraction == "past_actions"),
            video_only=(extraction == "video_only"),
        )
        np.testing.assert_allclose(sp[ti], h_sp[b - s], atol=1e-5, rtol=0)
        np.testing.assert_allclose(ag[ti], h_ag[b - s], atol=1e-5, rtol=0)
        if mode == "idm" and extraction == "past_actions" and ti >= 1:
            # the read-out block would carry the target a_t = raw[t+1]: nulling it must matter
            _, leaky = _direct(wm.tok, wm.dyn, frames, raw, s, stop)
            assert np.abs(leaky[b - s] - sp[ti]).max() > 1e-4


def test_wm_features_use_the_runs_tokenizer_chunks(wm_env):
    """issue 27: with tokenizer_chunk c, each probe window's latents come from independent chunks of c frames."""
    from dreamer4_libero.models.tokenizer_chunks import encode_chunked

    e = wm_env["eps"][0]
    frames, raw = wm_env["episodes"][e]
    T = len(raw)
    t = valid_targets(T, 1)
    tok, dyn = wm_env["tok"]["tiny"], _dyn("wm_agent")
    feats = {
        c: WorldModelFeatures(tok, dyn, packing=PACKING, window=C, resolution=RES, tokenizer_chunk=c).extract(
            frames, raw, t, "policy", "video_only"
        )["wm_spatial"]
        for c in (None, C, 4)
    }
    np.testing.assert_array_equal(feats[C], feats[None])  # chunk >= window: one call
    assert np.abs(feats[4] - feats[None]).max() > 1e-4  # chunks change the latents

    class Chunked(torch.nn.Module):  # hand-built chunked encoding
        def encode(self, x, mae=False):
            return encode_chunked(tok, x, 4)

    starts = window_plan(T, C)
    for ti in [0, 3, 4, 5, C - 1, 23, T - 2]:
        s = readout_window(int(ti), starts, C)
        _, h_sp = _direct(Chunked(), dyn, frames, raw, s, s + min(C, T), video_only=True)
        np.testing.assert_allclose(feats[4][ti], h_sp[ti - s], atol=1e-5, rtol=0)


def test_wm_features_differ_between_episodes_and_extractions(wm_env):
    wm = _wm(wm_env)
    (f0, r0), (f1, r1) = [wm_env["episodes"][e] for e in wm_env["eps"][:2]]
    t = np.arange(5, 20)
    a = wm.extract(f0, r0, t, "policy", "past_actions")["wm_spatial"]
    b = wm.extract(f1, r1, t, "policy", "past_actions")["wm_spatial"]
    v = wm.extract(f0, r0, t, "policy", "video_only")["wm_spatial"]
    assert np.abs(a - b).max() > 1e-3 and np.abs(a - v).max() > 1e-4
    # deterministic: no noise anywhere
    np.testing.assert_array_equal(a, wm.extract(f0, r0, t, "policy", "past_actions")["wm_spatial"])


@pytest.mark.parametrize("tok", ["tiny", "pix"])
@pytest.mark.parametrize("mode", ["policy", "idm"])
@pytest.mark.parametrize("extraction", ["past_actions", "video_only"])
def test_wm_leak_tests_pass(wm_env, mode, extraction, tok):
    wm = _wm(wm_env, tok=tok)
    eps = [wm_env["episodes"][e] for e in wm_env["eps"][:2]]
    sets = wm.feature_sets(extraction)
    assert set(sets) == {"wm_spatial", "wm_agent"}
    for name, fs in sets.items():
        res = run_leak_tests(fs, eps, mode, n_targets=3, window=C, seed=1)
        for test in ("future_actions", "future_frames"):
            assert res[test]["pass"] is True and res[test]["max_abs_delta"] <= TOL, (name, test, res[test])
            assert res[test]["n_targets"] == 6
        nv = res["non_vacuity"]
        if name == "wm_agent":
            assert nv is None
        elif extraction == "past_actions":
            assert nv["expect"] == "change" and nv["pass"] is True and nv["max_abs_delta"] > 1e-4, nv
        else:
            assert nv["expect"] == "no_change" and nv["pass"] is True and nv["max_abs_delta"] <= TOL, nv


def test_leak_tests_catch_leaky_feature_sets(wm_env):
    eps = [wm_env["episodes"][e] for e in wm_env["eps"][:2]]
    # copies a_t = raw[t+1]: a leak whatever it is called
    copy_at = FeatureSet("innocent_name", lambda f, r, t, m: np.asarray(r, np.float64)[np.asarray(t) + 1])
    for mode in ("policy", "idm"):
        res = run_leak_tests(copy_at, eps, mode, n_targets=3, window=C)
        assert res["future_actions"]["pass"] is False and res["future_actions"]["max_abs_delta"] > 0.1
        assert res["future_frames"]["pass"] is True
    # a_{t-1} = raw[t] is allowed
    prev = FeatureSet("prev", lambda f, r, t, m: np.asarray(r, np.float64)[np.asarray(t)], action_sensitivity="change")
    res = run_leak_tests(prev, eps, "policy", n_targets=3, window=C)
    assert res["future_actions"]["pass"] and res["non_vacuity"]["pass"] and res["future_frames"]["pass"]
    # reads frame t+1 in policy mode: fails the causality test (and only that one)
    peek = FeatureSet(
        "peek", lambda f, r, t, m: np.asarray(f, np.float64)[np.asarray(t) + 1].reshape(len(t), -1)[:, :64]
    )
    res = run_leak_tests(peek, eps, "policy", n_targets=3, window=C)
    assert res["future_frames"]["pass"] is False and res["future_actions"]["pass"] is True
    # ... which idm mode is allowed to read
    assert run_leak_tests(peek, eps, "idm", n_targets=3, window=C)["future_frames"]["pass"] is True
    # the raw-index trap on model features: reading block t+1 in policy mode sees a_t in its action token
    wm = _wm(wm_env)
    off = FeatureSet(
        "off_by_one", lambda f, r, t, m: wm.extract(f, r, np.asarray(t) + 1, "policy", "past_actions")["wm_spatial"]
    )
    res = run_leak_tests(off, eps, "policy", n_targets=3, window=C)
    assert res["future_actions"]["pass"] is False and res["future_frames"]["pass"] is False
    # video_only features that secretly read an action fail the no-change non-vacuity test
    sneaky = FeatureSet(
        "sneaky", lambda f, r, t, m: np.asarray(r, np.float64)[np.asarray(t)], action_sensitivity="no_change"
    )
    assert run_leak_tests(sneaky, eps, "policy", n_targets=3, window=C)["non_vacuity"]["pass"] is False


# =============================================================================================
# 3. the inert agent token (upstream wm_agent_isolated)
# =============================================================================================


def _agent_design(env, space_mode, feature="wm_agent", tok="pix"):
    wm = _wm(env, space_mode, tok=tok)
    Xs, ts, keys = [], [], []
    for e in env["eps"]:
        frames, raw = env["episodes"][e]
        t = valid_targets(len(raw), 1)
        Xs.append(wm.extract(frames, raw, t, "policy", "past_actions")[feature])
        ts.append(t)
        keys.append(np.stack([t, window_position(t, "policy", len(raw), C)], 1))
    return np.concatenate(Xs), np.concatenate(ts), np.concatenate(keys)


@pytest.mark.parametrize("tok", ["tiny", "pix"])
def test_isolated_agent_token_is_degenerate(wm_env, tok):
    X, t, keys = _agent_design(wm_env, "wm_agent_isolated", tok=tok)
    # identical in every episode at the same window position
    _, inv = np.unique(keys, axis=0, return_inverse=True)
    inv = inv.ravel()
    for g in np.unique(inv):
        rows = X[inv == g]
        assert np.abs(rows - rows[0]).max() <= 1e-5
    assert X.std(0).mean() > 1e-2  # ... but not constant over positions
    Xu = Standardizer().fit_transform(X)
    d = degeneracy(X, Xu, t, keys, in_sample_r2=0.5, cv_r2=0.1)
    assert d["episode_specificity"] < 1e-3, d
    assert d["n_nonconstant"] >= 2 and d["effective_rank"] >= 1.5
    assert any("episode specificity" in r for r in d["reasons"]), d["reasons"]


@pytest.mark.parametrize(
    "space_mode,feature,least", [("wm_agent", "wm_agent", 1e-2), ("wm_agent_isolated", "wm_spatial", 0.1)]
)
def test_episode_specific_features_are_not_degenerate(wm_env, space_mode, feature, least):
    X, t, keys = _agent_design(wm_env, space_mode, feature)
    d = degeneracy(X, Standardizer().fit_transform(X), t, keys, in_sample_r2=0.5, cv_r2=0.1)
    print(f"{space_mode} {feature}: episode specificity {d['episode_specificity']:.4g}")
    assert d["episode_specificity"] > least, d
    assert not any("episode specificity" in r for r in d["reasons"]), d["reasons"]


def test_wm_study_records_flag_the_inert_agent_token(preprocessed, wm_env):
    """The CLI's FeatureGroup path for a variant, on a small subset of the probe lists."""
    full = load_probe_lists(preprocessed / "splits" / "probe", [0])
    sub = {}
    for name, n_per_task in (("probe_train", 2), ("probe_eval_train", 1), ("probe_eval_test", 2)):
        kept, count = [], {}
        for e in full.lists[0][name]:
            task = parse_episode_id(e)[0]
            if count.get(task, 0) < n_per_task:
                kept.append(e)
                count[task] = count.get(task, 0) + 1
        sub[name] = kept
    lists = ProbeLists({0: sub}, full.hashes, True)
    wm = _wm(wm_env, "wm_agent_isolated", tok="pix")
    groups = [
        FeatureGroup(ext, mode, lambda f, r, t, m=mode, x=ext: wm.extract(f, r, t, m, x), wm.feature_sets(ext))
        for ext in ("past_actions", "video_only")
        for mode in ("policy", "idm")
    ]
    recs = run_study(
        groups,
        wm_env["store"],
        lists,
        seeds=[0],
        H_list=[1],
        window=C,
        B=20,
        identity={"variant": "tiny", "space_mode": "wm_agent_isolated"},
        leak_episodes=1,
        leak_targets=2,
        n_splits=3,
        log=lambda s: None,
    )
    assert len(recs) == 2 * 4
    for r in recs:
        assert r["space_mode"] == "wm_agent_isolated"
        lt = r["leak_tests"]
        assert lt["future_actions"]["pass"] and lt["future_frames"]["pass"], (r["feature"], lt)
        spec = r["degeneracy"]["episode_specificity"]
        if r["feature"] == "wm_agent":
            assert r["flags"]["DEGENERATE"] and spec < 1e-3 and "episode specificity" in r["flag_reasons"]["DEGENERATE"]
        else:
            assert spec > 0.05 and lt["non_vacuity"]["pass"] is True


# =============================================================================================
# 4. records of the model-free baselines
# =============================================================================================

SEEDS = [0, 1]
H_LIST = [1, 2]
B = 50


@pytest.fixture(scope="module")
def study(preprocessed):
    """run_study on the conftest data: every baseline set except `pixels` (its PCA costs ~10 s; the CLI test covers
    it), controls included."""
    store = ShardStore(preprocessed / "manifest.json")
    lists = load_probe_lists(preprocessed / "splits" / "probe", SEEDS)
    sets = baseline_feature_sets(RES, {}, None, 32, controls=True)
    assert set(sets) == {"pixels", "frame_diff", "time_only", "lagged_actions", "const_control", "leak_control"}
    sets.pop("pixels")
    groups = [
        FeatureGroup("none", m, lambda f, r, t, m=m: {n: fs.extract(f, r, t, m) for n, fs in sets.items()}, sets)
        for m in ("policy", "idm")
    ]
    recs = run_study(
        groups,
        store,
        lists,
        seeds=SEEDS,
        H_list=H_LIST,
        window=32,
        B=B,
        identity={"variant": "baselines", "checkpoint_sha256": None},
        leak_episodes=1,
        leak_targets=2,
        n_splits=3,
        log=lambda s: None,
    )
    idx = {(r["feature"], r["probe_mode"], r["H"], r["seed"]): r for r in recs}
    return {"records": recs, "idx": idx, "store": store, "lists": lists}


def _r2(rec, pred="probe", scoring="common_Hmax", set_name="probe_eval_test"):
    return rec["scorings"][scoring][set_name][pred]["r2_uniform"]


def test_record_set_and_names(study):
    recs = study["records"]
    assert len(recs) == 5 * 2 * len(H_LIST) * len(SEEDS) == len(study["idx"])
    r = study["idx"][("frame_diff", "idm", 2, 1)]
    assert record_name(r) == "frame_diff__none__idm__H2__seed1.json"
    assert record_name(study["idx"][("const_control", "policy", 1, 0)]) == "const_control__none__policy__H1__seed0.json"
    assert len({record_name(x) for x in recs}) == len(recs)
    for x in recs:
        assert x["protocol"] == "eval-protocol-v1" and x["H_list"] == H_LIST and x["H_max"] == 2
        assert x["split_hashes"] == study["lists"].hashes[x["seed"]] and x["seeds_vary_episodes"] is True
        assert set(x["scorings"]) == {"all_valid", "common_Hmax"}


def test_const_control_equals_train_mean_and_is_flagged(study):
    for (feat, mode, H, seed), r in study["idx"].items():
        if feat != "const_control":
            continue
        assert r["features"]["n_used"] == 0 and r["features"]["n_dropped"] == 8
        for scoring in ("all_valid", "common_Hmax"):
            for s in ("probe_eval_test", "probe_eval_train"):
                blk = r["scorings"][scoring][s]
                for p in ("probe", "label_shuffle"):
                    assert abs(blk[p]["r2_uniform"] - blk["train_mean"]["r2_uniform"]) <= 1e-9
                    np.testing.assert_allclose(blk[p]["r2_per_dim"], blk["train_mean"]["r2_per_dim"], atol=1e-9, rtol=0)
        assert r["flags"]["DEGENERATE"] and r["flags"]["NO-SIGNAL"] and not r["flags"]["LEAK?"]
        assert "non-constant columns" in r["flag_reasons"]["DEGENERATE"]


def test_leak_control_is_flagged_by_the_future_actions_test(study):
    for (feat, mode, H, seed), r in study["idx"].items():
        if feat == "leak_control":
            assert r["flags"]["LEAK?"] and "future_actions" in r["flag_reasons"]["LEAK?"]
            assert r["leak_tests"]["future_actions"]["pass"] is False
            assert r["leak_tests"]["future_frames"]["pass"] is True
            if H == 1:  # its features are the H=1 label itself
                assert _r2(r, scoring="all_valid") > 0.999
            else:
                assert _r2(r) < 0.9
        elif feat != "const_control":
            lt = r["leak_tests"]
            assert lt["future_actions"]["pass"] and lt["future_frames"]["pass"], (feat, lt)
            assert not r["flags"]["LEAK?"], (feat, mode, H, seed, r["flag_reasons"])
    lag = study["idx"][("lagged_actions", "policy", 1, 0)]["leak_tests"]["non_vacuity"]
    assert lag["expect"] == "change" and lag["pass"] is True and lag["max_abs_delta"] > 0.1


def test_frame_diff_idm_beats_policy_on_heldout_tasks(study):
    for seed in SEEDS:
        idm = _r2(study["idx"][("frame_diff", "idm", 1, seed)], scoring="all_valid")
        pol = _r2(study["idx"][("frame_diff", "policy", 1, seed)], scoring="all_valid")
        print(f"seed {seed}: frame_diff held-out R² idm {idm:+.4f} policy {pol:+.4f}")
        assert idm > 0.3 and idm > pol + 0.1 and pol > 0
        lag = study["idx"][("lagged_actions", "policy", 1, seed)]
        print(f"seed {seed}: lagged_actions {_r2(lag):+.4f} copy_prev {_r2(lag, 'copy_prev'):+.4f}")
        assert _r2(lag) > _r2(lag, "copy_prev") > 0.2


def test_label_shuffle_and_train_mean_are_near_zero(study):
    worst = max(
        _r2(r, "label_shuffle", sc, s)
        for r in study["records"]
        for sc in ("all_valid", "common_Hmax")
        for s in ("probe_eval_test", "probe_eval_train")
    )
    print(f"max label_shuffle R² {worst:+.4f}")
    assert worst <= 0.02
    for r in study["records"]:
        assert -0.05 < _r2(r, "train_mean") <= 1e-12


def test_no_signal_flags(study):
    for (feat, mode, H, seed), r in study["idx"].items():
        expect = feat == "const_control"
        assert r["flags"]["NO-SIGNAL"] is expect, (feat, mode, H, seed, _r2(r), _r2(r, "train_mean"))


def test_scorings_identical_at_H_max_and_nested_below(study):
    for (feat, mode, H, seed), r in study["idx"].items():
        sc = r["scorings"]
        if H == 2:
            assert sc["all_valid"] == sc["common_Hmax"]
        else:
            for s in ("probe_eval_test", "probe_eval_train"):
                av = sc["all_valid"][s]
                assert sc["common_Hmax"][s]["n_frames"] == av["n_frames"] - av["n_episodes"]
                h2 = study["idx"][(feat, mode, 2, seed)]["scorings"]["common_Hmax"][s]
                assert sc["common_Hmax"][s]["n_frames"] == h2["n_frames"]
                assert sc["common_Hmax"][s]["stats"]["n"] == h2["stats"]["n"]


def test_labels_frames_and_controls_recomputed_from_the_data(study):
    """Counts, per-episode label sums, train_mean and copy_prev R² from the raw arrays, by hand."""
    store, lists = study["store"], study["lists"]

    def labels(eps, H, Hmax=None):
        ys, prev, n = [], [], []
        for e in eps:
            raw = np.asarray(store.episode(e)[1], np.float64)
            T = len(raw)
            t = np.arange(0, T - (Hmax or H))
            ys.append(raw[t + H])
            prev.append(np.where((t >= 1)[:, None], raw[np.maximum(t, 0)], np.nan))
            n.append(len(t))
        return ys, prev, n

    def r2u(y, p):
        return float(np.mean(1 - ((y - p) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)))

    for seed in SEEDS:
        for H in H_LIST:
            r = study["idx"][("lagged_actions", "policy", H, seed)]
            mu = np.concatenate(labels(lists.lists[seed]["probe_train"], H)[0]).mean(0)
            for s in ("probe_eval_test", "probe_eval_train"):
                for scoring, Hmax in (("all_valid", None), ("common_Hmax", 2)):
                    ys, prev, n = labels(lists.lists[seed][s], H, Hmax)
                    blk = r["scorings"][scoring][s]
                    assert blk["n_frames"] == sum(n) and blk["stats"]["n"] == n
                    np.testing.assert_allclose(blk["stats"]["sum_y"], [y.sum(0) for y in ys], rtol=1e-12, atol=1e-9)
                    y = np.concatenate(ys)
                    p = np.concatenate(prev)
                    p = np.where(np.isnan(p), mu[None], p)
                    assert abs(blk["train_mean"]["r2_uniform"] - r2u(y, np.broadcast_to(mu, y.shape))) < 1e-9
                    assert abs(blk["copy_prev"]["r2_uniform"] - r2u(y, p)) < 1e-9
                    assert blk["stats"]["episodes"] == list(lists.lists[seed][s])


def test_bootstrap_cis_and_r2_reproduce_from_stats(study):
    for key in [
        ("frame_diff", "idm", 1, 0),
        ("lagged_actions", "policy", 2, 1),
        ("leak_control", "policy", 1, 1),
        ("const_control", "idm", 1, 0),
    ]:
        r = study["idx"][key]
        seed = r["seed"]
        for scoring in ("all_valid", "common_Hmax"):
            for s in ("probe_eval_test", "probe_eval_train"):
                blk = r["scorings"][scoring][s]
                st = blk["stats"]
                E = len(st["episodes"])
                assert len(st["n"]) == len(st["tasks"]) == E and sum(st["n"]) == blk["n_frames"]
                assert st["tasks"] == [parse_episode_id(e)[0] for e in st["episodes"]]
                for p in ("probe", "train_mean", "label_shuffle", "copy_prev"):
                    full = r2_uniform_from_stats(np.ones((1, E)), st["n"], st["sum_y"], st["sum_y2"], st["sse"][p])[0]
                    assert abs(full - blk[p]["r2_uniform"]) < 1e-9, (key, scoring, s, p)
                    for level, field in (("episode", "ci"), ("task", "ci_task")):
                        ci = percentile_ci(r2_replicates(st, p, level, seed, s, B))
                        np.testing.assert_allclose(blk[p][field], ci, rtol=0, atol=1e-12)
                    lo, hi = blk[p]["ci"]
                    if p == "probe":
                        assert lo < hi and lo - 0.05 <= blk[p]["r2_uniform"] <= hi + 0.05


def _relvar_table(store, lists, offset):
    """Features = offset + lagged actions (signal under a large constant offset) for every listed episode."""
    tb = FeatureTable()
    raws = {}
    for e in sorted({e for lst in lists.values() for e in lst}):
        raw = np.asarray(store.episode(e)[1], np.float64)
        t = valid_targets(len(raw), 1)
        raws[e] = raw
        tb.t[e], tb.X[e], tb.pos[e] = t, offset + lagged_actions(raw, t), np.zeros(len(t), np.int64)
    return tb, raws


def test_relative_variation_without_pca(study):
    lists = study["lists"].lists[0]
    tb, raws = _relvar_table(study["store"], lists, 1e5)
    rec = probe_record(
        tb, raws, lists, feature="offset_lags", pca=None, H=1, H_max=2, seed=0, stride=1, B=10, window=32, n_splits=3
    )
    assert rec["degeneracy"]["relative_variation"] < 1e-6
    assert any("relative variation" in x for x in rec["degeneracy"]["reasons"])


def test_relative_variation_uses_raw_x_with_pca(study):
    lists = study["lists"].lists[0]
    tb, raws = _relvar_table(study["store"], lists, 1e5)
    rec = probe_record(
        tb, raws, lists, feature="offset_lags", pca=16, H=1, H_max=2, seed=0, stride=1, B=10, window=32, n_splits=3
    )
    assert rec["features"]["pca"] == 16
    assert rec["degeneracy"]["relative_variation"] < 1e-6
    assert rec["degeneracy"]["n_columns_raw"] == 32


# =============================================================================================
# 5. cross-record flags
# =============================================================================================


def _fake(feature, mode, H, r2, ci, seed=0):
    return {
        "feature": feature,
        "extraction": "past_actions",
        "probe_mode": mode,
        "H": H,
        "seed": seed,
        "frame_stride": 1,
        "scorings": {"common_Hmax": {"probe_eval_test": {"probe": {"r2_uniform": r2, "ci": list(ci)}}}},
        "flags": {"DEGENERATE": False, "NO-SIGNAL": False, "LEAK?": False},
        "flag_reasons": {},
    }


def test_cross_record_flags_idm_below_policy():
    recs = [
        _fake("a", "policy", 1, 0.30, (0.2, 0.4)),
        _fake("a", "idm", 1, 0.25, (0.2, 0.3)),
        _fake("b", "policy", 1, 0.30, (0.2, 0.4)),
        _fake("b", "idm", 1, 0.29, (0.2, 0.4)),
        _fake("c", "policy", 1, 0.30, (0.2, 0.4)),
        _fake("c", "idm", 1, 0.25, (0.2, 0.3), seed=1),
    ]
    cross_record_flags(recs)
    assert recs[0]["flags"]["LEAK?"] and recs[1]["flags"]["LEAK?"]
    assert "idm R² +0.250 < policy R² +0.300" in recs[1]["flag_reasons"]["LEAK?"]
    assert recs[0]["flag_reasons"]["LEAK?"] == recs[1]["flag_reasons"]["LEAK?"]
    assert not any(r["flags"]["LEAK?"] for r in recs[2:])  # within the margin / different seed
    # two no-signal numbers differ by noise: no flag when policy mode itself is NO-SIGNAL
    quiet = [_fake("d", "policy", 1, -0.05, (-0.1, 0.0)), _fake("d", "idm", 1, -0.08, (-0.1, 0.0))]
    quiet[0]["flags"]["NO-SIGNAL"] = True
    cross_record_flags(quiet)
    assert not any(r["flags"]["LEAK?"] for r in quiet)


def test_cross_record_flags_compare_idm_with_policy_at_the_idm_frame_stride():
    """idm mode subsampled (frame_stride 16, for cost), policy mode on every frame: the comparison uses the
    policy probe refit at the idm stride, since R² falls with fewer probe-train frames (the demo's
    `past_actions` rows were flagged LEAK? from this alone: policy +0.137 on every frame, +0.005 at stride 16,
    idm −0.006 at stride 16; idm +0.154 on every frame)."""

    def pair(feature, refit):
        pol, idm = _fake(feature, "policy", 1, 0.137, (0.1, 0.2)), _fake(feature, "idm", 1, -0.006, (-0.05, 0.0))
        idm["frame_stride"] = 16
        if refit is not None:
            pol["policy_at_idm_stride"] = {"frame_stride": 16, "r2": refit[0], "train_mean_r2": refit[1]}
        return [pol, idm]

    no_signal_there, signal_there, other_stride, none = (
        pair("a", (0.005, -0.02)),  # policy at stride 16 is itself NO-SIGNAL: no comparison
        pair("b", (0.10, -0.02)),  # policy keeps its signal at stride 16 and idm falls below it: flagged
        pair("c", (0.10, -0.02)),
        pair("d", None),  # no refit on record: not comparable, no flag
    )
    other_stride[0]["policy_at_idm_stride"]["frame_stride"] = 8
    recs = no_signal_there + signal_there + other_stride + none
    cross_record_flags(recs)
    assert [r["flags"]["LEAK?"] for r in recs] == [False, False, True, True, False, False, False, False]
    assert (
        "idm R² -0.006 < policy R² +0.100 − 0.02 (H=1, seed 0, policy refit at frame stride 16)"
        in (signal_there[1]["flag_reasons"]["LEAK?"])
    )


def test_cross_record_flags_H2_above_H1_ci():
    recs = [
        _fake("a", "policy", 1, 0.30, (0.25, 0.35)),
        _fake("a", "policy", 2, 0.36, (0.3, 0.4)),
        _fake("b", "policy", 1, 0.30, (0.25, 0.35)),
        _fake("b", "policy", 2, 0.34, (0.3, 0.4)),
        _fake("c", "policy", 1, 0.30, (0.25, 0.35)),
        _fake("c", "policy", 4, 0.60, (0.5, 0.7)),
    ]
    recs[0]["flags"]["LEAK?"] = True
    recs[0]["flag_reasons"]["LEAK?"] = "leak test failed: future_actions"
    cross_record_flags(recs)
    assert recs[1]["flags"]["LEAK?"] and "exceeds the H=1 CI upper bound +0.350" in recs[1]["flag_reasons"]["LEAK?"]
    assert recs[0]["flag_reasons"]["LEAK?"].startswith("leak test failed: future_actions; R² at H=2")
    assert not any(r["flags"]["LEAK?"] for r in recs[2:])
    # a no-signal feature (pixels in the demo: R² -0.03 [-0.05, -0.02] at H=1, -0.000 at H=2) is not a leak
    quiet = [_fake("d", "idm", 1, -0.03, (-0.05, -0.022)), _fake("d", "idm", 2, -0.0002, (-0.01, 0.01))]
    for r in quiet:
        r["flags"]["NO-SIGNAL"] = True
    cross_record_flags(quiet)
    assert not any(r["flags"]["LEAK?"] for r in quiet)
    quiet[1]["flags"]["NO-SIGNAL"] = False  # the same numbers with a signal at H=2: flagged
    cross_record_flags(quiet)
    assert quiet[1]["flags"]["LEAK?"]


# =============================================================================================
# 6. the CLI
# =============================================================================================

EVAL = {
    "H_list": [1, 2],
    "frame_stride": {},
    "bootstrap_B": B,
    "pca": {},
    "pixel_resolution": PIX_CLI,
    "control_features": True,
    "leak_episodes": 1,
    "leak_targets": 2,
    "n_splits": 3,
    "batch": 16,
}


def _cli(pre: Path, probe_root: Path, out: Path, seeds=(0,)) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--baselines",
            "--manifest",
            str(pre / "manifest.json"),
            "--probe-root",
            str(probe_root),
            "--seeds",
            *map(str, seeds),
            "--resolution",
            str(RES),
            "--eval",
            json.dumps(EVAL),
            "--out-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_cli_baselines_end_to_end(preprocessed, study, tmp_path):
    out = tmp_path / "probe" / "baselines"
    res = _cli(preprocessed, preprocessed / "splits" / "probe", out)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = read_json(out / "summary.json")
    files = sorted(p.name for p in out.iterdir() if p.name != "summary.json")
    assert summary["protocol"] == "eval-protocol-v1" and summary["variant"] == "baselines"
    assert summary["n_records"] == len(summary["records"]) == len(files) == 6 * 2 * 2 * 1
    assert sorted(row["path"] for row in summary["records"]) == files
    for row in summary["records"]:
        rec = read_json(out / row["path"])
        assert row["sha256"] == sha256_file(out / row["path"])
        assert row["path"] == record_name(rec)
        assert (row["feature"], row["extraction"], row["probe_mode"], row["H"], row["seed"]) == (
            rec["feature"],
            rec["extraction"],
            rec["probe_mode"],
            rec["H"],
            rec["seed"],
        )
        assert sorted(row["flags"]) == sorted(k for k, on in rec["flags"].items() if on)  # records sort keys
        assert rec["checkpoint_sha256"] is None and rec["extraction"] == "none" and rec["bootstrap_B"] == B
    assert set(summary["leak_tests"]) == {
        f"{f}__none__{m}"
        for f in ("pixels", "frame_diff", "time_only", "lagged_actions", "const_control", "leak_control")
        for m in ("policy", "idm")
    }
    assert summary["leak_tests"]["leak_control__none__policy"]["future_actions"]["pass"] is False
    rows = {(r["feature"], r["probe_mode"], r["H"]): r for r in summary["records"]}
    assert "LEAK?" in rows[("leak_control", "policy", 1)]["flags"]
    assert {"DEGENERATE", "NO-SIGNAL"} <= set(rows[("const_control", "idm", 2)]["flags"])
    # the written records hold the same numbers as the in-process study (the sets that do not depend on the
    # pixel resolution: the CLI runs at PIX_CLI)
    for feat, mode, H in (("time_only", "idm", 1), ("leak_control", "policy", 2), ("lagged_actions", "policy", 1)):
        rec = read_json(out / f"{feat}__none__{mode}__H{H}__seed0.json")
        ref = study["idx"][(feat, mode, H, 0)]
        for scoring in ("all_valid", "common_Hmax"):
            for s in ("probe_eval_test", "probe_eval_train"):
                for p in ("probe", "train_mean", "label_shuffle", "copy_prev"):
                    a, b = rec["scorings"][scoring][s][p], ref["scorings"][scoring][s][p]
                    assert abs(a["r2_uniform"] - b["r2_uniform"]) < 1e-6, (feat, mode, H, scoring, s, p)
        assert rec["alpha"] == ref["alpha"]
    assert "frame_diff" in res.stdout and "records ->" in res.stdout


def test_cli_missing_probe_list_exits_2_naming_the_file(preprocessed, tmp_path):
    root = tmp_path / "probe_lists"
    shutil.copytree(preprocessed / "splits" / "probe", root)
    missing = root / "seed1" / "probe_eval_test.json"
    missing.unlink()
    out = tmp_path / "out"
    res = _cli(preprocessed, root, out, seeds=(0, 1))
    assert res.returncode == 2, res.stderr[-2000:]
    assert str(missing) in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()
