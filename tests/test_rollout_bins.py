"""Per-horizon-bin paired deltas of the rollout evaluation (issue 27): bins, exact means, CIs."""

from __future__ import annotations

import numpy as np
import pytest

from dreamer4_libero.evaluation.rollout import binned_delta, bootstrap_counts, horizon_bins, paired_delta


def _wins(n_tasks: int, per_task: int) -> list[dict]:
    out = []
    for t in range(n_tasks):
        for k in range(per_task):
            e = f"s/task{t}/demo_{k}"
            out.append({"id": f"{e}@0", "episode": e, "task": f"s/task{t}", "start": 0})
    return out


def test_horizon_bins_are_thirds_with_earlier_bins_longer():
    assert horizon_bins(24) == [(1, 8), (9, 16), (17, 24)]
    assert horizon_bins(10) == [(1, 4), (5, 7), (8, 10)]
    assert horizon_bins(3) == [(1, 1), (2, 2), (3, 3)]
    assert horizon_bins(2) == [(1, 1), (2, 2)]
    assert horizon_bins(12, n_bins=4) == [(1, 3), (4, 6), (7, 9), (10, 12)]
    for h in range(1, 40):
        b = horizon_bins(h)
        assert b[0][0] == 1 and b[-1][1] == h
        assert all(b[i][1] + 1 == b[i + 1][0] for i in range(len(b) - 1))  # contiguous, no overlap
    with pytest.raises(ValueError, match="horizon must be >= 1"):
        horizon_bins(0)


def test_binned_delta_exact_means_and_cis():
    wins = _wins(3, 2)  # 6 windows, 6 episodes, 3 tasks
    n = len(wins)
    # reference: MSE 0.01 everywhere = 20 dB; model: 20 / 30 / 40 dB in the three bins, plus a per-window
    # shift of w dB (w = 0..5), so the bin deltas are exactly 0 + 2.5, 10 + 2.5, 20 + 2.5 dB
    ref = np.full((n, 24), 0.01)
    bin_db = np.repeat([20.0, 30.0, 40.0], 8)  # (24,)
    shift = np.arange(n, dtype=float)[:, None]  # (6, 1)
    model = 10.0 ** (-(bin_db[None, :] + shift) / 10.0)  # (6, 24) MSE of PSNR bin_db + w
    counts = bootstrap_counts(wins, 500, 0, "rollout:test")
    got = binned_delta(model, ref, wins, counts, horizon_bins(24))
    assert [g["frames"] for g in got] == [[1, 8], [9, 16], [17, 24]]
    for g, want in zip(got, (2.5, 12.5, 22.5)):
        assert g["mean"] == pytest.approx(want, abs=1e-9)
        lo, hi = g["ci"]
        assert lo <= g["mean"] <= hi and lo < hi
        # every bin has the same per-window spread (0..5 dB): the same CI width, shifted
        assert hi - lo == pytest.approx(got[0]["ci"][1] - got[0]["ci"][0], abs=1e-9)
    whole = paired_delta(model, ref, wins, counts)
    assert whole["mean"] == pytest.approx(np.mean([g["mean"] for g in got]), abs=1e-9)  # equal-size bins
    # the reversed difference is the negation, paired over the same resamples
    back = binned_delta(ref, model, wins, counts, horizon_bins(24))
    for g, b in zip(got, back):
        assert b["mean"] == pytest.approx(-g["mean"]) and b["ci"] == pytest.approx([-g["ci"][1], -g["ci"][0]])
    with pytest.raises(ValueError, match="outside the horizon"):
        binned_delta(model, ref, wins, counts, [(17, 25)])


def test_bin_ci_excludes_zero_only_where_the_model_wins():
    rng = np.random.default_rng(3)
    wins = _wins(4, 3)
    n = len(wins)
    ref = rng.uniform(0.004, 0.006, size=(n, 24))
    model = ref.copy()
    model[:, :8] *= 2.0  # frames 1-8: model worse by 3.01 dB
    model[:, 16:] *= rng.uniform(0.4, 0.6, size=(n, 1))  # frames 17-24: model better by ~3 dB
    got = binned_delta(model, ref, wins, bootstrap_counts(wins, 400, 1, "x"), horizon_bins(24))
    first, mid, last = got
    assert first["mean"] == pytest.approx(-10 * np.log10(2.0)) and first["ci"][1] < 0
    assert mid["mean"] == pytest.approx(0.0, abs=1e-12) and mid["ci"] == pytest.approx([0.0, 0.0], abs=1e-12)
    assert last["ci"][0] > 0 and 2.0 < last["mean"] < 4.1
