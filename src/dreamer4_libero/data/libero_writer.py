"""The synthetic generator's LIBERO-format writer (libero_data.md §2, §3; data_contracts.md).

:func:`write_task_file` writes one clean task file with the exact layout, dtypes, attributes and
time convention of the released LIBERO files, filled with demos of the toy world
(``synthetic_world.py``). Time convention (real files, §3.2): ``obs/*[k]`` and ``robot_states[k]``
show the state *after* ``actions[k]``; ``states[k]`` is the state *before* it, so
``obs/joint_states[k] == states[k+1][1:8]`` exactly. Images are rendered upright and stored
vertically flipped (``macros_image_convention = "opengl"``).

Demo k of task i is deterministic from ``(seed, i, k)``; identical arguments give byte-identical files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..fileio import sha256_bytes
from .synthetic_world import IMAGE_SIZE, Task, simulate_demo


# --------------------------------------------------------------------------------------------
# Metadata strings
# --------------------------------------------------------------------------------------------
def _bddl_path(task: Task) -> str:
    return f"/home/libero/LIBERO/libero/libero/bddl_files/{task.suite}/{task.stem}.bddl"


def bddl_content(task: Task) -> str:
    objs = "\n".join(f"    obj_{i} - synthetic_{task.obj_shape[i]}" for i in range(task.n_obj))
    return (
        f"(define (problem {task.env_name.replace('Libero_', 'LIBERO_')})\n"
        f"  (:domain robosuite)\n"
        f"  (:language {task.instruction})\n"
        f"  (:regions\n    (goal_region\n        (:target main_table)\n    )\n  )\n"
        f"  (:objects\n{objs}\n  )\n"
        f"  (:goal\n    (And (In obj_{task.target} goal_region))\n  )\n)\n"
    )


def _problem_info(task: Task) -> str:
    return json.dumps(
        {"problem_name": task.problem_name, "domain_name": "robosuite", "language_instruction": task.instruction}
    )


def _env_args(task: Task) -> str:
    controller = {
        "type": "OSC_POSE",
        "input_max": 1,
        "input_min": -1,
        "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5],
        "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5],
        "kp": 150,
        "damping_ratio": 1,
        "impedance_mode": "fixed",
        "kp_limits": [0, 300],
        "damping_ratio_limits": [0, 10],
        "position_limits": None,
        "orientation_limits": None,
        "uncouple_pos_ori": True,
        "control_delta": True,
        "interpolation": None,
        "ramp_ratio": 0.2,
    }
    env_kwargs = {
        "robots": ["Panda"],
        "controller_configs": controller,
        "bddl_file_name": _bddl_path(task),
        "has_renderer": False,
        "has_offscreen_renderer": True,
        "ignore_done": True,
        "use_camera_obs": True,
        "camera_depths": False,
        "camera_names": ["robot0_eye_in_hand", "agentview"],
        "reward_shaping": True,
        "control_freq": 20,
        "camera_heights": IMAGE_SIZE,
        "camera_widths": IMAGE_SIZE,
        "camera_segmentations": None,
    }
    return json.dumps(
        {
            "type": 1,
            "env_name": task.env_name,
            "problem_name": task.problem_name,
            "bddl_file": _bddl_path(task),
            "env_kwargs": env_kwargs,
        }
    )


def _model_xml(task: Task, d: int) -> str:
    bodies = "".join(
        f'<body name="obj_{i}" pos="{task.obj_xy[i, 0] * 0.01:.3f} {task.obj_xy[i, 1] * 0.01:.3f} 0.9">'
        f'<freejoint/><geom type="{"sphere" if task.obj_shape[i] == "disc" else "box"}" size="0.02"/></body>'
        for i in range(task.n_obj)
    )
    return (
        f'<mujoco model="{task.problem_name}"><compiler angle="radian"/>'
        f'<option timestep="0.002"/><worldbody><geom name="table" type="box" size="0.5 0.5 0.02"/>'
        f'<body name="robot0_base"><geom type="cylinder" size="0.06 0.1"/></body>{bodies}'
        f"</worldbody><!-- synthetic demo {d} --></mujoco>"
    )


# --------------------------------------------------------------------------------------------
# Writing one task file
# --------------------------------------------------------------------------------------------
_IMG_KW = dict(compression="gzip", compression_opts=1, chunks=(1, IMAGE_SIZE, IMAGE_SIZE, 3))


def _demo_rng(seed: int, task_index: int, demo_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(task_index), int(demo_index) + 1, 0xD3]))


def write_task_file(path: Path, task: Task, n_demos: int, len_range: tuple[int, int], seed: int) -> dict:
    """Write a clean task file at ``path``; return ground truth per demo."""
    demos_gt: dict[str, Any] = {}
    lo, hi = len_range
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        total = 0
        for d in range(n_demos):
            rng = _demo_rng(seed, task.index, d)
            T = int(rng.integers(lo, hi + 1))
            demo = simulate_demo(task, rng, T)
            a = demo.actions  # (T, 7)
            rewards = np.zeros(T, np.uint8)
            rewards[-1] = 1
            g = data.create_group(f"demo_{d}")
            g.attrs["num_samples"] = np.int64(T)
            g.attrs["model_file"] = _model_xml(task, d)
            g.attrs["init_state"] = demo.states[0].copy()
            obs = g.create_group("obs")
            obs.create_dataset("agentview_rgb", data=demo.agentview[:, ::-1], **_IMG_KW)
            obs.create_dataset("eye_in_hand_rgb", data=demo.eye_in_hand[:, ::-1], **_IMG_KW)
            obs.create_dataset("joint_states", data=np.ascontiguousarray(demo.joints))
            obs.create_dataset("gripper_states", data=demo.gripper)
            obs.create_dataset("ee_pos", data=demo.ee_pos)
            obs.create_dataset("ee_ori", data=demo.ee_ori)
            obs.create_dataset("ee_states", data=np.concatenate([demo.ee_pos, demo.ee_ori], -1))
            g.create_dataset("actions", data=a)
            g.create_dataset("states", data=demo.states)
            g.create_dataset("robot_states", data=np.concatenate([demo.gripper, demo.ee_pos, demo.ee_quat], -1))
            g.create_dataset("rewards", data=rewards)
            g.create_dataset("dones", data=rewards.copy())
            total += T
            demos_gt[f"demo_{d}"] = {
                "T": T,
                "first_frame_sha256": sha256_bytes(np.ascontiguousarray(demo.agentview[0]).tobytes()),
                "action_sum": [float(x) for x in a.sum(0)],
                "action_min": [float(x) for x in a.min(0)],
                "action_max": [float(x) for x in a.max(0)],
                "first_close_index": int(np.argmax(a[:, 6] > 0)) if (a[:, 6] > 0).any() else None,
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
