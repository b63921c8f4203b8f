"""Bad input outside the trap table (issue 29): huge demo ids, broken file links, folder link loops."""

from __future__ import annotations

import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from dreamer4_libero.data import synthetic
from dreamer4_libero.data.libero import TaskFileReader
from dreamer4_libero.data.libero_discovery import LiberoFormatError, discover_task_files
from dreamer4_libero.data.libero_values import missing_ids
from dreamer4_libero.data.preprocess import preprocess


@pytest.fixture()
def one_task(tmp_path) -> Path:
    root = tmp_path / "libero"
    synthetic.generate(root, synthetic.cycle_task_ids(2), n_demos=2, len_range=(6, 6), seed=0, progress=False)
    return root


def test_missing_ids_counts_gaps_without_building_the_range():
    assert missing_ids([0, 1, 2], 20) == (0, [])
    assert missing_ids([0, 3, 5], 20) == (3, [1, 2, 4])
    assert missing_ids([2], 1) == (2, [0])
    huge = int("9" * 30)
    t0 = time.perf_counter()
    n, shown = missing_ids([0, huge], 20)
    assert n == huge - 1 and shown == list(range(1, 21))
    assert time.perf_counter() - t0 < 0.1


def test_a_demo_id_of_thirty_nines_is_a_warning_not_a_memory_error(one_task):
    task = discover_task_files(one_task)[0][0]
    huge = "demo_" + "9" * 30
    with h5py.File(task.path, "r+") as f:
        f["data"].move("demo_1", huge)
    t0 = time.perf_counter()
    with TaskFileReader(task) as r:
        recs = list(r.demos())
    assert time.perf_counter() - t0 < 10
    assert [x.name for x in recs] == ["demo_0", huge]
    gap = [w for w in r.report.warnings if "not contiguous" in w]
    assert len(gap) == 1 and f"({int('9' * 30) - 1} in all)" in gap[0] and "missing [1, 2, 3" in gap[0]


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_a_broken_file_link_is_an_unreadable_file_not_a_missing_task(one_task, tmp_path, kind):
    suite = sorted(p for p in one_task.iterdir() if p.is_dir())[0]
    link = suite / "ghost_task_demo.hdf5"
    if kind == "dangling":
        os.symlink(suite / "nowhere.hdf5", link)
    else:
        os.symlink(link, link)  # a link to itself: ELOOP
    tasks, warnings = discover_task_files(one_task)
    assert any(t.path == link for t in tasks), "the link must not be dropped silently"
    words = "dangling symbolic link" if kind == "dangling" else "symbolic link loop"
    assert any(w.startswith(f"{suite.name}/ghost_task_demo.hdf5: unreadable: {words}") for w in warnings), warnings
    out = tmp_path / "pre"
    with pytest.raises(LiberoFormatError) as e:  # error policy: the file is named
        preprocess(one_task, out, progress=False)
    assert "ghost_task_demo.hdf5" in str(e.value) and "readable HDF5" in str(e.value)
    assert not (out / "manifest.json").exists()
    man = preprocess(one_task, tmp_path / "pre_skip", on_bad_demo="skip", progress=False)  # skip: counted
    assert man["totals"]["files_skipped"] == 1 and man["totals"]["tasks"] == 2


def test_a_folder_link_loop_is_not_followed(one_task):
    suite = sorted(p for p in one_task.iterdir() if p.is_dir())[0]
    os.symlink("..", suite / "again")  # suite/again -> the root
    os.symlink(".", suite / "self")  # suite/self -> suite
    tasks, warnings = discover_task_files(one_task)
    assert len(tasks) == 2
    loops = [w for w in warnings if "symbolic link loop" in w]
    assert sorted(w.split(":")[0] for w in loops) == [f"{suite.name}/again", f"{suite.name}/self"], warnings
    assert not any("nested" in w or "duplicate" in w for w in warnings)


def test_nothing_usable_under_skip_repeats_the_skip_reasons(one_task, tmp_path):
    """issue 29 item 7: the final error says why everything was skipped, with counts per reason."""
    suite = sorted(p for p in one_task.iterdir() if p.is_dir())[0]
    os.symlink(suite / "nowhere.hdf5", suite / "ghost_task_demo.hdf5")
    out = tmp_path / "pre"
    with pytest.raises(LiberoFormatError) as e:  # every demo is 6 frames, shorter than min_demo_len 10
        preprocess(one_task, out, on_bad_demo="skip", min_demo_len=10, progress=False)
    msg = str(e.value)
    assert "no usable demo left" in msg and "4 demos and 3 files skipped" in msg, msg
    assert (
        "Skip reasons: 4 x too short: expected T >= 10, found T=6; 1 x libero_10/ghost_task_demo.hdf5: "
        "expected a readable HDF5 file, found FileNotFoundError" in msg
    ), msg
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize("trap", ["actions_nan", "missing_actions"])
def test_a_skipped_demo_still_counts_in_the_total_check(tmp_path, trap):
    """issue 29 item 4: under skip, a skipped demo's frames are in the file's `total`: no false warning."""
    root = tmp_path / "libero"
    tid = synthetic.cycle_task_ids(1)
    synthetic.generate(
        root,
        tid,
        n_demos=3,
        len_range=(6, 6),
        seed=0,
        progress=False,
        traps=[{"trap": trap, "task": tid[0], "demo": 1}],
    )
    task = discover_task_files(root)[0][0]
    with h5py.File(task.path, "r") as f:
        assert int(f["data"].attrs["total"]) == 18  # the file's own total is right
    with TaskFileReader(task, on_bad_demo="skip") as r:
        recs = list(r.demos())
    assert [x.name for x in recs] == ["demo_0", "demo_2"] and len(r.report.demos_skipped) == 1
    assert not any("attr total" in w for w in r.report.warnings), r.report.warnings


@pytest.mark.parametrize("how", ["vlen_utf8", "fixed_bytes"])
def test_non_utf8_problem_info_is_replaced_and_warned(one_task, tmp_path, how):
    """issue 29 item 5: undecodable bytes in problem_info become U+FFFD with a warning naming file and
    attribute; the manifest stays writable as UTF-8."""
    task = discover_task_files(one_task)[0][0]
    raw = b'{"language_instruction": "pick \xff\xfe bowl"}'
    with h5py.File(task.path, "r+") as f:
        del f["data"].attrs["problem_info"]
        if how == "vlen_utf8":
            f["data"].attrs.create("problem_info", data=raw, dtype=h5py.string_dtype("utf-8"))
        else:
            f["data"].attrs["problem_info"] = np.bytes_(raw)
    with TaskFileReader(task) as r:
        list(r.demos())
    assert r.report.instruction == "pick \ufffd\ufffd bowl"
    bad = [w for w in r.report.warnings if "problem_info" in w and "UTF-8" in w]
    assert len(bad) == 1, r.report.warnings
    man = preprocess(one_task, tmp_path / "pre", progress=False)
    text = (tmp_path / "pre" / "manifest.json").read_bytes().decode("utf-8")  # strict: no surrogates
    assert "\\udc" not in text and any("problem_info" in w for f in man["files"] for w in f["warnings"])


@pytest.mark.parametrize("how", ["soft_link", "copy"])
def test_a_linked_or_copied_demo_is_a_duplicate(one_task, tmp_path, how):
    """issue 29 item 6: demo_2 -> demo_0 (soft link) or a byte copy: an error naming both under `error`,
    one kept under `skip`."""
    task = discover_task_files(one_task)[0][0]
    with h5py.File(task.path, "r+") as f:
        if how == "soft_link":
            f["data/demo_2"] = h5py.SoftLink("/data/demo_0")
        else:
            f.copy(f["data/demo_0"], f["data"], name="demo_2")
        f["data"].attrs["num_demos"] = 3
    with pytest.raises(LiberoFormatError) as e:
        with TaskFileReader(task) as r:
            list(r.demos())
    assert "data/demo_2" in str(e.value) and "demo_0" in str(e.value) and "distinct demo" in str(e.value)
    with TaskFileReader(task, on_bad_demo="skip") as r:
        recs = list(r.demos())
    assert [x.name for x in recs] == ["demo_0", "demo_1"]
    assert [d["demo"] for d in r.report.demos_skipped] == ["demo_2"]
    assert ("a link" if how == "soft_link" else "the same actions") in r.report.demos_skipped[0]["reason"]


def _break(root: Path, case: str) -> None:
    suite = sorted(p for p in root.iterdir() if p.is_dir())[0]
    if case == "dangling_link":
        os.symlink(suite / "nowhere.hdf5", suite / "ghost_task_demo.hdf5")
    elif case == "linked_demo":
        task = discover_task_files(root)[0][0]
        with h5py.File(task.path, "r+") as f:
            f["data/demo_2"] = h5py.SoftLink("/data/demo_0")
            f["data"].attrs["num_demos"] = 3


@pytest.mark.parametrize(
    "case,args,words",
    [
        ("dangling_link", [], ["ghost_task_demo.hdf5", "expected a readable HDF5 file, found FileNotFoundError"]),
        ("linked_demo", [], ["data/demo_2", "demo_0", "distinct demo"]),
        (
            "dangling_link",
            ["--on-bad-demo", "skip", "--min-demo-len", "10"],
            ["no usable demo left", "4 x too short: expected T >= 10, found T=6", "ghost_task_demo.hdf5"],
        ),
    ],
)
def test_the_preprocess_cli_exits_2_naming_the_problem_and_writes_no_manifest(one_task, tmp_path, case, args, words):
    """The same cases through `workflow_scripts/preprocess.py` (what rule `preprocess` runs)."""
    import subprocess
    import sys

    from conftest import REPO, venv_env

    _break(one_task, case)
    out = tmp_path / "pre"
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "workflow_scripts/preprocess.py"),
            "--libero-root",
            str(one_task),
            "--out",
            str(out),
            "--no-progress",
            *args,
        ],
        capture_output=True,
        text=True,
        env=venv_env(),
    )
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.split("ERROR: ", 1)[1]
    for w in words:
        assert w in err, err
    assert "Traceback" not in r.stderr
    assert not (out / "manifest.json").exists()
