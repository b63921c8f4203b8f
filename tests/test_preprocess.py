"""Preprocessing stage: shards, manifest, resumability, byte-identical reruns, CLI errors, corrupt input."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dreamer4_libero.data.preprocess import preprocess
from dreamer4_libero.data.shards import ShardStore
from dreamer4_libero.fileio import read_json, sha256_file

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "workflow_scripts" / "preprocess.py"


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under folder (except the checksum cache), relative path -> bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".cache" not in p.parts
    }


def test_manifest_matches_ground_truth(preprocessed, synthetic_root):
    m = read_json(preprocessed / "manifest.json")
    gt = read_json(synthetic_root / "_synthetic_ground_truth.json")
    assert m["totals"]["files"] == 12 and m["totals"]["demos_kept"] == 144 and m["totals"]["demos_skipped"] == 0
    store = ShardStore(preprocessed / "manifest.json")
    assert len(store.episodes) == 144
    for f in m["files"]:
        assert f["sha256"] == sha256_file(synthetic_root / f["rel_path"])
        assert f["size"] == (synthetic_root / f["rel_path"]).stat().st_size
        assert f["image_convention"] == "opengl" and not f["convention_assumed"]
        assert f["demos_kept"] == [f"demo_{k}" for k in range(12)]  # numeric, not lexical, order
        for d in f["demos"]:
            frames, actions = store.episode(f"{f['task_id']}/{d['name']}")
            assert frames.shape == (d["T"], 128, 128, 3) and actions.shape == (d["T"], 7)
            assert d["first_frame_sha256"] == _gt_first_hash(gt, f["task_id"], d["name"])
            np.testing.assert_allclose(d["action_sum"], actions.sum(0))  # raw, unshifted actions
            assert d["action_min"] == actions.min(0).tolist()


def _gt_first_hash(gt: dict, task_id: str, demo: str) -> str:
    """The generator's record of the upright first frame (format owned by synthetic.py)."""
    task = gt["tasks"][task_id] if isinstance(gt.get("tasks"), dict) else None
    if task is None:
        raise AssertionError(f"ground truth has no task {task_id}: keys {list(gt)[:5]}")
    demos = task["demos"]
    entry = demos[demo] if isinstance(demos, dict) else demos[int(demo[5:])]
    return entry["first_frame_sha256"]


def test_rerun_reuses_and_is_byte_identical(tmp_path, synthetic_root):
    out = tmp_path / "a"
    preprocess(synthetic_root, out, workers=1, min_demo_len=32, progress=False)
    first = _tree(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("frames.npy")}
    preprocess(synthetic_root, out, workers=2, min_demo_len=32, progress=False)
    assert _tree(out) == first
    assert {p: p.stat().st_mtime_ns for p in out.rglob("frames.npy")} == mtimes  # reused, not rewritten


@pytest.mark.fault(
    fault="preprocessing SIGKILLed after 4 of 12 task files",
    guarantee="no manifest.json (nothing looks complete); the rerun is byte-identical to a clean run",
)
def test_killed_midway_then_rerun_is_byte_identical(tmp_path, synthetic_root):
    ref = tmp_path / "ref"
    preprocess(synthetic_root, ref, workers=1, min_demo_len=32, progress=False)
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--libero-root",
        str(synthetic_root),
        "--out",
        str(out),
        "--workers",
        "1",
        "--min-demo-len",
        "32",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("shards/*/*/entry.json"))) < 4:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(out.glob("shards/*/*/entry.json")))
    assert 4 <= done < 12, f"kill landed after {done} of 12 shards"
    assert not (out / "manifest.json").exists()  # nothing looks complete
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert _tree(out) == _tree(ref)
    assert not list(out.rglob("*.tmp"))


def test_cli_bad_input_exits_nonzero_naming_file(tmp_path):
    from conftest import write_libero_file

    root = tmp_path / "root"
    frames = np.zeros((40, 128, 128, 3), np.uint8)
    acts = np.zeros((40, 7))
    acts[5, 2] = np.nan
    write_libero_file(root / "libero_goal" / "turn_on_the_stove_demo.hdf5", [(frames, acts)])
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--libero-root", str(root), "--out", str(tmp_path / "o"), "--no-progress"],
        capture_output=True,
        text=True,
    )
    assert res.returncode != 0
    assert "turn_on_the_stove_demo.hdf5" in res.stderr and "demo_0" in res.stderr and "actions" in res.stderr
    assert not (tmp_path / "o" / "manifest.json").exists()
    # the same under skip: nothing usable is left, which is an error too
    res = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--libero-root",
            str(root),
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
            "--on-bad-demo",
            "skip",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode != 0 and "no usable demo" in res.stderr


def test_skip_policy_records_reasons(tmp_path):
    from conftest import write_libero_file

    root = tmp_path / "root"
    good = (np.zeros((40, 128, 128, 3), np.uint8), np.zeros((40, 7)))
    bad_acts = np.zeros((40, 7))
    bad_acts[0, 0] = np.inf
    short = (np.zeros((10, 128, 128, 3), np.uint8), np.zeros((10, 7)))
    write_libero_file(root / "libero_10" / "a_demo.hdf5", [good, (good[0], bad_acts), short])
    m = preprocess(root, tmp_path / "o", on_bad_demo="skip", min_demo_len=32, progress=False)
    f = m["files"][0]
    assert f["demos_kept"] == ["demo_0"]
    reasons = {d["demo"]: d["reason"] for d in f["demos_skipped"]}
    assert set(reasons) == {"demo_1", "demo_2"}
    assert m["totals"]["demos_skipped"] == 2


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(
            "garbage",
            marks=pytest.mark.fault(
                fault="a LIBERO .hdf5 file of random bytes among good ones",
                guarantee="preprocessing exits non-zero naming the file; no manifest.json, no shard or temp for it",
            ),
        ),
        pytest.param(
            "truncated",
            marks=pytest.mark.fault(
                fault="a LIBERO .hdf5 file truncated to half its size among good ones",
                guarantee="preprocessing exits non-zero naming the file; no manifest.json, no shard or temp for it",
            ),
        ),
        pytest.param(
            "corrupt_chunk",
            marks=pytest.mark.fault(
                fault="a corrupt gzip chunk in the 3rd demo of a LIBERO file (it opens; 2 demos read first)",
                guarantee="exits non-zero naming file, demo and dataset; the 2 demos read are not left as a shard",
            ),
        ),
    ],
)
def test_corrupt_hdf5_fails_naming_the_file_and_writes_no_manifest(tmp_path, how):
    from conftest import write_libero_file

    root, out = tmp_path / "root", tmp_path / "out"
    demo = (np.zeros((40, 128, 128, 3), np.uint8), np.zeros((40, 7)))
    for i, name in enumerate(("a_first_task_demo.hdf5", "b_second_task_demo.hdf5")):  # two different files
        write_libero_file(root / "libero_goal" / name, [demo, (demo[0], demo[1] + 0.1 * i + 0.05)])  # distinct demos
    bad = root / "libero_goal" / "z_broken_task_demo.hdf5"  # sorted last: the good files are done first
    raw = (root / "libero_goal" / "a_first_task_demo.hdf5").read_bytes()
    rng = random.Random(5)
    if how == "corrupt_chunk":
        import h5py

        write_libero_file(bad, [(demo[0], demo[1] + 0.01 * k) for k in range(3)])  # 3 distinct demos
        key = "data/demo_2/obs/agentview_rgb"
        with h5py.File(bad, "r+") as f:  # demo_2's frames chunked + gzip, then one chunk's bytes flipped
            del f[key]
            f.create_dataset(
                key, data=np.zeros((40, 128, 128, 3), np.uint8), chunks=(8, 128, 128, 3), compression="gzip"
            )
        with h5py.File(bad, "r") as f:
            info = f[key].id.get_chunk_info(0)
        with open(bad, "r+b") as fh:
            fh.seek(info.byte_offset + 2)
            fh.write(bytes(b ^ 0xFF for b in range(min(64, info.size - 2))))
    else:
        bad.write_bytes(bytes(rng.randrange(256) for _ in range(4096)) if how == "garbage" else raw[: len(raw) // 2])
    res = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--libero-root",
            str(root),
            "--out",
            str(out),
            "--workers",
            "1",
            "--min-demo-len",
            "32",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2, res.stderr[-3000:]
    expected = (
        "z_broken_task_demo.hdf5: data/demo_2/obs/agentview_rgb: expected a readable"
        if how == "corrupt_chunk"
        else "z_broken_task_demo.hdf5: expected a readable HDF5 file"
    )
    assert f"ERROR: libero_goal/{expected}" in res.stderr, res.stderr[-3000:]
    assert not (out / "manifest.json").exists()
    shards = sorted(p.name for p in (out / "shards" / "libero_goal").iterdir())
    assert shards == ["a_first_task", "b_second_task"], shards  # complete shards of the good files only
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*.tmp"))


def _root_with_duplicates(tmp_path) -> Path:
    """libero_goal: a, b = a copy of a, c = a symlink to a, d different; libero_10: e = a symlink to d (first in
    task-id order, so e is kept and d is its duplicate)."""
    import os

    from conftest import write_libero_file

    root = tmp_path / "root"
    rng = np.random.default_rng(0)

    def demo():
        return rng.integers(0, 255, (34, 128, 128, 3), dtype=np.uint8), rng.uniform(-1, 1, (34, 7))

    a = write_libero_file(root / "libero_goal" / "a_demo.hdf5", [demo()])
    (root / "libero_goal" / "b_demo.hdf5").write_bytes(a.read_bytes())
    os.symlink(a, root / "libero_goal" / "c_demo.hdf5")
    d = write_libero_file(root / "libero_goal" / "d_demo.hdf5", [demo()])
    (root / "libero_10").mkdir()
    os.symlink(d, root / "libero_10" / "e_demo.hdf5")
    return root


@pytest.mark.fault(
    fault="task files with identical content: a copy and symlinks of other task files",
    guarantee="error naming both files of each pair (exit non-zero, no manifest); under skip the "
    "first of each is kept, the others warned about and listed in the manifest",
)
def test_duplicate_task_files_are_an_error_naming_both(tmp_path):
    from dreamer4_libero.data.libero_discovery import LiberoFormatError

    root = _root_with_duplicates(tmp_path)
    with pytest.raises(LiberoFormatError) as e:
        preprocess(root, tmp_path / "o", min_demo_len=32, progress=False)
    msg = str(e.value)
    assert "3 task file(s) with the same content as another" in msg, msg
    assert "libero_goal/b_demo.hdf5 is a copy of libero_goal/a_demo.hdf5" in msg, msg
    assert "libero_goal/c_demo.hdf5 is the same file as libero_goal/a_demo.hdf5" in msg, msg
    assert "libero_goal/d_demo.hdf5 is the same file as libero_10/e_demo.hdf5" in msg, msg
    assert "data.on_bad_demo: skip" in msg
    assert not (tmp_path / "o" / "manifest.json").exists()

    m = preprocess(root, tmp_path / "o", on_bad_demo="skip", min_demo_len=32, progress=False)
    assert [f["rel_path"] for f in m["files"]] == ["libero_10/e_demo.hdf5", "libero_goal/a_demo.hdf5"]
    assert [(d["rel_path"], d["duplicate_of"]) for d in m["duplicates_skipped"]] == [
        ("libero_goal/b_demo.hdf5", "libero_goal/a_demo.hdf5"),
        ("libero_goal/c_demo.hdf5", "libero_goal/a_demo.hdf5"),
        ("libero_goal/d_demo.hdf5", "libero_10/e_demo.hdf5"),
    ]
    assert m["duplicates_skipped"][0]["sha256"] == sha256_file(root / "libero_goal" / "a_demo.hdf5")
    assert m["totals"]["duplicates_skipped"] == 3 and m["totals"]["files"] == 2 and m["totals"]["demos_kept"] == 2
    assert sum("duplicate task file skipped" in w for w in m["discovery_warnings"]) == 3
    assert sorted(p.name for p in (tmp_path / "o" / "shards").glob("*/*")) == ["a", "e"]


def test_cli_duplicate_task_files(tmp_path):
    root = _root_with_duplicates(tmp_path)
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--libero-root",
        str(root),
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
        "--min-demo-len",
        "32",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert "libero_goal/b_demo.hdf5 is a copy of libero_goal/a_demo.hdf5" in res.stderr, res.stderr
    assert not (tmp_path / "o" / "manifest.json").exists()
    res = subprocess.run(cmd + ["--on-bad-demo", "skip"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "duplicate task file skipped" in res.stderr and "libero_goal/d_demo.hdf5 is the same file" in res.stderr
    m = read_json(tmp_path / "o" / "manifest.json")
    assert m["totals"]["duplicates_skipped"] == 3 and len(m["files"]) == 2
