"""Task-level split and probe-list allocation (libero_data.md §7.2-7.3)."""

import json
from collections import Counter

import pytest

from dreamer4_libero.data.splits import (
    Split,
    SplitError,
    choose_probe_tasks,
    default_split,
    largest_remainder,
    load_episode_file,
    probe_lists,
    round_half_up,
    suite_of,
    validate_probe,
    validate_split,
)
from dreamer4_libero.data.shards import parse_episode_id
from dreamer4_libero.data.tasks import SUITES, all_task_ids

FULL = {t: list(range(50)) for t in all_task_ids()}


def _tasks(eps):
    return {parse_episode_id(e)[0] for e in eps}


def test_round_half_up_is_not_bankers():
    assert [round_half_up(x) for x in (0.5, 1.5, 2.5, 9.6, 0.25 * 4, 0.2 * 90)] == [1, 2, 3, 10, 1, 18]


def test_full_libero_default_split_counts():
    sp = default_split(FULL)
    assert (len(_tasks(sp.train)), len(_tasks(sp.test_ood))) == (104, 26)
    assert (len(sp.train), len(sp.val), len(sp.test_ood)) == (4160, 1040, 1300)
    ood_per_suite = Counter(suite_of(t) for t in _tasks(sp.test_ood))
    assert ood_per_suite == {"libero_90": 18, "libero_10": 2, "libero_spatial": 2, "libero_object": 2, "libero_goal": 2}
    validate_split(sp)


def test_split_is_deterministic_and_seed_dependent():
    a, b = default_split(FULL, split_seed=0), default_split(FULL, split_seed=0)
    assert (a.train, a.val, a.test_ood) == (b.train, b.val, b.test_ood)
    c = default_split(FULL, split_seed=1)
    assert _tasks(c.test_ood) != _tasks(a.test_ood)


def test_split_disjointness():
    sp = default_split(FULL)
    assert not _tasks(sp.train) & _tasks(sp.test_ood)  # no task in both train and test_ood
    assert not set(sp.train) & set(sp.val)  # no demo in both train and val
    assert _tasks(sp.val) == _tasks(sp.train)  # val = unseen demos of train tasks
    assert set(sp.train) | set(sp.val) | set(sp.test_ood) == {f"{t}/demo_{k}" for t in FULL for k in range(50)}


def test_probe_quota_test_vector_full_libero():
    """§7.2 step 5 test vector on the 130 real task names."""
    sp = default_split(FULL)
    tr = Counter(suite_of(t) for t in choose_probe_tasks(sorted(_tasks(sp.train)), 27, 0))
    te = Counter(suite_of(t) for t in choose_probe_tasks(sorted(_tasks(sp.test_ood)), 7, 0))
    assert dict(tr) == {"libero_90": 19, "libero_10": 2, "libero_goal": 2, "libero_object": 2, "libero_spatial": 2}
    assert dict(te) == {"libero_90": 5, "libero_10": 1, "libero_goal": 1}


def test_largest_remainder_ties_by_suite_name():
    assert largest_remainder(2, {"b": 1, "a": 1, "c": 1}) == {"a": 1, "b": 1, "c": 0}
    with pytest.raises(SplitError, match="cannot take 4 tasks"):
        largest_remainder(4, {"a": 1, "b": 2})


def test_probe_lists_disjoint_per_seed_and_vary_across_seeds():
    sp = default_split(FULL)
    lists = {s: probe_lists(sp, s) for s in (0, 1, 2)}
    for s, pl in lists.items():
        assert [len(pl[k]) for k in ("probe_train", "probe_eval_train", "probe_eval_test")] == [400, 200, 200]
        sets = [set(v) for v in pl.values()]
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
        assert len(_tasks(pl["probe_train"] + pl["probe_eval_train"])) == 27
        assert len(_tasks(pl["probe_eval_test"])) == 7
        validate_probe(pl, sp)
    # tasks are the same for every seed (reseed_tasks false); episodes differ
    assert _tasks(lists[0]["probe_train"]) == _tasks(lists[1]["probe_train"])
    assert lists[0]["probe_train"] != lists[1]["probe_train"]
    assert probe_lists(sp, 0) == lists[0]


def test_probe_pool_too_small_errors_with_counts():
    sp = default_split(FULL)
    with pytest.raises(SplitError, match=r"hold \d+ train.json episodes"):
        probe_lists(sp, 0, n_train_tasks=2, n_probe_train=400)


def test_demo_sizes():
    """The demo's 12 tasks: 9 train / 3 OOD, probe 36/18/18 from 6 train / 3 OOD tasks."""
    demo = {f"{s}/{t}": list(range(12)) for s in ("libero_10", "libero_goal", "libero_spatial") for t in SUITES[s][:4]}
    sp = default_split(demo, ood_fraction=0.25)
    assert (len(_tasks(sp.train)), len(_tasks(sp.test_ood))) == (9, 3)
    assert Counter(suite_of(t) for t in _tasks(sp.test_ood)) == {"libero_10": 1, "libero_goal": 1, "libero_spatial": 1}
    assert (len(sp.train), len(sp.val), len(sp.test_ood)) == (90, 18, 36)
    pl = probe_lists(sp, 0, n_train_tasks=6, n_ood_tasks=3, n_probe_train=36, n_eval_train=18, n_eval_test=18)
    assert len(_tasks(pl["probe_train"] + pl["probe_eval_train"])) == 6
    assert len(_tasks(pl["probe_eval_test"])) == 3


@pytest.mark.parametrize("form", ["canonical", "list", "mapping", "tasks", "stems"])
def test_user_split_file_forms(tmp_path, form):
    avail = {"libero_10/a": [0, 1, 2], "libero_goal/b": [0, 1], "libero_goal/c": [0]}
    want = [
        "libero_10/a/demo_0",
        "libero_10/a/demo_1",
        "libero_10/a/demo_2",
        "libero_goal/b/demo_0",
        "libero_goal/b/demo_1",
    ]
    data = {
        "canonical": {"format": "libero-split-v1", "episodes": want},
        "list": want,
        "mapping": {"libero_10/a": ["demo_0", 1, "2"], "b": ["demo_0", "demo_1"]},
        "tasks": ["libero_10/a", "libero_goal/b"],
        "stems": ["a", "b"],
    }[form]
    p = tmp_path / "train.json"
    p.write_text(json.dumps(data))
    assert load_episode_file(p, avail) == want


def test_user_split_errors(tmp_path):
    avail = {"libero_10/a": [0, 1], "libero_90/a": [0], "libero_goal/b": [0]}
    p = tmp_path / "x.json"
    p.write_text(json.dumps(["a"]))
    with pytest.raises(SplitError, match="ambiguous"):
        load_episode_file(p, avail)
    p.write_text(json.dumps(["libero_goal/b/demo_7"]))
    with pytest.raises(SplitError, match="does not exist"):
        load_episode_file(p, avail)
    bad = Split(train=["libero_10/a/demo_0"], val=[], test_ood=["libero_10/a/demo_1"])
    with pytest.raises(SplitError, match="task libero_10/a is in both train and test_ood"):
        validate_split(bad)
    with pytest.raises(SplitError, match="share episode"):
        validate_probe(
            {"probe_train": ["libero_10/a/demo_0"], "probe_eval_train": ["libero_10/a/demo_0"], "probe_eval_test": []},
            Split(["libero_10/a/demo_0"], [], []),
        )
