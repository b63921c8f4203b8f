"""Tests for the synthetic LIBERO-format generator (libero_data.md §2, §3, §8; data_contracts.md)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from dreamer4_libero.data import synthetic as sy
from dreamer4_libero.data import synthetic_traps as traps_mod
from dreamer4_libero.data import synthetic_world as world
from dreamer4_libero.data.tasks import SUITES

REPO = Path(__file__).resolve().parents[1]
DEMO_RE = re.compile(r"^demo_\d+$")


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _file_sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _task_path(root: Path, task_id: str) -> Path:
    suite, stem = task_id.split("/")
    return root / suite / f"{stem}_demo.hdf5"


def _demo_names(data: h5py.Group) -> list[str]:
    return sorted((k for k in data.keys() if DEMO_RE.match(k)), key=lambda s: int(s[5:]))


def _gt(root: Path) -> dict:
    return json.loads((root / sy.GROUND_TRUTH_NAME).read_text())


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    """The demo dataset: 12 tasks × 12 demos × 48–80 frames (also used by the probe)."""
    root = tmp_path_factory.mktemp("syn_demo")
    sy.generate(root, sy.demo_task_ids(), n_demos=12, len_range=(48, 80), seed=0, progress=False)
    return root


TRAP_DEMO = 1
TRAP_N_DEMOS = 3


@pytest.fixture(scope="module")
def trap_root(tmp_path_factory) -> tuple[Path, dict[str, str], dict]:
    """One trap per task (trap i on task i), 3 short demos per task; demo traps hit demo_1."""
    root = tmp_path_factory.mktemp("syn_traps")
    tids = sy.cycle_task_ids(len(traps_mod.TRAP_NAMES))
    assign = dict(zip(traps_mod.TRAP_NAMES, tids))
    traps = [{"trap": n, "task": t, "demo": TRAP_DEMO} for n, t in assign.items()]
    summary = sy.generate(root, tids, n_demos=TRAP_N_DEMOS, len_range=(12, 16), seed=5, traps=traps, progress=False)
    return root, assign, summary


# ---------------------------------------------------------------------------------------------
# API: task ids
# ---------------------------------------------------------------------------------------------
def test_task_id_helpers():
    ids = sy.demo_task_ids()
    assert len(ids) == 12
    for i, s in enumerate(("libero_10", "libero_goal", "libero_spatial")):
        assert ids[4 * i : 4 * i + 4] == [f"{s}/{t}" for t in SUITES[s][:4]]
    all_ids = {f"{s}/{t}" for s, v in SUITES.items() for t in v}
    c = sy.cycle_task_ids(130)
    assert len(set(c)) == 130 and set(c) == all_ids
    c7 = sy.cycle_task_ids(7)
    assert c7 == c[:7] and len({t.split("/")[0] for t in c7}) == 5
    with pytest.raises(ValueError):
        sy.cycle_task_ids(131)
    with pytest.raises(ValueError):
        sy.cycle_task_ids(0)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="valid trap names: .*zero_bytes"):
        sy.generate(tmp_path, sy.cycle_task_ids(2), n_demos=2, len_range=(8, 9), traps=["nope"], progress=False)
    with pytest.raises(ValueError, match="out of range"):
        sy.generate(
            tmp_path,
            sy.cycle_task_ids(2),
            n_demos=2,
            len_range=(8, 9),
            traps=[{"trap": "actions_nan", "demo": 5}],
            progress=False,
        )
    with pytest.raises(ValueError, match="not among"):
        sy.generate(
            tmp_path,
            sy.cycle_task_ids(2),
            n_demos=2,
            len_range=(8, 9),
            traps=["actions_nan:libero_10/nope:0"],
            progress=False,
        )
    with pytest.raises(ValueError):
        sy.generate(tmp_path, ["no_slash"], n_demos=2, len_range=(8, 9), progress=False)
    with pytest.raises(ValueError):
        sy.generate(tmp_path, sy.cycle_task_ids(2), n_demos=2, len_range=(9, 8), progress=False)
    assert not any(tmp_path.iterdir())  # nothing written on bad arguments


# ---------------------------------------------------------------------------------------------
# layout, attributes, dtypes, shapes (§2)
# ---------------------------------------------------------------------------------------------
def test_layout_and_attrs(demo_root):
    ids = sy.demo_task_ids()
    hdf5 = sorted(p.relative_to(demo_root).as_posix() for p in demo_root.rglob("*.hdf5"))
    assert hdf5 == sorted(f"{t}_demo.hdf5" for t in ids)
    assert not list(demo_root.rglob(".*tmp*"))  # no temp files left
    gt = _gt(demo_root)
    for tid in ids:
        suite, stem = tid.split("/")
        with h5py.File(_task_path(demo_root, tid), "r") as f:
            assert list(f.keys()) == ["data"]
            a = f["data"].attrs
            for key in ("env_name", "problem_info", "env_args", "bddl_file_name", "macros_image_convention", "tag"):
                assert isinstance(a[key], str), key
            assert a["macros_image_convention"] == "opengl" and a["tag"] == "libero-v1"
            assert a["env_name"].startswith("Libero_")
            assert a["bddl_file_name"].endswith(f"{suite}/{stem}.bddl")
            pi = json.loads(a["problem_info"])
            instr = pi["language_instruction"]
            assert pi["domain_name"] == "robosuite" and instr == instr.lower() and "_" not in instr
            assert instr == gt["tasks"][tid]["instruction"]
            ea = json.loads(a["env_args"])
            kw = ea["env_kwargs"]
            assert ea["type"] == 1 and ea["env_name"] == a["env_name"]
            assert kw["camera_heights"] == 128 and kw["camera_widths"] == 128 and kw["control_freq"] == 20
            assert kw["controller_configs"]["type"] == "OSC_POSE"
            assert kw["camera_names"] == ["robot0_eye_in_hand", "agentview"]
            assert "bddl_file_content" not in a
            names = _demo_names(f["data"])
            assert set(f["data"].keys()) == set(names)
            assert names == [f"demo_{i}" for i in range(12)]
            assert a["num_demos"].dtype == np.int64 and int(a["num_demos"]) == 12
            S = None
            total = 0
            for n in names:
                g = f["data"][n]
                T = int(g.attrs["num_samples"])
                assert g.attrs["num_samples"].dtype == np.int64
                assert 48 <= T <= 80
                total += T
                assert isinstance(g.attrs["model_file"], str) and g.attrs["model_file"].startswith("<mujoco")
                expect = {
                    "actions": (np.float64, (T, 7)),
                    "robot_states": (np.float64, (T, 9)),
                    "rewards": (np.uint8, (T,)),
                    "dones": (np.uint8, (T,)),
                    "obs/agentview_rgb": (np.uint8, (T, 128, 128, 3)),
                    "obs/eye_in_hand_rgb": (np.uint8, (T, 128, 128, 3)),
                    "obs/joint_states": (np.float64, (T, 7)),
                    "obs/gripper_states": (np.float64, (T, 2)),
                    "obs/ee_pos": (np.float64, (T, 3)),
                    "obs/ee_ori": (np.float64, (T, 3)),
                    "obs/ee_states": (np.float64, (T, 6)),
                }
                for key, (dt, shape) in expect.items():
                    assert g[key].dtype == dt and g[key].shape == shape, (tid, n, key)
                assert set(g.keys()) == {"actions", "states", "robot_states", "rewards", "dones", "obs"}
                assert set(g["obs"].keys()) == {k[4:] for k in expect if k.startswith("obs/")}
                st = g["states"][()]
                assert st.dtype == np.float64 and st.shape[0] == T
                S = st.shape[1] if S is None else S
                assert st.shape[1] == S and S in (45, 79, 92, 110)
                np.testing.assert_array_equal(g.attrs["init_state"], st[0])
                for key in ("rewards", "dones"):
                    r = g[key][()]
                    assert r[-1] == 1 and not r[:-1].any()
                gs = g["obs/gripper_states"][()]
                assert (gs[:, 0] >= 0).all() and (gs[:, 1] <= 0).all() and gs[:, 0].max() <= 0.04
                rs = g["robot_states"][()]
                np.testing.assert_array_equal(rs[:, :2], gs)
                np.testing.assert_array_equal(rs[:, 2:5], g["obs/ee_pos"][()])
                np.testing.assert_allclose(np.linalg.norm(rs[:, 5:9], axis=1), 1.0, atol=1e-9)
                ee = np.concatenate([g["obs/ee_pos"][()], g["obs/ee_ori"][()]], 1)
                np.testing.assert_array_equal(g["obs/ee_states"][()], ee)
                ang = np.linalg.norm(g["obs/ee_ori"][()], axis=1)
                assert (ang > 2.0).all() and (ang < 4.3).all()  # near π, not wrapped
                assert T == gt["tasks"][tid]["demos"][n]["T"]
            assert a["total"].dtype == np.int64 and int(a["total"]) == total
            assert gt["tasks"][tid]["state_dim"] == S


def test_demo_order_lexical_differs(demo_root):
    with h5py.File(_task_path(demo_root, sy.demo_task_ids()[0]), "r") as f:
        lexical = list(f["data"].keys())
        numeric = _demo_names(f["data"])
    assert len(numeric) >= 11 and lexical != numeric and sorted(lexical) == sorted(numeric)


# ---------------------------------------------------------------------------------------------
# semantics (§3)
# ---------------------------------------------------------------------------------------------
def test_time_convention(demo_root):
    n_checked = 0
    for tid in sy.demo_task_ids():
        with h5py.File(_task_path(demo_root, tid), "r") as f:
            for n in _demo_names(f["data"]):
                g = f["data"][n]
                st, js = g["states"][()], g["obs/joint_states"][()]
                # obs[k] is the state after actions[k]; states[k] is the state before it
                assert np.array_equal(js[:-1], st[1:, 1:8])
                assert not np.array_equal(js[:-1], st[:-1, 1:8])
                np.testing.assert_allclose(np.diff(st[:, 0]), 0.05, atol=1e-12)
                a = g["actions"][()]
                gs = g["obs/gripper_states"][()]
                close = np.flatnonzero(a[:, 6] > 0)
                assert close.size and close[0] > 0
                k = int(close[0])
                # the first frame showing a closing gripper is the frame of that action's result
                first_closing = int(np.flatnonzero(np.diff(gs[:, 0]) < 0)[0]) + 1
                assert first_closing == k, (tid, n)
                assert gs[k - 1, 0] == pytest.approx(gs[0, 0])  # fully open before
                n_checked += 1
    assert n_checked == 144


def test_images_stored_flipped(demo_root):
    gt = _gt(demo_root)
    for tid in sy.demo_task_ids():
        with h5py.File(_task_path(demo_root, tid), "r") as f:
            for n in _demo_names(f["data"]):
                g = f["data"][n]
                stored = g["obs/agentview_rgb"][0]
                assert _sha(stored[::-1]) == gt["tasks"][tid]["demos"][n]["first_frame_sha256"]
                assert _sha(stored) != gt["tasks"][tid]["demos"][n]["first_frame_sha256"]
                # the gripper centre: upright pixel (row, col) from ee_pos has the robot's colour,
                # i.e. a vertical flip only (no left-right mirror)
                up = g["obs/agentview_rgb"][()][:, ::-1]
                rc = np.rint(world.pixel_of_ee_pos(g["obs/ee_pos"][()])).astype(int)
                px = up[np.arange(len(up)), rc[:, 0], rc[:, 1]].astype(float)
                assert np.abs(px - np.array(world.GRIPPER_RGB)).max() <= 2.0
                assert gt["tasks"][tid]["stored_image_orientation"] == "upside_down"


def test_actions_range_and_ground_truth(demo_root):
    gt = _gt(demo_root)
    for tid in sy.demo_task_ids():
        with h5py.File(_task_path(demo_root, tid), "r") as f:
            for n in _demo_names(f["data"]):
                a = f["data"][n]["actions"][()]
                assert np.isfinite(a).all()
                assert np.abs(a[:, :6]).max() <= 0.9375
                assert set(np.unique(a[:, 6])) <= {-1.0, 1.0} and (a[:, 6] == 1).any()
                d = gt["tasks"][tid]["demos"][n]
                assert d["action_sum"] == [float(x) for x in a.sum(0)]
                assert d["T"] == len(a)
    # actions are smooth but not trivially so: lag-1 autocorrelation of dims 0-5 in (0.3, 0.92)
    with h5py.File(_task_path(demo_root, sy.demo_task_ids()[1]), "r") as f:
        A = [f["data"][n]["actions"][()] for n in _demo_names(f["data"])]
    for d in range(6):
        r = np.corrcoef(np.concatenate([x[:-1, d] for x in A]), np.concatenate([x[1:, d] for x in A]))[0, 1]
        assert 0.3 < r < 0.92, (d, r)


def test_tasks_differ_robot_same(demo_root):
    means, bgs, panels = [], [], []
    for tid in sy.demo_task_ids():
        with h5py.File(_task_path(demo_root, tid), "r") as f:
            names = _demo_names(f["data"])
            means.append(np.concatenate([f["data"][n]["actions"][()] for n in names])[:, :6].mean(0))
            up = f["data"][names[0]]["obs/agentview_rgb"][0][::-1]
            bgs.append(up[2, 2].astype(int))  # wall/table corner of the scene
            panels.append(up[125, 2].astype(int))  # fixed panel
            # robot colour at the gripper centre in every frame of every demo
            for n in names[:3]:
                g = f["data"][n]
                frames = g["obs/agentview_rgb"][()][:, ::-1]
                rc = np.rint(world.pixel_of_ee_pos(g["obs/ee_pos"][()])).astype(int)
                px = frames[np.arange(len(frames)), rc[:, 0], rc[:, 1]].astype(float)
                assert np.abs(px - np.array(world.GRIPPER_RGB)).max() <= 2.0
    means = np.array(means)
    d = np.abs(means[:, None] - means[None]).max(-1)
    assert d[~np.eye(len(means), dtype=bool)].min() > 0.004  # every pair of tasks differs
    assert len({tuple(b) for b in bgs}) == len(bgs)  # backgrounds differ
    assert len({tuple(p) for p in panels}) == 1 and tuple(panels[0]) == tuple(int(x) for x in world.PANEL_RGB)
    # contrast sign fixed: robot brighter than every background
    assert all((np.array(world.GRIPPER_RGB) > b).all() for b in bgs)


# ---------------------------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------------------------
def test_regenerating_into_a_root_removes_only_the_earlier_generations_files(tmp_path):
    """A smaller task set generated into the same root leaves no stale task file for preprocess to pick up;
    files the generator did not write stay."""
    kw = dict(n_demos=2, len_range=(12, 14), progress=False)
    tids = sy.cycle_task_ids(4)
    sy.generate(tmp_path, tids, traps=[{"trap": "non_hdf5_file", "task": tids[3]}], **kw)
    mine = tmp_path / tids[0].split("/")[0] / "my_notes.txt"
    mine.write_text("keep me")
    first = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert len([p for p in first if p.endswith(".hdf5")]) == 4 and any(p.endswith("README.txt") for p in first)
    out = sy.generate(tmp_path, tids[:2], **kw)
    now = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert sorted(p for p in now if p.endswith(".hdf5")) == sorted(out["files"])
    assert not any(p.endswith(("README.txt", "notes.json")) for p in now)  # the earlier trap's side files
    assert mine.read_text() == "keep me"


def test_determinism(tmp_path):
    tids = sy.cycle_task_ids(3)
    kw = dict(
        n_demos=11,
        len_range=(12, 20),
        progress=False,
        traps=[{"trap": "demo_name_padded", "task": tids[1], "demo": 3}, "attrs_bytes"],
    )
    sy.generate(tmp_path / "a", tids, seed=7, **kw)
    sy.generate(tmp_path / "b", tids, seed=7, **kw)
    sy.generate(tmp_path / "c", tids, seed=8, **kw)
    fa = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    fb = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert fa == fb and len(fa) == 4
    for rel in fa:
        assert _file_sha(tmp_path / "a" / rel) == _file_sha(tmp_path / "b" / rel), rel
        if rel.suffix == ".hdf5":
            assert _file_sha(tmp_path / "a" / rel) != _file_sha(tmp_path / "c" / rel), rel
    # a task's content depends on (seed, task index, demo index) only: more demos append
    sy.generate(tmp_path / "d", tids, seed=7, n_demos=12, len_range=(12, 20), progress=False)
    h5 = next(rel for rel in fa if rel.suffix == ".hdf5")
    with h5py.File(tmp_path / "a" / h5, "r") as f1, h5py.File(tmp_path / "d" / h5, "r") as f2:
        assert np.array_equal(f1["data/demo_2/actions"][()], f2["data/demo_2/actions"][()])


# ---------------------------------------------------------------------------------------------
# traps (data_contracts.md, every row)
# ---------------------------------------------------------------------------------------------
def _open_trap(root: Path, tid: str) -> h5py.File:
    return h5py.File(_task_path(root, tid), "r")


def _clean_T(gt: dict, tid: str, k: int = TRAP_DEMO) -> int:
    return gt["tasks"][tid]["demos"][f"demo_{k}"]["T"]


def _check_trap(name: str, root: Path, tid: str, gt: dict) -> None:  # noqa: C901 (a flat table)
    suite, stem = tid.split("/")
    path = _task_path(root, tid)
    dn = f"demo_{TRAP_DEMO}"
    T = _clean_T(gt, tid)
    first_sha = gt["tasks"][tid]["demos"]["demo_0"]["first_frame_sha256"]
    if name == "zero_bytes":
        assert path.stat().st_size == 0
        with pytest.raises(OSError):
            h5py.File(path, "r")
        return
    if name == "truncated":
        note = next(t for t in gt["traps"] if t["trap"] == name)
        assert path.stat().st_size == note["size_before"] // 2 > 0
        with pytest.raises(Exception):
            with h5py.File(path, "r") as f:
                for n in _demo_names(f["data"]):
                    f["data"][n]["obs/agentview_rgb"][()]
        return
    if name == "corrupt_superblock":
        assert not path.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
        with pytest.raises(OSError):
            h5py.File(path, "r")
        return
    if name in ("h5_extension", "no_demo_suffix", "outside_suite"):
        expect = {
            "h5_extension": root / suite / f"{stem}_demo.h5",
            "no_demo_suffix": root / suite / f"{stem}.hdf5",
            "outside_suite": root / f"{stem}_demo.hdf5",
        }[name]
        assert expect.is_file() and not path.exists()
        assert gt["tasks"][tid]["files"] == [expect.relative_to(root).as_posix()]
        with h5py.File(expect, "r") as f:
            assert len(_demo_names(f["data"])) == TRAP_N_DEMOS
        return
    if name == "duplicate_suite":
        other = root / "libero_10" / path.name if suite == "libero_90" else root / "libero_90" / path.name
        assert other.is_file() and _file_sha(other) == _file_sha(path)
        return
    if name == "duplicate_copy_name":
        other = path.parent / f"{stem}_demo (1).hdf5"
        assert other.is_file() and _file_sha(other) == _file_sha(path)
        return
    if name == "non_hdf5_file":
        assert (root / suite / "README.txt").is_file()
        json.loads((root / suite / "notes.json").read_text())
        assert path.is_file()
        return
    with _open_trap(root, tid) as f:
        if name == "no_data_group":
            assert "data" not in f and "payload" in f
            assert len(_demo_names(f["payload"])) == TRAP_N_DEMOS
            return
        data = f["data"]
        names = _demo_names(data)
        a = data.attrs
        if name == "corrupt_dataset_header":
            g = data[dn]
            assert "actions" in g
            with pytest.raises(KeyError):
                g["actions"]
            assert g["obs/agentview_rgb"].shape == (T, 128, 128, 3)  # the rest still reads
            data["demo_0"]["actions"][()]
        elif name == "no_demos":
            assert names == [] and not [k for k in data.keys() if k.startswith("demo")]
        elif name == "missing_images":
            assert "agentview_rgb" not in data[dn]["obs"] and "agentview_rgb" in data["demo_0/obs"]
        elif name == "missing_actions":
            assert "actions" not in data[dn] and "actions" in data["demo_0"]
        elif name == "length_mismatch":
            g = data[dn]
            assert g["actions"].shape == (T - 1, 7)
            assert int(g.attrs["num_samples"]) == T == g["obs/agentview_rgb"].shape[0]
        elif name == "num_samples_wrong":
            g = data[dn]
            assert int(g.attrs["num_samples"]) == T + 3
            assert g["actions"].shape[0] == g["obs/agentview_rgb"].shape[0] == g["states"].shape[0] == T
        elif name == "num_samples_missing":
            g = data[dn]
            assert "num_samples" not in g.attrs and g["actions"].shape[0] == g["obs/agentview_rgb"].shape[0] == T
        elif name == "too_short":
            g = data[dn]
            assert int(g.attrs["num_samples"]) == 1
            for key in (
                "actions",
                "states",
                "robot_states",
                "rewards",
                "dones",
                "obs/agentview_rgb",
                "obs/eye_in_hand_rgb",
                "obs/joint_states",
                "obs/gripper_states",
            ):
                assert g[key].shape[0] == 1, key
            assert int(a["total"]) == sum(int(data[n].attrs["num_samples"]) for n in names)
        elif name.startswith("images_"):
            img = data[dn]["obs/agentview_rgb"]
            expect = {
                "images_float": (np.float32, (T, 128, 128, 3)),
                "images_uint16": (np.uint16, (T, 128, 128, 3)),
                "images_int64": (np.int64, (T, 128, 128, 3)),
                "images_256": (np.uint8, (T, 256, 256, 3)),
                "images_84": (np.uint8, (T, 84, 84, 3)),
                "images_chw": (np.uint8, (T, 3, 128, 128)),
                "images_rgba": (np.uint8, (T, 128, 128, 4)),
                "images_gray": (np.uint8, (T, 128, 128)),
            }[name]
            assert img.dtype == expect[0] and img.shape == expect[1]
            x = img[()]
            if name == "images_float":
                assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
            if name == "images_uint16":
                assert x.max() > 255
            assert data["demo_0/obs/agentview_rgb"].dtype == np.uint8  # other demos untouched
        elif name in ("actions_nan", "actions_inf", "actions_out_of_range", "gripper_not_pm1"):
            x = data[dn]["actions"][()]
            assert x.shape == (T, 7) and x.dtype == np.float64
            if name == "actions_nan":
                assert np.isnan(x).sum() == 1 and np.isfinite(x).sum() == x.size - 1
            elif name == "actions_inf":
                assert np.isposinf(x).sum() == 1 and np.isfinite(x).sum() == x.size - 1
            elif name == "actions_out_of_range":
                assert (np.abs(x) > 1 + 1e-6).sum() == 1 and (x[:, :6] == 1.5).sum() == 1
            else:
                bad = ~np.isin(x[:, 6], (-1.0, 1.0))
                assert bad.sum() == 1 and x[bad, 6][0] == 0.3
        elif name in ("actions_width6", "actions_width8", "actions_int"):
            x = data[dn]["actions"]
            if name == "actions_int":
                assert x.shape == (T, 7) and np.issubdtype(x.dtype, np.integer)
            else:
                assert x.shape == (T, 6 if name == "actions_width6" else 8)
        elif name in (
            "convention_missing",
            "convention_unknown",
            "convention_opencv",
            "convention_mixed_case_bytes",
            "upright_but_opengl",
        ):
            stored = data["demo_0/obs/agentview_rgb"][0]
            if name == "convention_missing":
                assert "macros_image_convention" not in a
            elif name == "convention_unknown":
                assert a["macros_image_convention"] == "directx"
            elif name == "convention_opencv":
                assert a["macros_image_convention"] == "opencv"
            elif name == "convention_mixed_case_bytes":
                v = a["macros_image_convention"]
                assert isinstance(v, (bytes, np.bytes_)) and bytes(v) == b"OpenGL"
            else:
                assert a["macros_image_convention"] == "opengl"
            upright = name in ("convention_opencv", "upright_but_opengl")
            assert _sha(stored if upright else stored[::-1]) == first_sha
            assert gt["tasks"][tid]["stored_image_orientation"] == ("upright" if upright else "upside_down")
        elif name == "demo_name_padded":
            assert f"demo_0{TRAP_DEMO}" in data and dn not in data
        elif name == "demo_name_collision":
            assert f"demo_0{TRAP_DEMO}" in data and dn in data
            assert np.array_equal(data[f"demo_0{TRAP_DEMO}/actions"][()], data[dn]["actions"][()])
        elif name == "demo_name_bad":
            assert "demo_x" in data and dn in data
        elif name == "demo_gap":
            assert names == ["demo_0", "demo_2"]
            assert int(a["num_demos"]) == 2
            assert int(a["total"]) == sum(int(data[n].attrs["num_samples"]) for n in names)
        elif name == "attrs_bytes":
            for key in ("env_name", "problem_info", "env_args", "bddl_file_name", "macros_image_convention", "tag"):
                assert isinstance(a[key], (bytes, np.bytes_)), key
            json.loads(bytes(a["problem_info"]).decode())
        elif name == "problem_info_missing":
            assert "problem_info" not in a
            m = re.search(r"\(:language ([^)]*)\)", a["bddl_file_content"])
            assert m and m.group(1).strip() == gt["tasks"][tid]["instruction"]
        elif name == "problem_info_malformed":
            with pytest.raises(json.JSONDecodeError):
                json.loads(a["problem_info"])
        elif name == "env_args_missing":
            assert "env_args" not in a and "problem_info" in a
        elif name == "num_demos_wrong":
            true_total = sum(int(data[n].attrs["num_samples"]) for n in names)
            assert int(a["num_demos"]) == len(names) + 5 and int(a["total"]) == true_total + 100
        elif name == "extra_keys":
            g = data[dn]
            assert "agentview_depth" in g["obs"] and isinstance(g["next_obs"], h5py.Group)
            assert isinstance(data["mask"], h5py.Group) and "bddl_file_content" in a
        else:  # pragma: no cover
            raise AssertionError(f"no check for trap {name}")


@pytest.mark.parametrize("name", traps_mod.TRAP_NAMES)
def test_trap(name, trap_root):
    root, assign, summary = trap_root
    gt = _gt(root)
    tid = assign[name]
    recorded = [t for t in gt["tasks"][tid]["traps"]]
    assert [t["trap"] for t in recorded] == [name]
    _check_trap(name, root, tid, gt)


def test_trap_table_complete():
    doc = (REPO / "docs" / "data_contracts.md").read_text()
    table = re.findall(r"^\| ([a-z0-9_]+) \| \d+[ab]? \|", doc, flags=re.M)
    assert table and tuple(table) == traps_mod.TRAP_NAMES


def test_demo_traps_touch_only_demo_k(trap_root):
    """Demo-level traps (demo_1 here) leave demo_0 of the same file exactly as generated."""
    root, assign, _ = trap_root
    gt = _gt(root)
    demo_level = [
        n
        for n in traps_mod.TRAP_NAMES
        if n.startswith(
            (
                "missing_",
                "length_",
                "num_samples_",
                "too_short",
                "images_",
                "actions_",
                "gripper_",
                "demo_name_",
                "extra_keys",
                "corrupt_dataset_header",
            )
        )
    ]
    assert len(demo_level) == 26
    for name in demo_level:
        tid = assign[name]
        d0 = gt["tasks"][tid]["demos"]["demo_0"]
        with _open_trap(root, tid) as f:
            g = f["data/demo_0"]
            assert [float(x) for x in g["actions"][()].sum(0)] == d0["action_sum"], name
            assert _sha(g["obs/agentview_rgb"][0][::-1]) == d0["first_frame_sha256"], name
            assert int(g.attrs["num_samples"]) == d0["T"], name


def test_combined_traps_one_file(tmp_path):
    tids = sy.cycle_task_ids(2)
    stem = tids[1].split("/")[1]
    sy.generate(
        tmp_path,
        tids,
        n_demos=3,
        len_range=(10, 12),
        progress=False,
        traps=[
            f"h5_extension:{tids[1]}",
            f"outside_suite:{tids[1]}",
            f"attrs_bytes:{tids[1]}",
            {"trap": "demo_gap", "task": tids[1], "demo": 0},
            {"trap": "too_short", "task": tids[1], "demo": 2, "length": 3},
            {"trap": "duplicate_copy_name", "task": tids[0], "name": "x_demo copy.hdf5"},
        ],
    )
    p = tmp_path / f"{stem}_demo.h5"
    with h5py.File(p, "r") as f:
        assert _demo_names(f["data"]) == ["demo_1", "demo_2"]
        assert f["data/demo_2/actions"].shape == (3, 7)
        assert isinstance(f["data"].attrs["env_name"], (bytes, np.bytes_))
    assert (_task_path(tmp_path, tids[0]).parent / "x_demo copy.hdf5").is_file()


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def test_cli(tmp_path):
    script = REPO / "workflow_scripts" / "make_synthetic.py"
    r = subprocess.run(
        [
            sys.executable,
            str(script),
            "--root",
            str(tmp_path / "out"),
            "--tasks",
            "2",
            "--demos",
            "2",
            "--len-min",
            "8",
            "--len-max",
            "10",
            "--seed",
            "1",
            "--no-progress",
            "--trap",
            "actions_nan::1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "2 tasks" in r.stdout and str(tmp_path / "out") in r.stdout
    assert len(list((tmp_path / "out").rglob("*.hdf5"))) == 2
    for bad in (
        ["--tasks", "x"],
        ["--tasks", "500"],
        ["--trap", "nonsense"],
        ["--demos", "0"],
        ["--len-min", "9", "--len-max", "3"],
    ):
        r = subprocess.run(
            [sys.executable, str(script), "--root", str(tmp_path / "bad"), "--no-progress", *bad],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode != 0 and "error" in r.stderr, bad
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").rglob("*.hdf5"))


# ---------------------------------------------------------------------------------------------
# the probe self-check (§8): actions cause linearly decodable visual change on held-out tasks
# ---------------------------------------------------------------------------------------------
_ALPHAS = 10.0 ** np.arange(-3, 6.01, 0.5)


def _load_small(root: Path, task_ids: list[str]) -> dict:
    """Upright frames area-downsampled to 32×32 (mean of 4×4 blocks), flattened; raw actions."""
    out = {}
    for tid in task_ids:
        demos = []
        with h5py.File(_task_path(root, tid), "r") as f:
            for n in _demo_names(f["data"]):
                img = f["data"][n]["obs/agentview_rgb"][()]
                T = img.shape[0]
                x = img.reshape(T, 32, 4, 128 * 3).astype(np.float32).sum(2)
                x = x.reshape(T, 32, 32, 4, 3).sum(3) / np.float32(16.0)
                # stored images are upside down: flipping the 32 block-rows == flipping the
                # 128 rows before averaging (128 = 32 × 4)
                demos.append((x[:, ::-1].reshape(T, -1), f["data"][n]["actions"][()]))
        out[tid] = demos
    return out


def _features(demos, kind):
    """kind 'next': X_t = o_{t+1} − o_t; 'prev': X_t = o_t − o_{t−1} (o_{−1} := o_0); t = 0..T−2.
    Targets: 'shifted' a_t = actions[t+1] (the canonical pairing), 'raw' actions[t] (the raw-index
    mistake)."""
    X, Ys, Yr = [], [], []
    for o, a in demos:
        if kind == "next":
            X.append(o[1:] - o[:-1])
        else:
            prev = np.concatenate([o[:1], o[:-1]])
            X.append((o - prev)[:-1])
        Ys.append(a[1:])
        Yr.append(a[:-1])
    return np.concatenate(X).astype(np.float64), {"shifted": np.concatenate(Ys), "raw": np.concatenate(Yr)}


def _ridge_path(Z, Y, alphas):
    zm, ym = Z.mean(0), Y.mean(0)
    U, s, Vt = np.linalg.svd(Z - zm, full_matrices=False)
    UtY = U.T @ (Y - ym)
    fits = []
    for al in alphas:
        W = Vt.T @ ((s / (s * s + al))[:, None] * UtY)
        fits.append((W, ym - zm @ W))
    return fits


def _probe(data, train, test, kind, targets=("shifted",)):
    """PCA 256 (fit on train) → standardise → ridge, α per dim by 5-fold GroupKFold over train
    tasks; R² per dim (sklearn definition, original units) on the held-out tasks."""
    from sklearn.metrics import r2_score
    from sklearn.model_selection import GroupKFold

    parts = [_features(data[t], kind) for t in train]
    X = np.concatenate([p[0] for p in parts])
    G = np.concatenate([np.full(len(p[0]), i) for i, p in enumerate(parts)])
    tparts = [_features(data[t], kind) for t in test]
    Xt = np.concatenate([p[0] for p in tparts])
    # exact PCA: top-256 eigenvectors of the train covariance, only those computed (LAPACK's evr driver;
    # the caller limits numpy's and scipy's separate BLAS pools to one thread each, so they cannot fight
    # over the 2 cores)
    from scipy.linalg import eigh

    mean = X.mean(0)
    Xc = X - mean
    D = Xc.shape[1]
    _, V = eigh(Xc.T @ Xc, subset_by_index=[D - 256, D - 1], driver="evr")
    V = V[:, ::-1]
    Z, Zt = Xc @ V, (Xt - mean) @ V
    mu, sd = Z.mean(0), Z.std(0)
    sd[sd < 1e-9] = 1.0
    Z, Zt = (Z - mu) / sd, (Zt - mu) / sd
    folds = list(GroupKFold(n_splits=5).split(Z, groups=G))  # folds = tasks
    out = {}
    for tgt in targets:
        Y = np.concatenate([p[1][tgt] for p in parts])
        Yt = np.concatenate([p[1][tgt] for p in tparts])
        ym, ys = Y.mean(0), Y.std(0)
        ys[ys == 0] = 1.0
        Yz = (Y - ym) / ys
        sse = np.zeros((len(_ALPHAS), Y.shape[1]))
        for tr, va in folds:
            for ai, (W, b) in enumerate(_ridge_path(Z[tr], Yz[tr], _ALPHAS)):
                sse[ai] += ((Z[va] @ W + b - Yz[va]) ** 2).sum(0)
        best = sse.argmin(0)  # α per action dim
        fits = _ridge_path(Z, Yz, _ALPHAS)
        pred = np.stack(
            [(Zt @ fits[best[j]][0][:, j] + fits[best[j]][1][j]) * ys[j] + ym[j] for j in range(Y.shape[1])], axis=1
        )
        out[tgt] = r2_score(Yt, pred, multioutput="raw_values")
    return out


def test_probe_frame_diff_ood(demo_root):
    tids = sy.demo_task_ids()
    test = [tids[0], tids[4], tids[8]]  # first task of each suite held out (3 OOD, 9 train)
    train = [t for t in tids if t not in test]
    data = _load_small(demo_root, tids)
    # one BLAS thread: on a 2-core machine, spinning BLAS worker pools (numpy's and scipy's
    # OpenBLAS are separate libraries) can make this test several times slower
    with threadpool_limits(limits=1):
        nxt = _probe(data, train, test, "next", targets=("shifted", "raw"))
        pol = _probe(data, train, test, "prev")
    r2 = {"idm": nxt["shifted"], "policy": pol["shifted"], "unshifted": nxt["raw"]}
    for m, v in r2.items():
        print(f"{m:9s} R2 per dim {np.round(v, 3).tolist()} uniform {v.mean():.3f} dims0-5 {v[:6].mean():.3f}")
    idm, pol, uns = r2["idm"], r2["policy"], r2["unshifted"]
    assert idm.mean() > 0.5 and idm[:6].mean() > 0.75  # required: > 0.3 and > 0.5
    assert idm[:6].min() > 0.6
    assert idm.mean() > pol.mean() + 0.2 and idm[:6].mean() > pol[:6].mean() + 0.2
    assert idm.mean() > uns.mean() + 0.2  # forgetting the +1 shift is visible
    assert pol[:6].mean() > 0.1  # policy mode is learnable (AR(1)-smoothed noise)
