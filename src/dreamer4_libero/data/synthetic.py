"""Synthetic LIBERO-format dataset generator (libero_data.md §2, §3, §8; data_contracts.md).

Writes ``<root>/<suite>/<stem>_demo.hdf5`` files with the exact layout, dtypes, attributes and
time convention of the released LIBERO files, filled with a toy 2-D world in which every action
dimension has a linearly decodable visual effect. Three parts, composed by :func:`generate`:

* ``synthetic_world.py``: the toy world (tasks, scripted demonstrator, rendering, robot state);
* ``libero_writer.py``: one clean task file in the LIBERO layout;
* ``synthetic_traps.py``: the trap injector (data_contracts.md), applied as post-write mutations of
  the temporary file before it is renamed into place (copies and side files afterwards).

Everything is deterministic from ``(seed, task index, demo index)``; files are byte-identical for
identical arguments.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..fileio import atomic_path, write_json
from .libero_writer import write_task_file
from .synthetic_traps import resolve_traps, task_file_path, trap_task_file, write_copies_and_side_files
from .synthetic_world import make_task, split_task_id
from .tasks import SUITES

__all__ = ["GENERATOR_VERSION", "GROUND_TRUTH_NAME", "cycle_task_ids", "demo_task_ids", "generate"]

GENERATOR_VERSION = "synthetic-libero-v2"
GROUND_TRUTH_NAME = "_synthetic_ground_truth.json"


def demo_task_ids(
    per_suite: int = 4, suites: Sequence[str] = ("libero_10", "libero_goal", "libero_spatial")
) -> list[str]:
    """The first ``per_suite`` tasks (official order) of each suite, as ``<suite>/<stem>``."""
    out: list[str] = []
    for s in suites:
        if s not in SUITES:
            raise ValueError(f"unknown suite {s!r}; valid: {sorted(SUITES)}")
        stems = SUITES[s]
        if not 1 <= per_suite <= len(stems):
            raise ValueError(f"per_suite must be in 1..{len(stems)} for {s}, got {per_suite}")
        out.extend(f"{s}/{t}" for t in stems[:per_suite])
    return out


_CYCLE_SUITES = ("libero_90", "libero_10", "libero_goal", "libero_object", "libero_spatial")


def cycle_task_ids(n: int) -> list[str]:
    """``n`` distinct task ids cycling through the 130 real names.

    Round-robin over the suites (libero_90, libero_10, libero_goal, libero_object,
    libero_spatial; each in official order), so small ``n`` already spans several suites;
    exhausted suites are skipped. ``n`` > 130 would repeat a stem (a duplicate-task trap), so it
    is rejected.
    """
    total = sum(len(v) for v in SUITES.values())
    if not isinstance(n, (int, np.integer)) or n < 1 or n > total:
        raise ValueError(f"number of tasks must be an integer in 1..{total}, got {n!r}")
    out: list[str] = []
    i = 0
    while len(out) < n:
        for s in _CYCLE_SUITES:
            if i < len(SUITES[s]) and len(out) < n:
                out.append(f"{s}/{SUITES[s][i]}")
        i += 1
    return out


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------
def _stale_files(root: Path, gt_path: Path, files: list[str]) -> list[str]:
    """Task files (and trap side files) that an earlier generation into `root` wrote and this one did not.

    Only files named in the earlier ground-truth record are candidates, so nothing the user put there
    is ever removed; an unreadable earlier record removes nothing."""
    try:
        old = json.loads(gt_path.read_text())
    except (OSError, ValueError):
        return []
    old_files: set[str] = set()
    for rec in (old.get("tasks") or {}).values():
        old_files.update(rec.get("files") or [])
        for tr in rec.get("traps") or []:
            old_files.update(tr.get("paths") or [])
    return sorted(old_files - set(files) - {GROUND_TRUTH_NAME})


def generate(
    root: str | os.PathLike,
    task_ids: Sequence[str],
    n_demos: int = 12,
    len_range: tuple[int, int] = (48, 80),
    seed: int = 0,
    traps: Iterable[Any] = (),
    progress: bool = True,
) -> dict:
    """Write a synthetic LIBERO-format dataset under ``root``; return a summary dict.

    One file ``<root>/<suite>/<stem>_demo.hdf5`` per task id (``<suite>/<stem>``), ``n_demos``
    demos each, T drawn uniformly from ``len_range`` (inclusive). Task i is deterministic from
    ``(seed, i)`` and its demo k from ``(seed, i, k)``; identical arguments give byte-identical
    files. Each file is written to a temporary name, trapped, then renamed into place.

    ``traps``: specs accepted by :func:`synthetic_traps.parse_trap_spec` (dicts ``{"trap", "task", "demo", ...}``,
    ``"NAME:TASK_ID:K"`` strings, or bare names). ``task`` defaults to the first task (an integer
    is an index into ``task_ids``), ``demo`` to 0. All specs are validated before anything is
    written; an unknown name raises ``ValueError`` listing the valid names.

    Also writes ``<root>/_synthetic_ground_truth.json``: per task its files, instruction, state
    dim, stored image orientation, traps; per demo T, the sha256 of the upright first agentview
    frame, and sum/min/max of the raw actions (all before any trap).

    Files already under ``root`` that this call does not write are left alone (use a fresh root).

    Returns ``{"root", "n_tasks", "n_demos_per_task", "n_demos", "n_frames", "files" (relative
    paths incl. trap copies), "ground_truth" (path), "traps" (applied trap records)}``.
    """
    root = Path(root)
    task_ids = list(task_ids)
    if not task_ids:
        raise ValueError("task_ids is empty")
    if len(set(task_ids)) != len(task_ids):
        dup = sorted({t for t in task_ids if task_ids.count(t) > 1})
        raise ValueError(f"duplicate task ids: {dup}")
    for t in task_ids:
        split_task_id(t)
    stems = [t.split("/")[1] for t in task_ids]
    if len(set(stems)) != len(stems):
        raise ValueError("the same stem appears in two suites; use the duplicate_suite trap for that")
    if not isinstance(n_demos, (int, np.integer)) or n_demos < 1:
        raise ValueError(f"n_demos must be an integer ≥ 1, got {n_demos!r}")
    lo, hi = (int(len_range[0]), int(len_range[1]))
    if lo < 2 or hi < lo:
        raise ValueError(f"len_range must satisfy 2 ≤ min ≤ max, got {tuple(len_range)}")
    seed = int(seed)
    by_task = resolve_traps(traps, task_ids, n_demos, lo)  # every spec checked before anything is written

    iterator: Iterable[int] = range(len(task_ids))
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=len(task_ids), desc="synthetic LIBERO", unit="file")

    root.mkdir(parents=True, exist_ok=True)
    gt_tasks: dict[str, Any] = {}
    files: list[str] = []
    n_frames = 0
    applied: list[dict] = []
    for i in iterator:
        tid = task_ids[i]
        task = make_task(i, tid, seed)
        trs = by_task[tid]
        trap_rng = np.random.default_rng(np.random.SeedSequence([seed, i, 0x7124]))
        final = task_file_path(root, task, trs)
        with atomic_path(final, suffix=final.suffix) as tmp:
            demos_gt = write_task_file(tmp, task, n_demos, (lo, hi), seed)
            orientation, in_file = trap_task_file(tmp, trs, task, {k: v["T"] for k, v in demos_gt.items()}, trap_rng)
        rel_files, outside = write_copies_and_side_files(root, final, task, trs)
        applied += in_file + outside
        files.extend(rel_files)
        T_total = sum(v["T"] for v in demos_gt.values())
        n_frames += T_total
        gt_tasks[tid] = {
            "index": i,
            "suite": task.suite,
            "stem": task.stem,
            "scene": task.scene,
            "family": task.family,
            "instruction": task.instruction,
            "env_name": task.env_name,
            "state_dim": task.state_dim,
            "files": rel_files,
            "stored_image_orientation": orientation,
            "n_demos": n_demos,
            "total_frames": T_total,
            "demos": demos_gt,
            "traps": [dict(a) for a in applied if a["task"] == tid],
        }
    gt = {
        "format": GENERATOR_VERSION,
        "seed": seed,
        "n_demos": n_demos,
        "len_range": [lo, hi],
        "task_ids": task_ids,
        "tasks": gt_tasks,
        "traps": applied,
        "conventions": {
            "first_frame_sha256": "sha256 of the raw C-order bytes of the UPRIGHT first agentview frame "
            "(uint8 (128,128,3)), before any trap",
            "action_sum": "sum over the raw (T,7) actions array (actions[0] included), before any trap",
        },
    }
    gt_path = root / GROUND_TRUTH_NAME
    stale = _stale_files(root, gt_path, files + [q for a in applied for q in a.get("paths") or []])
    write_json(gt_path, gt)
    for rel in stale:  # files of an earlier generation into the same root: readers would take them as tasks
        (root / rel).unlink(missing_ok=True)
    return {
        "root": str(root),
        "n_tasks": len(task_ids),
        "n_demos_per_task": n_demos,
        "n_demos": len(task_ids) * n_demos,
        "n_frames": n_frames,
        "files": files,
        "ground_truth": str(gt_path),
        "traps": applied,
    }


def task_ids_for(tasks: str, per_suite: int = 4) -> list[str]:
    """The task ids of make_synthetic.py's --tasks: "demo" (per_suite tasks of three suites) or a number N
    (N distinct tasks cycling through the 130 real names)."""
    if tasks == "demo":
        return demo_task_ids(per_suite=per_suite)
    try:
        n = int(tasks)
    except ValueError:
        raise ValueError(f"--tasks must be 'demo' or an integer, got {tasks!r}") from None
    return cycle_task_ids(n)


def summary_lines(summary: dict) -> list[str]:
    """What `generate` wrote, for the console: files, tasks x demos, frames, each trap, the ground truth."""
    lines = [
        f"wrote {len(summary['files'])} file(s) under {summary['root']}: "
        f"{summary['n_tasks']} tasks x {summary['n_demos_per_task']} demos = {summary['n_demos']} demos, "
        f"{summary['n_frames']} frames"
    ]
    for t in summary["traps"]:
        lines.append(f"  trap {t['trap']}: " + t["task"] + (f" demo_{t['demo']}" if "demo" in t else ""))
    return lines + [f"ground truth: {summary['ground_truth']}"]
