"""The synthetic generator's trap injector (libero_data.md §5 and data_contracts.md's trap table).

Every trap the LIBERO reader must handle can be put into a generated root on purpose: a trap spec
(:func:`parse_trap_spec`) names the trap, the task and, for a per-demo trap, the demo. Traps act at
three moments of writing one task file (``synthetic.generate``):

1. where the file goes (:func:`task_file_path`: ``h5_extension``, ``no_demo_suffix``, ``outside_suite``);
2. on the clean temporary file, before it is renamed into place (:func:`trap_task_file`: h5py-level
   mutations first, then byte-level corruption, the dataset-header one first as it needs a readable file);
3. copies of the final file (``duplicate_suite``, ``duplicate_copy_name``) and side files
   (``non_hdf5_file``), after it is in place (:func:`write_copies_and_side_files`).

Each applied trap returns a record (the spec plus notes such as the changed index or new name) for
the ground truth.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

import h5py
import numpy as np

from ..fileio import atomic_path, write_bytes, write_json
from .libero_writer import bddl_content
from .synthetic_world import IMAGE_SIZE, Task

# --------------------------------------------------------------------------------------------
# Trap names (data_contracts.md table, in table order)
# --------------------------------------------------------------------------------------------
# name -> True if the trap acts on one demo (needs a demo index), False if on the whole file
_TRAPS: dict[str, bool] = {
    "zero_bytes": False,
    "truncated": False,
    "corrupt_superblock": False,
    "corrupt_dataset_header": True,
    "no_data_group": False,
    "no_demos": False,
    "missing_images": True,
    "missing_actions": True,
    "length_mismatch": True,
    "num_samples_wrong": True,
    "num_samples_missing": True,
    "too_short": True,
    "images_float": True,
    "images_uint16": True,
    "images_int64": True,
    "images_256": True,
    "images_84": True,
    "images_chw": True,
    "images_rgba": True,
    "images_gray": True,
    "actions_nan": True,
    "actions_inf": True,
    "actions_width6": True,
    "actions_width8": True,
    "actions_int": True,
    "actions_out_of_range": True,
    "gripper_not_pm1": True,
    "convention_missing": False,
    "convention_unknown": False,
    "convention_opencv": False,
    "convention_mixed_case_bytes": False,
    "upright_but_opengl": False,
    "duplicate_suite": False,
    "duplicate_copy_name": False,
    "demo_name_padded": True,
    "demo_name_collision": True,
    "demo_name_bad": True,
    "demo_gap": True,
    "attrs_bytes": False,
    "problem_info_missing": False,
    "problem_info_malformed": False,
    "env_args_missing": False,
    "num_demos_wrong": False,
    "extra_keys": True,
    "h5_extension": False,
    "no_demo_suffix": False,
    "outside_suite": False,
    "non_hdf5_file": False,
}
TRAP_NAMES: tuple[str, ...] = tuple(_TRAPS)
DEMO_TRAPS = frozenset(name for name, per_demo in _TRAPS.items() if per_demo)
_BYTE_TRAPS = ("corrupt_dataset_header", "corrupt_superblock", "truncated", "zero_bytes")
_NAME_TRAPS = frozenset({"h5_extension", "no_demo_suffix", "outside_suite"})
_COPY_TRAPS = frozenset({"duplicate_suite", "duplicate_copy_name"})
_SIDE_TRAPS = frozenset({"non_hdf5_file"})
_TRAP_PARAMS = {"too_short": {"length"}, "duplicate_suite": {"suite"}, "duplicate_copy_name": {"name"}}


# --------------------------------------------------------------------------------------------
# Trap specs and the mutations of one file
# --------------------------------------------------------------------------------------------
def parse_trap_spec(spec: Any) -> dict:
    """Normalise one trap spec: a name, ``"NAME:TASK:K[:key=value...]"``, a (name, task, demo)
    tuple, or a dict ``{"trap": NAME, "task": TASK_ID, "demo": K, ...params}``."""
    if isinstance(spec, str):
        parts = spec.split(":")
        d: dict[str, Any] = {"trap": parts[0]}
        rest = parts[1:]
        pos = [p for p in rest if "=" not in p]
        kv = [p for p in rest if "=" in p]
        if len(pos) > 2:
            raise ValueError(f"trap spec {spec!r}: expected NAME[:TASK_ID[:K]][:key=value...]")
        if len(pos) >= 1 and pos[0] != "":
            d["task"] = pos[0]
        if len(pos) == 2 and pos[1] != "":
            try:
                d["demo"] = int(pos[1])
            except ValueError:
                raise ValueError(f"trap spec {spec!r}: demo index must be an integer, got {pos[1]!r}") from None
        for item in kv:
            k, v = item.split("=", 1)
            d[k] = int(v) if re.fullmatch(r"-?\d+", v) else v
    elif isinstance(spec, (tuple, list)):
        if not 1 <= len(spec) <= 3:
            raise ValueError(f"trap tuple must be (name[, task[, demo]]), got {spec!r}")
        d = {"trap": spec[0]}
        if len(spec) > 1 and spec[1] is not None:
            d["task"] = spec[1]
        if len(spec) > 2 and spec[2] is not None:
            d["demo"] = spec[2]
    elif isinstance(spec, dict):
        d = dict(spec)
        if "trap" not in d:
            if "name" in d:
                d["trap"] = d.pop("name")
            else:
                raise ValueError(f"trap dict needs a 'trap' key: {spec!r}")
    else:
        raise ValueError(f"cannot interpret trap spec {spec!r}")
    name = d["trap"]
    if name not in TRAP_NAMES:
        raise ValueError(f"unknown trap {name!r}; valid trap names: {', '.join(TRAP_NAMES)}")
    allowed = {"trap", "task", "demo"} | _TRAP_PARAMS.get(name, set())
    unknown = set(d) - allowed
    if unknown:
        raise ValueError(f"trap {name!r}: unknown parameter(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return d


def _replace_ds(grp: h5py.Group, key: str, data: np.ndarray, compress: bool = False) -> None:
    del grp[key]
    if compress and data.ndim >= 3:
        grp.create_dataset(key, data=data, compression="gzip", compression_opts=1, chunks=(1,) + tuple(data.shape[1:]))
    else:
        grp.create_dataset(key, data=data)


def _flip_all_images(data: h5py.Group) -> None:
    for name in sorted(data.keys()):
        if not re.fullmatch(r"demo_\d+", name):
            continue
        obs = data[name]["obs"]
        for cam in ("agentview_rgb", "eye_in_hand_rgb"):
            if cam in obs:
                arr = obs[cam][()]
                _replace_ds(obs, cam, np.ascontiguousarray(arr[:, ::-1]), compress=True)


def _apply_h5_trap(f: h5py.File, tr: dict, task: Task, demo_T: dict[str, int], rng: np.random.Generator) -> dict:
    """Mutate an open file for one h5py-level trap. Returns notes for the ground truth."""
    name = tr["trap"]
    data = f["data"]
    k = int(tr.get("demo", 0))
    dn = f"demo_{k}"
    notes: dict[str, Any] = {}
    g = data[dn] if (name in DEMO_TRAPS and dn in data) else None
    if name in DEMO_TRAPS and g is None:
        raise ValueError(f"trap {name!r}: demo {dn} not in {task.task_id} (was it removed by another trap?)")
    if name == "no_data_group":
        f.move("data", "payload")
    elif name == "no_demos":
        for key in sorted(data.keys()):
            if key.startswith("demo_"):
                del data[key]
    elif name == "missing_images":
        del g["obs/agentview_rgb"]
    elif name == "missing_actions":
        del g["actions"]
    elif name == "length_mismatch":
        _replace_ds(g, "actions", g["actions"][()][:-1])
    elif name == "num_samples_wrong":
        g.attrs["num_samples"] = np.int64(demo_T[dn] + 3)
    elif name == "num_samples_missing":
        del g.attrs["num_samples"]
    elif name == "too_short":
        L = int(tr.get("length", 1))
        if L < 0 or L >= demo_T[dn]:
            raise ValueError(f"trap too_short: length must be in 0..{demo_T[dn] - 1}, got {L}")

        def _cut(grp: h5py.Group) -> None:
            for key in sorted(grp.keys()):
                obj = grp[key]
                if isinstance(obj, h5py.Group):
                    _cut(obj)
                else:
                    _replace_ds(grp, key, obj[()][:L], compress=obj.ndim >= 3)

        _cut(g)
        g.attrs["num_samples"] = np.int64(L)
        data.attrs["total"] = np.int64(int(data.attrs["total"]) - demo_T[dn] + L)
        notes["length"] = L
    elif name.startswith("images_"):
        arr = g["obs/agentview_rgb"][()]
        if name == "images_float":
            new = arr.astype(np.float32) / np.float32(255.0)
        elif name == "images_uint16":
            new = arr.astype(np.uint16) * np.uint16(257)
        elif name == "images_int64":
            new = arr.astype(np.int64)
        elif name == "images_256":
            new = np.repeat(np.repeat(arr, 2, axis=1), 2, axis=2)
        elif name == "images_84":
            idx = (np.arange(84) * IMAGE_SIZE) // 84
            new = arr[:, idx][:, :, idx]
        elif name == "images_chw":
            new = np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
        elif name == "images_rgba":
            new = np.concatenate([arr, np.full(arr.shape[:3] + (1,), 255, np.uint8)], axis=-1)
        elif name == "images_gray":
            lum = arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            new = np.clip(np.rint(lum), 0, 255).astype(np.uint8)
        else:  # pragma: no cover
            raise AssertionError(name)
        _replace_ds(g["obs"], "agentview_rgb", np.ascontiguousarray(new), compress=True)
    elif name in ("actions_nan", "actions_inf", "actions_out_of_range", "gripper_not_pm1"):
        a = g["actions"][()]
        row = int(rng.integers(0, a.shape[0]))
        col = 6 if name == "gripper_not_pm1" else int(rng.integers(0, 6))
        a[row, col] = {
            "actions_nan": np.nan,
            "actions_inf": np.inf,
            "actions_out_of_range": 1.5,
            "gripper_not_pm1": 0.3,
        }[name]
        g["actions"][...] = a
        notes["index"] = [row, col]
    elif name == "actions_width6":
        _replace_ds(g, "actions", np.ascontiguousarray(g["actions"][()][:, :6]))
    elif name == "actions_width8":
        a = g["actions"][()]
        _replace_ds(g, "actions", np.concatenate([a, np.zeros((a.shape[0], 1))], axis=1))
    elif name == "actions_int":
        _replace_ds(g, "actions", np.rint(g["actions"][()]).astype(np.int64))
    elif name == "convention_missing":
        del data.attrs["macros_image_convention"]
    elif name == "convention_unknown":
        data.attrs["macros_image_convention"] = "directx"
    elif name == "convention_opencv":
        _flip_all_images(data)
        data.attrs["macros_image_convention"] = "opencv"
        notes["stored_orientation"] = "upright"
    elif name == "convention_mixed_case_bytes":
        data.attrs["macros_image_convention"] = np.bytes_(b"OpenGL")
    elif name == "upright_but_opengl":
        _flip_all_images(data)
        data.attrs["macros_image_convention"] = "opengl"
        notes["stored_orientation"] = "upright"
    elif name == "demo_name_padded":
        f.move(f"data/{dn}", f"data/demo_0{k}")
        notes["new_name"] = f"demo_0{k}"
    elif name == "demo_name_collision":
        f.copy(f"data/{dn}", f"data/demo_0{k}")
        notes["new_name"] = f"demo_0{k}"
    elif name == "demo_name_bad":
        f.copy(f"data/{dn}", "data/demo_x")
        notes["new_name"] = "demo_x"
    elif name == "demo_gap":
        del data[dn]
        data.attrs["num_demos"] = np.int64(int(data.attrs["num_demos"]) - 1)
        data.attrs["total"] = np.int64(int(data.attrs["total"]) - demo_T[dn])
    elif name == "attrs_bytes":
        for key in sorted(data.attrs.keys()):
            v = data.attrs[key]
            if isinstance(v, str):
                data.attrs[key] = np.bytes_(v.encode("utf-8"))
    elif name == "problem_info_missing":
        del data.attrs["problem_info"]
        data.attrs["bddl_file_content"] = bddl_content(task)
    elif name == "problem_info_malformed":
        data.attrs["problem_info"] = "{not json"
    elif name == "env_args_missing":
        del data.attrs["env_args"]
    elif name == "num_demos_wrong":
        data.attrs["num_demos"] = np.int64(int(data.attrs["num_demos"]) + 5)
        data.attrs["total"] = np.int64(int(data.attrs["total"]) + 100)
    elif name == "extra_keys":
        T = demo_T[dn]
        g["obs"].create_dataset(
            "agentview_depth",
            data=np.zeros((T, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32),
            compression="gzip",
            compression_opts=1,
            chunks=(1, IMAGE_SIZE, IMAGE_SIZE, 1),
        )
        nxt = g.create_group("next_obs")
        nxt.create_dataset("joint_states", data=g["obs/joint_states"][()])
        mask = data.create_group("mask")
        names = sorted((n for n in data.keys() if re.fullmatch(r"demo_\d+", n)), key=lambda s: int(s[5:]))
        mask.create_dataset("train", data=np.array([n.encode() for n in names], dtype="S16"))
        data.attrs["bddl_file_content"] = bddl_content(task)
    else:  # pragma: no cover
        raise AssertionError(f"not an h5py-level trap: {name}")
    return notes


def _apply_byte_trap(path: Path, name: str, rng: np.random.Generator, demo: int | None) -> dict:
    notes: dict[str, Any] = {}
    if name == "zero_bytes":
        with open(path, "wb"):
            pass
    elif name == "truncated":
        size = path.stat().st_size
        with open(path, "r+b") as fh:
            fh.truncate(size // 2)
        notes["size_before"] = size
        notes["size_after"] = size // 2
    elif name == "corrupt_superblock":
        garbage = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
        with open(path, "r+b") as fh:
            fh.seek(0)
            fh.write(garbage)
    elif name == "corrupt_dataset_header":
        key = f"data/demo_{demo}/actions"
        with h5py.File(path, "r") as f:
            if key not in f:
                raise ValueError(f"trap corrupt_dataset_header: {key} not present (removed by another trap?)")
            addr = int(h5py.h5o.get_info(f[key].id).addr)
        with open(path, "r+b") as fh:
            fh.seek(addr)
            fh.write(b"\xde\xad\xbe\xef" * 4)
        notes["header_address"] = addr
    else:  # pragma: no cover
        raise AssertionError(name)
    return notes


# --------------------------------------------------------------------------------------------
# The traps of one generate() call: validation up front, then per task file
# --------------------------------------------------------------------------------------------
def resolve_traps(traps: Iterable[Any], task_ids: Sequence[str], n_demos: int, min_len: int) -> dict[str, list[dict]]:
    """Parse and validate every trap spec up front (nothing is written on a bad one): task id -> its traps.

    ``task`` defaults to the first task (an integer is an index into ``task_ids``), ``demo`` to 0 (per-demo
    traps only); ``too_short``'s length must be below ``min_len``; ``duplicate_suite`` never names the
    task's own suite; ``duplicate_copy_name`` must be a bare file name other than the task file's."""
    by_task: dict[str, list[dict]] = {t: [] for t in task_ids}
    for spec in traps:
        tr = parse_trap_spec(spec)
        task = tr.get("task", task_ids[0])
        if isinstance(task, (int, np.integer)) or (isinstance(task, str) and task.isdigit()):
            i = int(task)
            if not 0 <= i < len(task_ids):
                raise ValueError(f"trap {tr['trap']!r}: task index {i} out of range 0..{len(task_ids) - 1}")
            task = task_ids[i]
        if task not in by_task:
            raise ValueError(f"trap {tr['trap']!r}: task {task!r} is not among the generated tasks")
        tr["task"] = task
        if tr["trap"] in DEMO_TRAPS:
            k = int(tr.get("demo", 0))
            if not 0 <= k < n_demos:
                raise ValueError(f"trap {tr['trap']!r}: demo {k} out of range 0..{n_demos - 1}")
            tr["demo"] = k
        else:
            tr.pop("demo", None)
        if tr["trap"] == "too_short":
            L = int(tr.get("length", 1))
            if L < 0 or L >= min_len:
                raise ValueError(f"trap too_short: length must be in 0..{min_len - 1}, got {L}")
            tr["length"] = L
        if tr["trap"] == "duplicate_suite":
            s = str(tr.get("suite", "libero_90"))
            if s == task.split("/")[0]:
                s = "libero_10" if s != "libero_10" else "libero_90"
            if not re.fullmatch(r"[A-Za-z0-9_\-]+", s):
                raise ValueError(f"trap duplicate_suite: bad suite name {s!r}")
            tr["suite"] = s
        if tr["trap"] == "duplicate_copy_name":
            stem = task.split("/")[1]
            nm = str(tr.get("name", f"{stem}_demo (1).hdf5"))
            if "/" in nm or nm in (f"{stem}_demo.hdf5", ""):
                raise ValueError(f"trap duplicate_copy_name: bad copy name {nm!r}")
            tr["name"] = nm
        by_task[task].append(tr)
    return by_task


def task_file_path(root: Path, task: Task, trs: list[dict]) -> Path:
    """Where the task file goes: ``<root>/<suite>/<stem>_demo.hdf5`` unless a naming trap says otherwise."""
    names = {t["trap"] for t in trs}
    folder = root if "outside_suite" in names else root / task.suite
    base = task.stem if "no_demo_suffix" in names else f"{task.stem}_demo"
    ext = ".h5" if "h5_extension" in names else ".hdf5"
    return folder / f"{base}{ext}"


def trap_task_file(
    path: Path, trs: list[dict], task: Task, demo_T: dict[str, int], rng: np.random.Generator
) -> tuple[str, list[dict]]:
    """Apply the in-file traps of ``trs`` to the clean file at ``path`` (not yet in place).

    Returns (stored image orientation after the traps, applied trap records in the order applied)."""
    orientation = "upside_down"
    applied: list[dict] = []
    h5_trs = [
        t for t in trs if t["trap"] not in _NAME_TRAPS | _COPY_TRAPS | _SIDE_TRAPS and t["trap"] not in _BYTE_TRAPS
    ]
    if h5_trs:
        with h5py.File(path, "r+") as f:
            for t in h5_trs:
                notes = _apply_h5_trap(f, t, task, demo_T, rng)
                orientation = notes.get("stored_orientation", orientation)
                applied.append({**t, **notes})
    for bname in _BYTE_TRAPS:  # header corruption needs a readable file: before the others
        for t in trs:
            if t["trap"] == bname:
                notes = _apply_byte_trap(path, bname, rng, t.get("demo"))
                applied.append({**t, **notes})
    return orientation, applied


def write_copies_and_side_files(root: Path, final: Path, task: Task, trs: list[dict]) -> tuple[list[str], list[dict]]:
    """After the task file is in place at ``final``: copy it (duplicate traps) and write side files.

    Returns (the task's files relative to ``root``, the file first, then its copies; the records of its
    naming, copy and side-file traps, in that order)."""
    rel_files = [final.relative_to(root).as_posix()]
    applied: list[dict] = []
    for t in trs:
        if t["trap"] in _NAME_TRAPS:
            applied.append({**t, "path": rel_files[0]})
    for t in trs:
        if t["trap"] == "duplicate_suite":
            dst = root / t["suite"] / final.name
        elif t["trap"] == "duplicate_copy_name":
            dst = final.parent / t["name"]
        else:
            continue
        with atomic_path(dst, suffix=dst.suffix) as tmp:
            shutil.copyfile(final, tmp)
        rel_files.append(dst.relative_to(root).as_posix())
        applied.append({**t, "path": rel_files[-1]})
    for t in trs:
        if t["trap"] == "non_hdf5_file":
            write_bytes(
                root / task.suite / "README.txt",
                b"Synthetic LIBERO-format data. Not an HDF5 file; readers must ignore it.\n",
            )
            write_json(root / task.suite / "notes.json", {"note": "not a task file", "task": task.task_id})
            applied.append({**t, "paths": [f"{task.suite}/README.txt", f"{task.suite}/notes.json"]})
    return rel_files, applied
