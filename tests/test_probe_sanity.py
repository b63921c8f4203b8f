"""Probe sanity on held-out synthetic tasks: ridge on frame differences (issue acceptance).

idm mode ((o_{t+1} - o_t) -> a_t = raw actions[t+1]) must decode the action on tasks the probe
never saw; policy mode (o_t - o_{t-1} -> a_t) sees only the previous action's effect and must
score lower. A pipeline without the +1 shift would report the policy number as idm.
"""

import numpy as np
import pytest

from dreamer4_libero.data.loader import episode_list
from dreamer4_libero.data.shards import ShardStore
from dreamer4_libero.evaluation.baselines import frame_diff_probe
from dreamer4_libero.evaluation.features import frame_diff, probe_targets


def test_targets_and_features_indexing():
    raw = np.arange(6, dtype=float)[:, None].repeat(7, 1)
    t, y = probe_targets(raw)
    np.testing.assert_array_equal(t, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(y[:, 0], [1, 2, 3, 4, 5])  # a_t = raw actions[t+1]
    frames = np.arange(6, dtype=np.float32)[:, None] ** 2  # o_t = t^2
    np.testing.assert_array_equal(frame_diff(frames, t, "idm")[:, 0], [1, 3, 5, 7, 9])  # o_{t+1} - o_t
    np.testing.assert_array_equal(frame_diff(frames, t, "policy")[:, 0], [0, 1, 3, 5, 7])  # o_t - o_{t-1}
    with pytest.raises(ValueError):
        frame_diff(frames, t, "oracle")


@pytest.fixture(scope="module")
def sanity(preprocessed, test_cfg):
    store = ShardStore(preprocessed / "manifest.json")
    pd = preprocessed / "splits" / "probe" / "seed0"
    train = episode_list(pd / "probe_train.json")
    test = {"ood": episode_list(pd / "probe_eval_test.json")}
    res = test_cfg["data"]["model_resolution"]
    return {
        m: frame_diff_probe(store, train, test, mode=m, resolution=res, seed=0)["eval"]["ood"]
        for m in ("idm", "policy")
    }


def test_idm_frame_diff_decodes_actions_on_heldout_tasks(sanity):
    idm = sanity["idm"]
    print("idm per dim", idm["r2_per_dim"], "policy per dim", sanity["policy"]["r2_per_dim"])
    assert idm["r2_uniform"] > 0.3
    assert idm["r2_mean_dims_0_5"] > 0.5


def test_idm_beats_policy_which_proves_the_shift(sanity):
    assert sanity["idm"]["r2_uniform"] > sanity["policy"]["r2_uniform"] + 0.1
    assert sanity["idm"]["r2_mean_dims_0_5"] > sanity["policy"]["r2_mean_dims_0_5"] + 0.1
