"""Synthetic LIBERO-format dataset generator (libero_data.md §2, §3, §8; data_contracts.md).

Writes ``<root>/<suite>/<stem>_demo.hdf5`` files with the exact layout, dtypes, attributes and
time convention of the released LIBERO files, filled with a toy 2-D world in which every action
dimension has a linearly decodable visual effect:

* the gripper is a bright Gaussian-edged disc (radius 10 px) whose image position follows (x, y)
  (5 px per step at |a| = 1, actions are clipped to ±0.9375 so ≤ 4.7 px: ≥ 1 px at the demo's 32 px
  model resolution for |a| ≥ 0.8; world v1 moved 2 px, 0.5 px at 32 px, too little for a world model
  to be rewarded for using its actions, issue 27);
* z and the three rotation angles are the *positions* of four indicator blobs (radius 8 px,
  ~3 px soft edge) on tracks of a fixed dark panel (bottom band: z, rx; right band: ry, rz), with
  the same 5 px per unit;
* two finger blobs below the gripper whose gap follows the opening;
* 2–3 coloured objects per task; an object under a closing gripper attaches and moves with it,
  and detaches when the gripper opens; a static goal ring per task;
* per-task layout, colours, goals and rotation targets (so action statistics differ by task),
  while the robot and the panel look identical in every task; backgrounds stay in a range whose
  contrast sign against the robot is fixed. Held-out tasks are made of the same ingredients as
  training tasks (as in LIBERO): one robot, three shapes, object colours from one 12-colour palette,
  table and wall colours from six scene families with small jitter (±6 per scene, ±4 per task);
  what is new is the arrangement, the goal and the rotation targets.

Time convention (real files, §3.2): ``obs/*[k]`` and ``robot_states[k]`` show the state *after*
``actions[k]``; ``states[k]`` is the state *before* it, so ``obs/joint_states[k] ==
states[k+1][1:8]`` exactly. Images are rendered upright and stored vertically flipped
(``macros_image_convention = "opengl"``).

Everything is deterministic from ``(seed, task index, demo index)``; files are byte-identical for
identical arguments. Traps (data_contracts.md) are applied as post-write mutations of the
temporary file before it is renamed into place (copies and side files afterwards).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import h5py
import numpy as np

from ..fileio import atomic_path, dumps_json, sha256_bytes
from .tasks import SUITES

__all__ = [
    "GROUND_TRUTH_NAME",
    "TRAP_NAMES",
    "IMAGE_SIZE",
    "cycle_task_ids",
    "demo_task_ids",
    "generate",
    "instruction_for",
    "parse_trap_spec",
    "pixel_of_ee_pos",
    "GRIPPER_RGB",
    "PANEL_RGB",
]

GENERATOR_VERSION = "synthetic-libero-v2"
GROUND_TRUTH_NAME = "_synthetic_ground_truth.json"
IMAGE_SIZE = 128

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
_DEMO_TRAPS = frozenset(name for name, per_demo in _TRAPS.items() if per_demo)
_BYTE_TRAPS = ("corrupt_dataset_header", "corrupt_superblock", "truncated", "zero_bytes")
_NAME_TRAPS = frozenset({"h5_extension", "no_demo_suffix", "outside_suite"})
_COPY_TRAPS = frozenset({"duplicate_suite", "duplicate_copy_name"})
_SIDE_TRAPS = frozenset({"non_hdf5_file"})
_TRAP_PARAMS = {"too_short": {"length"}, "duplicate_suite": {"suite"}, "duplicate_copy_name": {"name"}}

# --------------------------------------------------------------------------------------------
# Rendering geometry (upright image coordinates, pixel centres at integers)
# --------------------------------------------------------------------------------------------
_SCENE = 92  # scene occupies rows/cols [0, 92); the rest is the robot's fixed panel
PX_PER_UNIT = 5.0  # image displacement of one full-scale (|a| = 1) step, every dim (1.25 px at 32 px)
_XY_CENTRE = 46.0  # scene pixel of x = y = 0
_Z_MID = -1.0  # z value drawn at the middle of its track
_H_TRACK_C = 64.0  # horizontal tracks (z, rx): column of value 0
_V_TRACK_C = 46.0  # vertical tracks (ry, rz): row of value 0
_Z_ROW, _RX_ROW = 101.0, 119.0
_RY_COL, _RZ_COL = 101.0, 119.0

# state limits in "step units" (one unit = effect of one step at |a| = 1)
_LIM_LO = np.array([-8.0, -8.0, -12.0, -11.0, -8.0, -8.0])
_LIM_HI = np.array([8.0, 8.0, 10.0, 11.0, 8.0, 8.0])

GRIPPER_RGB = (235.0, 235.0, 228.0)
FINGER_RGB = (225.0, 25.0, 15.0)
PANEL_RGB = (16.0, 16.0, 20.0)
_GROOVE_RGB = (26.0, 26.0, 32.0)
_INDICATOR_RGB = (
    (60.0, 230.0, 240.0),  # z
    (245.0, 225.0, 60.0),  # rx
    (240.0, 80.0, 235.0),  # ry
    (90.0, 240.0, 90.0),  # rz
)
_GRIPPER_R, _GRIPPER_S = 10.0, 1.5
_FINGER_R, _FINGER_S = 4.0, 1.2
_FINGER_DY = 13.0
_IND_R, _IND_S = 8.0, 1.5

# physical mapping (metres / radians per unit): 0.05 m and 0.5 rad per step at |a| = 1 times gain
_POS_GAIN = 0.2  # 0.01 m per unit
_ROT_GAIN = 0.1  # 0.05 rad per unit
_EE_BASE = np.array([-0.05, 0.0, 1.05])
_Z_TABLE = -5.0  # object resting height (units)

# demonstrator
_RHO, _NOISE_STD = 0.8, 0.5
_KP, _P_MAX, _A_MAX = 0.5, 0.8, 0.9375

# scene families: (env_name, problem_name, state dim S, table rgb, wall rgb, n objects)
_FAMILIES: dict[str, tuple[str, str, int, tuple[int, int, int], tuple[int, int, int], int]] = {
    "KITCHEN": ("Libero_Kitchen_Tabletop_Manipulation", "libero_kitchen_tabletop_manipulation", 92,
                (96, 76, 58), (70, 70, 82), 3),
    "LIVING_ROOM": ("Libero_Living_Room_Tabletop_Manipulation",
                    "libero_living_room_tabletop_manipulation", 110, (70, 84, 62), (88, 72, 62), 3),
    "STUDY": ("Libero_Study_Tabletop_Manipulation", "libero_study_tabletop_manipulation", 79,
              (62, 64, 90), (78, 78, 66), 3),
    "SPATIAL": ("Libero_Tabletop_Manipulation", "libero_tabletop_manipulation", 45,
                (88, 86, 80), (60, 66, 74), 2),
    "OBJECT": ("Libero_Floor_Manipulation", "libero_floor_manipulation", 110,
               (92, 80, 70), (66, 60, 56), 3),
    "GOAL": ("Libero_Tabletop_Manipulation", "libero_tabletop_manipulation", 79,
             (78, 68, 96), (64, 74, 64), 3),
}
_SUITE_FAMILY = {"libero_spatial": "SPATIAL", "libero_object": "OBJECT", "libero_goal": "GOAL"}
_SCENE_RE = re.compile(r"^(KITCHEN|LIVING_ROOM|STUDY)_SCENE(\d+)_")
_OBJ_COLOURS = np.array(
    [
        (200, 40, 40), (40, 160, 60), (40, 70, 200), (210, 150, 30), (150, 60, 170),
        (30, 160, 170), (190, 100, 60), (120, 120, 30), (170, 40, 110), (60, 110, 140),
        (20, 20, 20), (140, 80, 40),
    ],
    dtype=np.float64,
)
_SHAPES = ("disc", "square", "diamond")

_Q_HOME = np.array([0.0, -0.16, 0.0, -2.44, 0.0, 2.23, 0.79])
_JOINT_MAP = np.random.default_rng(20240607).normal(0.0, 0.6, size=(7, 6))  # fixed robot


# --------------------------------------------------------------------------------------------
# Task ids and language
# --------------------------------------------------------------------------------------------
def demo_task_ids(per_suite: int = 4,
                  suites: Sequence[str] = ("libero_10", "libero_goal", "libero_spatial")) -> list[str]:
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


def _split_task_id(task_id: str) -> tuple[str, str]:
    if not isinstance(task_id, str) or task_id.count("/") != 1:
        raise ValueError(f"task id must look like '<suite>/<stem>', got {task_id!r}")
    suite, stem = task_id.split("/")
    if not suite or not stem or not re.fullmatch(r"[A-Za-z0-9_\-]+", suite + stem):
        raise ValueError(f"task id must look like '<suite>/<stem>' (letters, digits, _ -), got {task_id!r}")
    return suite, stem


def _family(suite: str, stem: str) -> tuple[str, str]:
    """(family, scene name)."""
    m = _SCENE_RE.match(stem)
    if m:
        return m.group(1), f"{m.group(1)}_SCENE{m.group(2)}"
    fam = _SUITE_FAMILY.get(suite, "GOAL")
    return fam, f"{suite.upper()}_SCENE"


def instruction_for(suite: str, stem: str) -> str:
    """A lower-case instruction shaped like LIBERO's, derived from the stem with small changes."""
    text = _SCENE_RE.sub("", stem).replace("_", " ").lower()
    text = re.sub(r"\s+", " ", text).strip()
    if suite == "libero_spatial":
        text = text.replace("pick up the black bowl", "pick the akita black bowl")
    return text


def _stable_int(*parts: Any) -> int:
    h = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little")


# --------------------------------------------------------------------------------------------
# Task / demo specification
# --------------------------------------------------------------------------------------------
@dataclass
class _Task:
    index: int
    task_id: str
    suite: str
    stem: str
    family: str
    scene: str
    instruction: str
    env_name: str
    problem_name: str
    state_dim: int
    table_rgb: np.ndarray
    wall_rgb: np.ndarray
    n_obj: int
    obj_xy: np.ndarray  # (n, 2) units
    obj_rgb: np.ndarray  # (n, 3)
    obj_shape: list[str]
    obj_radius: np.ndarray  # (n,) px
    target: int
    goal_xy: np.ndarray  # (2,)
    goal_rgb: np.ndarray
    home: np.ndarray  # (6,)
    rot_grasp: np.ndarray  # (3,)
    rot_place: np.ndarray  # (3,)
    z_start: float
    z_carry: float
    z_place: float
    fixture_q: np.ndarray


def _make_task(index: int, task_id: str, seed: int) -> _Task:
    suite, stem = _split_task_id(task_id)
    fam, scene = _family(suite, stem)
    env_name, problem_name, S, table, wall, n_obj = _FAMILIES[fam]
    srng = np.random.default_rng(_stable_int("scene", seed, scene))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 0x7A5C]))
    # backgrounds: family base + scene jitter + task jitter, kept in [45, 120] per channel so the
    # robot (bright) is always lighter and the fingers' G/B channels always darker
    table_rgb = np.clip(np.array(table, float) + srng.uniform(-6, 6, 3) + rng.uniform(-4, 4, 3), 45, 120)
    wall_rgb = np.clip(np.array(wall, float) + srng.uniform(-6, 6, 3) + rng.uniform(-4, 4, 3), 45, 120)
    # object layout: separated points in the scene
    pts: list[np.ndarray] = []
    while len(pts) < n_obj + 1:  # last one is the goal
        p = rng.uniform(-6.0, 6.0, 2)
        if all(np.abs(p - q).max() > 4.0 for q in pts) and (len(pts) < n_obj or np.linalg.norm(p - pts[0]) > 5.0):
            pts.append(p)
    obj_xy = np.array(pts[:n_obj])
    goal_xy = pts[n_obj]
    cidx = rng.choice(len(_OBJ_COLOURS), size=n_obj + 1, replace=False)
    obj_rgb = _OBJ_COLOURS[cidx[:n_obj]] + rng.uniform(-15, 15, (n_obj, 3))
    goal_rgb = _OBJ_COLOURS[cidx[n_obj]] * 0.8 + 20
    shapes = [_SHAPES[int(i)] for i in rng.integers(0, len(_SHAPES), n_obj)]
    home = np.zeros(6)
    home[:2] = rng.uniform(-5.0, 5.0, 2)
    z_start = float(rng.uniform(0.5, 3.0))
    home[2] = z_start
    home[3:] = rng.uniform(-1.0, 1.0, 3)
    return _Task(
        index=index, task_id=task_id, suite=suite, stem=stem, family=fam, scene=scene,
        instruction=instruction_for(suite, stem), env_name=env_name, problem_name=problem_name,
        state_dim=S, table_rgb=table_rgb, wall_rgb=wall_rgb, n_obj=n_obj, obj_xy=obj_xy,
        obj_rgb=np.clip(obj_rgb, 0, 215), obj_shape=shapes,
        obj_radius=rng.uniform(7.0, 9.0, n_obj), target=0, goal_xy=goal_xy,
        goal_rgb=np.clip(goal_rgb, 0, 220), home=home,
        rot_grasp=np.array([rng.uniform(-1.5, 1.5), rng.uniform(-1.5, 1.5), rng.uniform(-3.5, 3.5)]),
        rot_place=np.array([rng.uniform(-1.5, 1.5), rng.uniform(-1.5, 1.5), rng.uniform(-3.5, 3.5)]),
        z_start=z_start, z_carry=float(rng.uniform(0.0, 2.5)), z_place=float(rng.uniform(-3.5, -1.5)),
        fixture_q=srng.uniform(-0.1, 0.1, 64),
    )


@dataclass
class _Rollout:
    actions: np.ndarray  # (T, 7)
    pose: np.ndarray  # (T+1, 6) units
    opening: np.ndarray  # (T+1,) in [0, 1]
    obj: np.ndarray  # (T+1, n, 3) units
    goal: np.ndarray  # (2,) units, this demo's goal
    phases: list[int]


def _rollout(task: _Task, rng: np.random.Generator, T: int) -> _Rollout:
    """Scripted reach → close → lift → carry → open → retreat with AR(1) noise."""
    n = task.n_obj
    obj_xy = task.obj_xy + rng.uniform(-1.0, 1.0, (n, 2))
    goal = task.goal_xy + rng.uniform(-1.0, 1.0, 2)
    pose = np.zeros((T + 1, 6))
    pose[0] = task.home + np.concatenate([rng.uniform(-1.5, 1.5, 3), rng.uniform(-0.75, 0.75, 3)])
    pose[0] = np.clip(pose[0], _LIM_LO + 1, _LIM_HI - 1)
    opening = np.ones(T + 1)
    obj = np.zeros((T + 1, n, 3))
    obj[0, :, :2] = obj_xy
    obj[0, :, 2] = _Z_TABLE
    actions = np.zeros((T, 7))
    phases: list[int] = []
    noise = rng.normal(0.0, _NOISE_STD, 6)
    innov = math.sqrt(1.0 - _RHO**2) * _NOISE_STD
    attached = -1
    phase, t_phase = 0, 0
    wp = np.zeros(6)
    t_reach, t_lift, t_carry = max(4, int(0.45 * T)), max(2, int(0.1 * T)), max(4, int(0.35 * T))
    for k in range(T):
        s = pose[k]
        # ---- phase logic (waypoints are copies, never live references)
        while True:
            if phase == 0:  # reach the target object
                wp = np.concatenate([obj[k, task.target, :2], [_Z_TABLE + 1.0], task.rot_grasp]).copy()
                err = wp - s
                if (np.abs(err[:2]).max() < 0.75 and abs(err[2]) < 1.0) or t_phase >= t_reach:
                    phase, t_phase = 1, 0
                    continue
                grip = -1.0
            elif phase == 1:  # close
                if t_phase == 0:
                    wp = s.copy()
                if t_phase >= 3:
                    phase, t_phase = 2, 0
                    continue
                grip = 1.0
            elif phase == 2:  # lift
                if t_phase == 0:
                    wp = s.copy()
                    wp[2] = task.z_carry
                if abs(wp[2] - s[2]) < 0.75 or t_phase >= t_lift:
                    phase, t_phase = 3, 0
                    continue
                grip = 1.0
            elif phase == 3:  # carry to the goal
                if t_phase == 0:
                    wp = np.concatenate([goal, [task.z_place], task.rot_place]).copy()
                err = wp - s
                if (np.abs(err[:2]).max() < 0.75 and abs(err[2]) < 1.0) or t_phase >= t_carry:
                    phase, t_phase = 4, 0
                    continue
                grip = 1.0
            elif phase == 4:  # open
                if t_phase == 0:
                    wp = s.copy()
                if t_phase >= 3:
                    phase, t_phase = 5, 0
                    continue
                grip = -1.0
            else:  # retreat
                if t_phase == 0:
                    wp = task.home.copy()
                grip = -1.0
            break
        phases.append(phase)
        t_phase += 1
        p = np.clip(_KP * (wp - s), -_P_MAX, _P_MAX)
        a = np.empty(7)
        a[:6] = np.clip(p + noise, -_A_MAX, _A_MAX)
        a[6] = grip
        actions[k] = a
        noise = _RHO * noise + innov * rng.standard_normal(6)
        # ---- dynamics
        s_next = np.clip(s + a[:6], _LIM_LO, _LIM_HI)
        pose[k + 1] = s_next
        o_floor = 0.35 if attached >= 0 else 0.0
        o_next = float(np.clip(opening[k] - 0.3 * grip, o_floor, 1.0))
        ob = obj[k].copy()
        if attached >= 0 and grip < 0:  # detach on open: drop onto the table
            ob[attached, 2] = _Z_TABLE
            attached = -1
            o_next = float(np.clip(opening[k] - 0.3 * grip, 0.0, 1.0))
        if attached < 0 and grip > 0 and o_next < 0.6:
            d = np.abs(ob[:, :2] - s_next[:2]).max(axis=1)
            near = np.where((d < 2.0) & (s_next[2] - ob[:, 2] < 2.5))[0]
            if near.size:
                attached = int(near[np.argmin(d[near])])
                o_next = max(o_next, 0.35)
        if attached >= 0:
            ob[attached] += s_next[:3] - s[:3]
        opening[k + 1] = o_next
        obj[k + 1] = ob
    return _Rollout(actions=actions, pose=pose, opening=opening, obj=obj, goal=goal, phases=phases)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
def pixel_of_ee_pos(ee_pos: np.ndarray) -> np.ndarray:
    """Upright (row, col) image position of the gripper centre for ``ee_pos`` (..., 3) in metres."""
    ee_pos = np.asarray(ee_pos, dtype=np.float64)
    u = (ee_pos[..., :2] - _EE_BASE[:2]) / (0.05 * _POS_GAIN)
    return np.stack([_XY_CENTRE - PX_PER_UNIT * u[..., 1], _XY_CENTRE + PX_PER_UNIT * u[..., 0]], axis=-1)


def _blend(img: np.ndarray, cy: np.ndarray, cx: np.ndarray, radius: float, sigma: float,
           rgb: Sequence[float], shape: str = "disc", ring: bool = False) -> None:
    """Alpha-blend a Gaussian-edged shape centred at (cy[t], cx[t]) into every frame of img."""
    T, H, W, _ = img.shape
    P = int(2 * math.ceil(radius + 3.5 * sigma) + 3)
    cy = np.asarray(cy, np.float64)
    cx = np.asarray(cx, np.float64)
    top = np.clip(np.floor(cy).astype(np.int64) - P // 2, 0, H - P)
    left = np.clip(np.floor(cx).astype(np.int64) - P // 2, 0, W - P)
    rows = top[:, None] + np.arange(P)[None, :]
    cols = left[:, None] + np.arange(P)[None, :]
    dy = (rows - cy[:, None]).astype(np.float32)[:, :, None]
    dx = (cols - cx[:, None]).astype(np.float32)[:, None, :]
    if shape == "square":
        d = np.maximum(np.abs(dy), np.abs(dx))
    elif shape == "diamond":
        d = (np.abs(dy) + np.abs(dx)) * np.float32(1 / math.sqrt(2.0))
    else:
        d = np.sqrt(dy * dy + dx * dx)
    if ring:
        alpha = np.exp(-((d - radius) ** 2) / np.float32(2 * sigma * sigma))
    else:
        over = np.maximum(d - radius, 0.0)
        alpha = np.exp(-(over * over) / np.float32(2 * sigma * sigma))
    ti = np.arange(T)[:, None, None]
    ri = rows[:, :, None]
    ci = cols[:, None, :]
    patch = img[ti, ri, ci]
    patch += alpha[..., None] * (np.asarray(rgb, np.float32) - patch)
    img[ti, ri, ci] = patch


def _static_background(task: _Task, goal_xy: np.ndarray) -> np.ndarray:
    H = W = IMAGE_SIZE
    bg = np.empty((1, H, W, 3), np.float32)
    bg[0] = np.asarray(PANEL_RGB, np.float32)
    rows = np.arange(_SCENE, dtype=np.float32)[:, None]
    shade = (1.0 + 0.08 * (rows / _SCENE - 0.5))[:, :, None]  # gentle lighting gradient
    scene = np.broadcast_to(task.table_rgb.astype(np.float32), (_SCENE, _SCENE, 3)) * shade
    scene[:14] = task.wall_rgb.astype(np.float32)
    bg[0, :_SCENE, :_SCENE] = scene
    # faint grooves of the indicator tracks (fixed)
    g = np.asarray(_GROOVE_RGB, np.float32)
    bg[0, int(_Z_ROW) - 1:int(_Z_ROW) + 2, 8:120] = g
    bg[0, int(_RX_ROW) - 1:int(_RX_ROW) + 2, 8:120] = g
    bg[0, 8:86, int(_RY_COL) - 1:int(_RY_COL) + 2] = g
    bg[0, 8:86, int(_RZ_COL) - 1:int(_RZ_COL) + 2] = g
    gy = np.array([_XY_CENTRE - PX_PER_UNIT * goal_xy[1]])
    gx = np.array([_XY_CENTRE + PX_PER_UNIT * goal_xy[0]])
    _blend(bg, gy, gx, 11.0, 1.5, task.goal_rgb, ring=True)
    return bg


def _render(task: _Task, goal_xy: np.ndarray, pose: np.ndarray, opening: np.ndarray,
            obj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upright agentview and eye-in-hand uint8 frames for the given states (T', ...)."""
    T = pose.shape[0]
    bg = _static_background(task, goal_xy)
    img = np.repeat(bg, T, axis=0)
    # objects (lifted objects a little larger: closer to the camera)
    for i in range(task.n_obj):
        oy = _XY_CENTRE - PX_PER_UNIT * obj[:, i, 1]
        ox = _XY_CENTRE + PX_PER_UNIT * obj[:, i, 0]
        _blend(img, oy, ox, float(task.obj_radius[i]), 1.0, task.obj_rgb[i], shape=task.obj_shape[i])
    gy = _XY_CENTRE - PX_PER_UNIT * pose[:, 1]
    gx = _XY_CENTRE + PX_PER_UNIT * pose[:, 0]
    _blend(img, gy, gx, _GRIPPER_R, _GRIPPER_S, GRIPPER_RGB)
    half_gap = 4.0 + 10.0 * opening
    _blend(img, gy + _FINGER_DY, gx - half_gap, _FINGER_R, _FINGER_S, FINGER_RGB)
    _blend(img, gy + _FINGER_DY, gx + half_gap, _FINGER_R, _FINGER_S, FINGER_RGB)
    # indicators: z, rx on horizontal tracks; ry, rz on vertical tracks
    one = np.ones(T)
    _blend(img, _Z_ROW * one, _H_TRACK_C + PX_PER_UNIT * (pose[:, 2] - _Z_MID), _IND_R, _IND_S, _INDICATOR_RGB[0])
    _blend(img, _RX_ROW * one, _H_TRACK_C + PX_PER_UNIT * pose[:, 3], _IND_R, _IND_S, _INDICATOR_RGB[1])
    _blend(img, _V_TRACK_C - PX_PER_UNIT * pose[:, 4], _RY_COL * one, _IND_R, _IND_S, _INDICATOR_RGB[2])
    _blend(img, _V_TRACK_C - PX_PER_UNIT * pose[:, 5], _RZ_COL * one, _IND_R, _IND_S, _INDICATOR_RGB[3])
    np.clip(img, 0.0, 255.0, out=img)
    np.rint(img, out=img)
    agent = img.astype(np.uint8)
    # eye-in-hand: 64×64 crop centred a little ahead of the gripper, upsampled ×2 (nearest)
    cy = np.clip(np.rint(gy - 6).astype(np.int64) - 32, 0, IMAGE_SIZE - 64)
    cx = np.clip(np.rint(gx).astype(np.int64) - 32, 0, IMAGE_SIZE - 64)
    win = np.lib.stride_tricks.sliding_window_view(agent, (64, 64), axis=(1, 2))  # (T, 65, 65, 3, 64, 64)
    crop = win[np.arange(T), cy, cx].transpose(0, 2, 3, 1)  # (T, 64, 64, 3)
    eye = np.broadcast_to(crop[:, :, None, :, None, :], (T, 64, 2, 64, 2, 3)).reshape(T, IMAGE_SIZE, IMAGE_SIZE, 3)
    return agent, np.ascontiguousarray(eye)


# --------------------------------------------------------------------------------------------
# Low-dimensional arrays
# --------------------------------------------------------------------------------------------
def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of (..., 4) quaternions stored (x, y, z, w)."""
    ax, ay, az, aw = np.moveaxis(a, -1, 0)
    bx, by, bz, bw = np.moveaxis(b, -1, 0)
    return np.stack([
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    ], axis=-1)


def _axis_quat(axis: int, ang: np.ndarray) -> np.ndarray:
    q = np.zeros(ang.shape + (4,))
    q[..., axis] = np.sin(ang / 2)
    q[..., 3] = np.cos(ang / 2)
    return q


def _ee_quat(rot_units: np.ndarray) -> np.ndarray:
    """eef quaternion (x, y, z, w): gripper pointing down (π about x) then small x/y/z rotations."""
    ang = rot_units * (0.5 * _ROT_GAIN)
    down = _axis_quat(0, np.full(ang.shape[:-1], math.pi))
    q = _quat_mul(down, _axis_quat(0, ang[..., 0]))
    q = _quat_mul(q, _axis_quat(1, ang[..., 1]))
    q = _quat_mul(q, _axis_quat(2, ang[..., 2]))
    return q


def _quat2axisangle(q: np.ndarray) -> np.ndarray:
    """robosuite's conversion: angle = 2 acos(w) in [0, 2π] (not wrapped at π)."""
    w = np.clip(q[..., 3], -1.0, 1.0)
    den = np.sqrt(np.maximum(1.0 - w * w, 0.0))
    angle = 2.0 * np.arccos(w)
    safe = np.where(den > 1e-12, den, 1.0)
    out = q[..., :3] * (angle / safe)[..., None]
    return np.where((den > 1e-12)[..., None], out, 0.0)


def _joints(pose: np.ndarray) -> np.ndarray:
    """7 'arm joint' values, a fixed smooth function of the eef pose (identical robot everywhere)."""
    p = pose * np.array([0.01, 0.01, 0.01, 0.05, 0.05, 0.05])
    return _Q_HOME + p @ _JOINT_MAP.T + 0.05 * np.sin(3.0 * p @ _JOINT_MAP.T)


def _fingers(opening: np.ndarray) -> np.ndarray:
    f = 0.0008 + 0.0382 * opening
    return np.stack([f, -(f + 0.0001 * opening)], axis=-1)


def _ee_pos(pose: np.ndarray) -> np.ndarray:
    return _EE_BASE + pose[..., :3] * (0.05 * _POS_GAIN)


def _full_states(task: _Task, ro: _Rollout) -> np.ndarray:
    """(T+1, S) flattened 'MuJoCo' states [time, qpos..., qvel...] for every simulator step."""
    Tp1 = ro.pose.shape[0]
    n = task.n_obj
    joints = _joints(ro.pose)
    fing = _fingers(ro.opening)
    obj_pos = _EE_BASE + ro.obj * (0.05 * _POS_GAIN)
    obj_q = np.zeros((Tp1, n, 4))
    obj_q[..., 0] = 1.0  # MuJoCo free-joint quaternion (w, x, y, z), upright
    qpos_core = np.concatenate([joints, fing, np.concatenate([obj_pos, obj_q], -1).reshape(Tp1, -1)], -1)
    vel = np.zeros_like(qpos_core)
    vel[1:] = (qpos_core[1:] - qpos_core[:-1]) * 20.0
    # velocities: joints 7, fingers 2, objects 6 (linear = d pos, angular = 0)
    obj_v = np.zeros((Tp1, n, 6))
    obj_v[:, :, :3] = vel[:, 9:].reshape(Tp1, n, 7)[:, :, :3]
    qvel_core = np.concatenate([vel[:, :9], obj_v.reshape(Tp1, -1)], -1)
    S = task.state_dim
    extra = S - 1 - qpos_core.shape[1] - qvel_core.shape[1]
    time = (np.arange(Tp1) + 5) * 0.05
    if extra >= 0:
        eq = extra // 2
        ev = extra - eq
        fixt = np.broadcast_to(np.resize(task.fixture_q, eq), (Tp1, eq))
        full = np.concatenate([time[:, None], qpos_core, fixt, qvel_core, np.zeros((Tp1, ev))], -1)
    else:
        full = np.concatenate([time[:, None], qpos_core, qvel_core], -1)[:, :S]
    return np.ascontiguousarray(full, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Metadata strings
# --------------------------------------------------------------------------------------------
def _bddl_path(task: _Task) -> str:
    return f"/home/libero/LIBERO/libero/libero/bddl_files/{task.suite}/{task.stem}.bddl"


def _bddl_content(task: _Task) -> str:
    objs = "\n".join(f"    obj_{i} - synthetic_{task.obj_shape[i]}" for i in range(task.n_obj))
    return (
        f"(define (problem {task.env_name.replace('Libero_', 'LIBERO_')})\n"
        f"  (:domain robosuite)\n"
        f"  (:language {task.instruction})\n"
        f"  (:regions\n    (goal_region\n        (:target main_table)\n    )\n  )\n"
        f"  (:objects\n{objs}\n  )\n"
        f"  (:goal\n    (And (In obj_{task.target} goal_region))\n  )\n)\n"
    )


def _problem_info(task: _Task) -> str:
    return json.dumps({"problem_name": task.problem_name, "domain_name": "robosuite",
                       "language_instruction": task.instruction})


def _env_args(task: _Task) -> str:
    controller = {
        "type": "OSC_POSE", "input_max": 1, "input_min": -1,
        "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5],
        "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5],
        "kp": 150, "damping_ratio": 1, "impedance_mode": "fixed", "kp_limits": [0, 300],
        "damping_ratio_limits": [0, 10], "position_limits": None, "orientation_limits": None,
        "uncouple_pos_ori": True, "control_delta": True, "interpolation": None, "ramp_ratio": 0.2,
    }
    env_kwargs = {
        "robots": ["Panda"], "controller_configs": controller, "bddl_file_name": _bddl_path(task),
        "has_renderer": False, "has_offscreen_renderer": True, "ignore_done": True,
        "use_camera_obs": True, "camera_depths": False,
        "camera_names": ["robot0_eye_in_hand", "agentview"], "reward_shaping": True,
        "control_freq": 20, "camera_heights": IMAGE_SIZE, "camera_widths": IMAGE_SIZE,
        "camera_segmentations": None,
    }
    return json.dumps({"type": 1, "env_name": task.env_name, "problem_name": task.problem_name,
                       "bddl_file": _bddl_path(task), "env_kwargs": env_kwargs})


def _model_xml(task: _Task, d: int) -> str:
    bodies = "".join(
        f'<body name="obj_{i}" pos="{task.obj_xy[i, 0] * 0.01:.3f} {task.obj_xy[i, 1] * 0.01:.3f} 0.9">'
        f'<freejoint/><geom type="{"sphere" if task.obj_shape[i] == "disc" else "box"}" size="0.02"/></body>'
        for i in range(task.n_obj)
    )
    return (f'<mujoco model="{task.problem_name}"><compiler angle="radian"/>'
            f'<option timestep="0.002"/><worldbody><geom name="table" type="box" size="0.5 0.5 0.02"/>'
            f'<body name="robot0_base"><geom type="cylinder" size="0.06 0.1"/></body>{bodies}'
            f"</worldbody><!-- synthetic demo {d} --></mujoco>")


# --------------------------------------------------------------------------------------------
# Writing one task file
# --------------------------------------------------------------------------------------------
_IMG_KW = dict(compression="gzip", compression_opts=1, chunks=(1, IMAGE_SIZE, IMAGE_SIZE, 3))


def _demo_rng(seed: int, task_index: int, demo_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(task_index), int(demo_index) + 1, 0xD3]))


def _write_task_file(path: Path, task: _Task, n_demos: int, len_range: tuple[int, int],
                     seed: int) -> dict:
    """Write a clean task file at ``path``; return ground truth per demo."""
    demos_gt: dict[str, Any] = {}
    lo, hi = len_range
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        total = 0
        for d in range(n_demos):
            rng = _demo_rng(seed, task.index, d)
            T = int(rng.integers(lo, hi + 1))
            ro = _rollout(task, rng, T)
            full = _full_states(task, ro)
            states = full[:T]
            after = slice(1, T + 1)
            agent, eye = _render(task, ro.goal, ro.pose[after], ro.opening[after], ro.obj[after])
            joints = full[1:T + 1, 1:8]
            fing = _fingers(ro.opening[after])
            ee_pos = _ee_pos(ro.pose[after])
            quat = _ee_quat(ro.pose[after, 3:6])
            ee_ori = _quat2axisangle(quat)
            robot_states = np.concatenate([fing, ee_pos, quat], -1)
            rewards = np.zeros(T, np.uint8)
            rewards[-1] = 1
            g = data.create_group(f"demo_{d}")
            g.attrs["num_samples"] = np.int64(T)
            g.attrs["model_file"] = _model_xml(task, d)
            g.attrs["init_state"] = states[0].copy()
            obs = g.create_group("obs")
            obs.create_dataset("agentview_rgb", data=agent[:, ::-1], **_IMG_KW)
            obs.create_dataset("eye_in_hand_rgb", data=eye[:, ::-1], **_IMG_KW)
            obs.create_dataset("joint_states", data=np.ascontiguousarray(joints))
            obs.create_dataset("gripper_states", data=fing)
            obs.create_dataset("ee_pos", data=ee_pos)
            obs.create_dataset("ee_ori", data=ee_ori)
            obs.create_dataset("ee_states", data=np.concatenate([ee_pos, ee_ori], -1))
            g.create_dataset("actions", data=ro.actions)
            g.create_dataset("states", data=states)
            g.create_dataset("robot_states", data=robot_states)
            g.create_dataset("rewards", data=rewards)
            g.create_dataset("dones", data=rewards.copy())
            total += T
            demos_gt[f"demo_{d}"] = {
                "T": T,
                "first_frame_sha256": sha256_bytes(np.ascontiguousarray(agent[0]).tobytes()),
                "action_sum": [float(x) for x in ro.actions.sum(0)],
                "action_min": [float(x) for x in ro.actions.min(0)],
                "action_max": [float(x) for x in ro.actions.max(0)],
                "first_close_index": int(np.argmax(ro.actions[:, 6] > 0)) if (ro.actions[:, 6] > 0).any() else None,
            }
        data.attrs["env_name"] = task.env_name
        data.attrs["problem_info"] = _problem_info(task)
        data.attrs["env_args"] = _env_args(task)
        data.attrs["bddl_file_name"] = _bddl_path(task)
        data.attrs["macros_image_convention"] = "opengl"
        data.attrs["num_demos"] = np.int64(n_demos)
        data.attrs["total"] = np.int64(total)
        data.attrs["tag"] = "libero-v1"
    return demos_gt


# --------------------------------------------------------------------------------------------
# Traps
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
        grp.create_dataset(key, data=data, compression="gzip", compression_opts=1,
                           chunks=(1,) + tuple(data.shape[1:]))
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


def _apply_h5_trap(f: h5py.File, tr: dict, task: _Task, demo_T: dict[str, int], rng: np.random.Generator) -> dict:
    """Mutate an open file for one h5py-level trap. Returns notes for the ground truth."""
    name = tr["trap"]
    data = f["data"]
    k = int(tr.get("demo", 0))
    dn = f"demo_{k}"
    notes: dict[str, Any] = {}
    g = data[dn] if (name in _DEMO_TRAPS and dn in data) else None
    if name in _DEMO_TRAPS and g is None:
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
        a[row, col] = {"actions_nan": np.nan, "actions_inf": np.inf,
                       "actions_out_of_range": 1.5, "gripper_not_pm1": 0.3}[name]
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
        data.attrs["bddl_file_content"] = _bddl_content(task)
    elif name == "problem_info_malformed":
        data.attrs["problem_info"] = "{not json"
    elif name == "env_args_missing":
        del data.attrs["env_args"]
    elif name == "num_demos_wrong":
        data.attrs["num_demos"] = np.int64(int(data.attrs["num_demos"]) + 5)
        data.attrs["total"] = np.int64(int(data.attrs["total"]) + 100)
    elif name == "extra_keys":
        T = demo_T[dn]
        g["obs"].create_dataset("agentview_depth", data=np.zeros((T, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32),
                                compression="gzip", compression_opts=1, chunks=(1, IMAGE_SIZE, IMAGE_SIZE, 1))
        nxt = g.create_group("next_obs")
        nxt.create_dataset("joint_states", data=g["obs/joint_states"][()])
        mask = data.create_group("mask")
        names = sorted((n for n in data.keys() if re.fullmatch(r"demo_\d+", n)),
                       key=lambda s: int(s[5:]))
        mask.create_dataset("train", data=np.array([n.encode() for n in names], dtype="S16"))
        data.attrs["bddl_file_content"] = _bddl_content(task)
    else:  # pragma: no cover
        raise AssertionError(f"not an h5py-level trap: {name}")
    return notes


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


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


def generate(root: str | os.PathLike, task_ids: Sequence[str], n_demos: int = 12,
             len_range: tuple[int, int] = (48, 80), seed: int = 0, traps: Iterable[Any] = (),
             progress: bool = True) -> dict:
    """Write a synthetic LIBERO-format dataset under ``root``; return a summary dict.

    One file ``<root>/<suite>/<stem>_demo.hdf5`` per task id (``<suite>/<stem>``), ``n_demos``
    demos each, T drawn uniformly from ``len_range`` (inclusive). Task i is deterministic from
    ``(seed, i)`` and its demo k from ``(seed, i, k)``; identical arguments give byte-identical
    files. Each file is written to a temporary name, trapped, then renamed into place.

    ``traps``: specs accepted by :func:`parse_trap_spec` (dicts ``{"trap", "task", "demo", ...}``,
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
        _split_task_id(t)
    stems = [t.split("/")[1] for t in task_ids]
    if len(set(stems)) != len(stems):
        raise ValueError("the same stem appears in two suites; use the duplicate_suite trap for that")
    if not isinstance(n_demos, (int, np.integer)) or n_demos < 1:
        raise ValueError(f"n_demos must be an integer ≥ 1, got {n_demos!r}")
    lo, hi = (int(len_range[0]), int(len_range[1]))
    if lo < 2 or hi < lo:
        raise ValueError(f"len_range must satisfy 2 ≤ min ≤ max, got {tuple(len_range)}")
    seed = int(seed)

    # ---- traps: normalise and validate up front (nothing written on a bad spec)
    by_task: dict[str, list[dict]] = {t: [] for t in task_ids}
    trap_list: list[dict] = []
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
        if tr["trap"] in _DEMO_TRAPS:
            k = int(tr.get("demo", 0))
            if not 0 <= k < n_demos:
                raise ValueError(f"trap {tr['trap']!r}: demo {k} out of range 0..{n_demos - 1}")
            tr["demo"] = k
        else:
            tr.pop("demo", None)
        if tr["trap"] == "too_short":
            L = int(tr.get("length", 1))
            if L < 0 or L >= lo:
                raise ValueError(f"trap too_short: length must be in 0..{lo - 1}, got {L}")
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
        trap_list.append(tr)

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
        task = _make_task(i, tid, seed)
        trs = by_task[tid]
        names = {t["trap"] for t in trs}
        trap_rng = np.random.default_rng(np.random.SeedSequence([seed, i, 0x7124]))
        # final location (renaming traps)
        folder = root if "outside_suite" in names else root / task.suite
        base = task.stem if "no_demo_suffix" in names else f"{task.stem}_demo"
        ext = ".h5" if "h5_extension" in names else ".hdf5"
        final = folder / f"{base}{ext}"
        orientation = "upside_down"
        with atomic_path(final, suffix=ext) as tmp:
            demos_gt = _write_task_file(tmp, task, n_demos, (lo, hi), seed)
            demo_T = {k: v["T"] for k, v in demos_gt.items()}
            h5_trs = [t for t in trs if t["trap"] not in _NAME_TRAPS | _COPY_TRAPS | _SIDE_TRAPS
                      and t["trap"] not in _BYTE_TRAPS]
            if h5_trs:
                with h5py.File(tmp, "r+") as f:
                    for t in h5_trs:
                        notes = _apply_h5_trap(f, t, task, demo_T, trap_rng)
                        orientation = notes.get("stored_orientation", orientation)
                        applied.append({**t, **notes})
            for bname in _BYTE_TRAPS:  # header corruption needs a readable file: before the others
                for t in trs:
                    if t["trap"] == bname:
                        notes = _apply_byte_trap(tmp, bname, trap_rng, t.get("demo"))
                        applied.append({**t, **notes})
        rel_files = [final.relative_to(root).as_posix()]
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
                _write_text(root / task.suite / "README.txt",
                            "Synthetic LIBERO-format data. Not an HDF5 file; readers must ignore it.\n")
                _write_text(root / task.suite / "notes.json",
                            dumps_json({"note": "not a task file", "task": tid}))
                applied.append({**t, "paths": [f"{task.suite}/README.txt", f"{task.suite}/notes.json"]})
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
    _write_text(gt_path, dumps_json(gt))
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
