"""The synthetic generator's toy 2-D world (libero_data.md §8): tasks, a scripted demonstrator, rendering.

A world in which every LIBERO action dimension has a linearly decodable visual effect:

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

:func:`make_task` builds task ``index`` deterministically from ``(seed, index)``; :func:`simulate_demo`
runs one demo from a caller's generator and returns its arrays already in LIBERO's time convention
(see :class:`DemoArrays`); ``libero_writer.py`` stores them.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

IMAGE_SIZE = 128  # rendered frames are (IMAGE_SIZE, IMAGE_SIZE, 3), as LIBERO's agentview

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
    "KITCHEN": (
        "Libero_Kitchen_Tabletop_Manipulation",
        "libero_kitchen_tabletop_manipulation",
        92,
        (96, 76, 58),
        (70, 70, 82),
        3,
    ),
    "LIVING_ROOM": (
        "Libero_Living_Room_Tabletop_Manipulation",
        "libero_living_room_tabletop_manipulation",
        110,
        (70, 84, 62),
        (88, 72, 62),
        3,
    ),
    "STUDY": (
        "Libero_Study_Tabletop_Manipulation",
        "libero_study_tabletop_manipulation",
        79,
        (62, 64, 90),
        (78, 78, 66),
        3,
    ),
    "SPATIAL": ("Libero_Tabletop_Manipulation", "libero_tabletop_manipulation", 45, (88, 86, 80), (60, 66, 74), 2),
    "OBJECT": ("Libero_Floor_Manipulation", "libero_floor_manipulation", 110, (92, 80, 70), (66, 60, 56), 3),
    "GOAL": ("Libero_Tabletop_Manipulation", "libero_tabletop_manipulation", 79, (78, 68, 96), (64, 74, 64), 3),
}
_SUITE_FAMILY = {"libero_spatial": "SPATIAL", "libero_object": "OBJECT", "libero_goal": "GOAL"}
_SCENE_RE = re.compile(r"^(KITCHEN|LIVING_ROOM|STUDY)_SCENE(\d+)_")
_OBJ_COLOURS = np.array(
    [
        (200, 40, 40),
        (40, 160, 60),
        (40, 70, 200),
        (210, 150, 30),
        (150, 60, 170),
        (30, 160, 170),
        (190, 100, 60),
        (120, 120, 30),
        (170, 40, 110),
        (60, 110, 140),
        (20, 20, 20),
        (140, 80, 40),
    ],
    dtype=np.float64,
)
_SHAPES = ("disc", "square", "diamond")

_Q_HOME = np.array([0.0, -0.16, 0.0, -2.44, 0.0, 2.23, 0.79])
_JOINT_MAP = np.random.default_rng(20240607).normal(0.0, 0.6, size=(7, 6))  # fixed robot


# --------------------------------------------------------------------------------------------
# Task ids and language
# --------------------------------------------------------------------------------------------
def split_task_id(task_id: str) -> tuple[str, str]:
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
class Task:
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


def make_task(index: int, task_id: str, seed: int) -> Task:
    suite, stem = split_task_id(task_id)
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
    return Task(
        index=index,
        task_id=task_id,
        suite=suite,
        stem=stem,
        family=fam,
        scene=scene,
        instruction=instruction_for(suite, stem),
        env_name=env_name,
        problem_name=problem_name,
        state_dim=S,
        table_rgb=table_rgb,
        wall_rgb=wall_rgb,
        n_obj=n_obj,
        obj_xy=obj_xy,
        obj_rgb=np.clip(obj_rgb, 0, 215),
        obj_shape=shapes,
        obj_radius=rng.uniform(7.0, 9.0, n_obj),
        target=0,
        goal_xy=goal_xy,
        goal_rgb=np.clip(goal_rgb, 0, 220),
        home=home,
        rot_grasp=np.array([rng.uniform(-1.5, 1.5), rng.uniform(-1.5, 1.5), rng.uniform(-3.5, 3.5)]),
        rot_place=np.array([rng.uniform(-1.5, 1.5), rng.uniform(-1.5, 1.5), rng.uniform(-3.5, 3.5)]),
        z_start=z_start,
        z_carry=float(rng.uniform(0.0, 2.5)),
        z_place=float(rng.uniform(-3.5, -1.5)),
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


def _rollout(task: Task, rng: np.random.Generator, T: int) -> _Rollout:
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


def _blend(
    img: np.ndarray,
    cy: np.ndarray,
    cx: np.ndarray,
    radius: float,
    sigma: float,
    rgb: Sequence[float],
    shape: str = "disc",
    ring: bool = False,
) -> None:
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


def _static_background(task: Task, goal_xy: np.ndarray) -> np.ndarray:
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
    bg[0, int(_Z_ROW) - 1 : int(_Z_ROW) + 2, 8:120] = g
    bg[0, int(_RX_ROW) - 1 : int(_RX_ROW) + 2, 8:120] = g
    bg[0, 8:86, int(_RY_COL) - 1 : int(_RY_COL) + 2] = g
    bg[0, 8:86, int(_RZ_COL) - 1 : int(_RZ_COL) + 2] = g
    gy = np.array([_XY_CENTRE - PX_PER_UNIT * goal_xy[1]])
    gx = np.array([_XY_CENTRE + PX_PER_UNIT * goal_xy[0]])
    _blend(bg, gy, gx, 11.0, 1.5, task.goal_rgb, ring=True)
    return bg


def _render(
    task: Task, goal_xy: np.ndarray, pose: np.ndarray, opening: np.ndarray, obj: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
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
    return np.stack(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ],
        axis=-1,
    )


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


def _full_states(task: Task, ro: _Rollout) -> np.ndarray:
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
# One demo
# --------------------------------------------------------------------------------------------
@dataclass
class DemoArrays:
    """One demo of T steps in LIBERO's time convention (libero_data.md §3.2): ``states[k]`` is the
    simulator state *before* ``actions[k]``; every observation ``[k]`` shows the state *after* it."""

    actions: np.ndarray  # (T, 7) raw demonstrator actions, gripper ±1
    states: np.ndarray  # (T, S) flattened 'MuJoCo' states [time, qpos..., qvel...], S = task.state_dim
    joints: np.ndarray  # (T, 7) == states[k + 1][1:8] (a view of the (T+1, S) states)
    agentview: np.ndarray  # (T, 128, 128, 3) uint8, upright
    eye_in_hand: np.ndarray  # (T, 128, 128, 3) uint8, upright
    gripper: np.ndarray  # (T, 2) finger positions
    ee_pos: np.ndarray  # (T, 3) metres
    ee_quat: np.ndarray  # (T, 4) (x, y, z, w)
    ee_ori: np.ndarray  # (T, 3) axis-angle of ee_quat


def simulate_demo(task: Task, rng: np.random.Generator, T: int) -> DemoArrays:
    """Roll the scripted demonstrator out for T steps (drawing from ``rng``) and render what it sees."""
    ro = _rollout(task, rng, T)
    full = _full_states(task, ro)  # (T+1, S)
    after = slice(1, T + 1)
    agent, eye = _render(task, ro.goal, ro.pose[after], ro.opening[after], ro.obj[after])
    quat = _ee_quat(ro.pose[after, 3:6])
    return DemoArrays(
        actions=ro.actions,
        states=full[:T],
        joints=full[1 : T + 1, 1:8],
        agentview=agent,
        eye_in_hand=eye,
        gripper=_fingers(ro.opening[after]),
        ee_pos=_ee_pos(ro.pose[after]),
        ee_quat=quat,
        ee_ori=_quat2axisangle(quat),
    )
