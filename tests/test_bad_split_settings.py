"""Split and probe-list settings that cannot work on the data (issue 29 items 8-9), through the
splits CLI (`workflow_scripts/make_splits.py`, what rule `splits` runs): exit 2, a message naming
the config key, the pool and expected vs found, and no split file left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dreamer4_libero.data.tasks import SUITES, all_task_ids

from conftest import REPO, venv_env

SPLIT = {
    "split_seed": 0,
    "ood_fraction": 0.2,
    "train_demo_fraction": 0.8,
    "train_file": None,
    "val_file": None,
    "test_ood_file": None,
}
PROBE = {
    "seeds": [0, 1],
    "task_seed": 0,
    "reseed_tasks": False,
    "n_train_tasks": 2,
    "n_ood_tasks": 1,
    "n_probe_train": 4,
    "n_eval_train": 2,
    "n_eval_test": 3,
    "probe_train_file": None,
    "eval_train_file": None,
    "eval_test_file": None,
}


def _manifest(path: Path, tasks: list[str], n_demos: int = 5) -> Path:
    """The part of preprocess's manifest the split stage reads (libero_data.md §7.2 step 1)."""
    files = [{"task_id": t, "skipped_file": False, "demos_kept": [f"demo_{k}" for k in range(n_demos)]} for t in tasks]
    path.write_text(json.dumps({"files": files}))
    return path


def _tasks_per_suite(n: int) -> list[str]:
    ids = all_task_ids()
    return [t for s in SUITES for t in [x for x in ids if x.startswith(s + "/")][:n]]


def _run(tmp_path: Path, manifest: Path, split: dict | None = None, probe: dict | None = None):
    out = tmp_path / "splits"
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "workflow_scripts/make_splits.py"),
            "--manifest",
            str(manifest),
            "--out",
            str(out),
            "--split",
            json.dumps({**SPLIT, **(split or {})}),
            "--probe",
            json.dumps({**PROBE, **(probe or {})}),
        ],
        capture_output=True,
        text=True,
        env=venv_env(),
        cwd=REPO,
    )
    return r, out


def _written(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) if out.exists() else []


def test_good_settings_write_the_whole_set(tmp_path):
    r, out = _run(tmp_path, _manifest(tmp_path / "m.json", _tasks_per_suite(3)))
    assert r.returncode == 0, r.stderr
    files = _written(out)
    assert "summary.json" in files and "test_ood.json" in files
    assert len([f for f in files if f.startswith("probe/")]) == 6  # 2 seeds x 3 lists
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sets"]["test_ood"]["tasks"] == 5  # round(0.2 x 3) = 1 task of each of the 5 suites


def test_one_task_per_suite_rounds_to_an_empty_test_ood(tmp_path):
    r, out = _run(tmp_path, _manifest(tmp_path / "m.json", _tasks_per_suite(1)))
    assert r.returncode == 2
    err = r.stderr
    assert "split.ood_fraction = 0.2 gives an empty test_ood" in err
    assert "round(0.2 x n) is 0 for every suite of the 5 preprocessed tasks" in err
    assert "'libero_10': 1" in err and "set split.ood_fraction >= 0.5" in err
    assert _written(out) == []


def test_ood_fraction_one_leaves_no_train_task(tmp_path):
    r, out = _run(tmp_path, _manifest(tmp_path / "m.json", _tasks_per_suite(2)), split={"ood_fraction": 1.0})
    assert r.returncode == 2
    assert "split.ood_fraction = 1.0 leaves no train task" in r.stderr and "lower split.ood_fraction" in r.stderr
    assert _written(out) == []


@pytest.mark.parametrize("key,n,pool,found", [("n_train_tasks", 27, "train", 10), ("n_ood_tasks", 7, "test_ood", 5)])
def test_a_probe_task_count_larger_than_its_pool_names_the_key_and_writes_nothing(tmp_path, key, n, pool, found):
    """The probe-list step fails after the split is built: train/val/test_ood.json stay unwritten."""
    r, out = _run(tmp_path, _manifest(tmp_path / "m.json", _tasks_per_suite(3)), probe={key: n})
    assert r.returncode == 2
    assert f"probe.{key} = {n} cannot be met: its pool, the tasks of {pool}.json, holds {found} tasks" in r.stderr
    assert f"set probe.{key} <= {found}" in r.stderr
    assert _written(out) == []


def test_too_few_probe_episodes_name_the_keys(tmp_path):
    r, out = _run(tmp_path, _manifest(tmp_path / "m.json", _tasks_per_suite(3)), probe={"n_probe_train": 50})
    assert r.returncode == 2
    assert (
        "the 2 probe train tasks (probe.n_train_tasks) hold 8 train.json episodes, need "
        "probe.n_probe_train + probe.n_eval_train = 50 + 2"
    ) in r.stderr
    assert _written(out) == []


def test_a_rerun_with_fewer_seeds_drops_their_stale_folders(tmp_path):
    """A rerun with fewer seeds removes the old seed folders; its summary.json is rewritten last."""
    m = _manifest(tmp_path / "m.json", _tasks_per_suite(3))
    assert _run(tmp_path, m)[0].returncode == 0
    r, out = _run(tmp_path, m, probe={"seeds": [0]})
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (out / "probe").iterdir()) == ["seed0"]


@pytest.mark.fault(
    fault="a split file cannot be written (its folder is taken by a file) after others were",
    guarantee="summary.json, the set's completion marker, is absent: the set does not look complete",
)
def test_a_write_that_fails_midway_leaves_no_summary(tmp_path):
    m = _manifest(tmp_path / "m.json", _tasks_per_suite(3))
    assert _run(tmp_path, m)[0].returncode == 0
    out = tmp_path / "splits"
    import shutil

    shutil.rmtree(out / "probe" / "seed1")
    (out / "probe" / "seed1").write_text("not a folder")
    r, _ = _run(tmp_path, m)
    assert r.returncode != 0
    assert not (out / "summary.json").exists()
    assert (out / "train.json").exists()  # written before the failure, but the set has no summary


def _user_files(tmp_path: Path, val: list[str]) -> dict:
    tasks = _tasks_per_suite(2)
    ood = [t for t in tasks if t.startswith("libero_10/")]
    train = [t for t in tasks if t not in ood]
    files = {
        "train": [f"{t}/demo_{k}" for t in train for k in range(4)],
        "val": val,
        "test_ood": [f"{t}/demo_{k}" for t in ood for k in range(4)],
    }
    cfg = {}
    for k, eps in files.items():
        (tmp_path / f"{k}.json").write_text(json.dumps(eps))
        cfg[f"{k}_file"] = str(tmp_path / f"{k}.json")
    return cfg


def test_a_user_val_episode_of_a_test_ood_task_is_refused(tmp_path):
    """Item 9: the episode (demo_4) is in no other set, but its task is held out."""
    m = _manifest(tmp_path / "m.json", _tasks_per_suite(2))
    ood_task = [t for t in _tasks_per_suite(2) if t.startswith("libero_10/")][0]
    train_task = _tasks_per_suite(2)[-1]
    cfg = _user_files(tmp_path, [f"{train_task}/demo_4", f"{ood_task}/demo_4"])
    r, out = _run(tmp_path, m, split=cfg, probe={"n_train_tasks": 1, "n_probe_train": 2, "n_eval_test": 2})
    assert r.returncode == 2
    assert (
        f"{tmp_path / 'val.json'} (split.val_file): episode {ood_task}/demo_4 is of task {ood_task}, a test_ood "
        f"task; val must hold unseen demos of train tasks only (1 such episodes from 1 tasks)"
    ) in r.stderr
    assert _written(out) == []


def test_a_user_val_episode_of_an_unlisted_task_is_refused(tmp_path):
    tasks = _tasks_per_suite(3)
    m = _manifest(tmp_path / "m.json", tasks)
    other = [t for t in tasks if t not in _tasks_per_suite(2)][0]
    cfg = _user_files(tmp_path, [f"{other}/demo_0"])
    r, out = _run(tmp_path, m, split=cfg)
    assert r.returncode == 2
    assert f"episode {other}/demo_0 is of task {other}, not a train task" in r.stderr
    assert _written(out) == []


def test_a_user_test_ood_file_with_no_episode_is_refused(tmp_path):
    m = _manifest(tmp_path / "m.json", _tasks_per_suite(2))
    cfg = _user_files(tmp_path, [])
    Path(cfg["test_ood_file"]).write_text("[]")
    r, out = _run(tmp_path, m, split=cfg)
    assert r.returncode == 2
    assert f"{cfg['test_ood_file']}: split.test_ood_file names no episode; test_ood needs at least one task" in r.stderr
    assert _written(out) == []
