"""DMControl collection speed: frames/s of collect_episode on this machine.

Per task: one episode with the random policy, rendered at 224x224 and resized to 128x128 like the
release (the collector's default), and at 128x128 directly (the faster deviation), both including
the environment's start-up; plus the resize alone. One core, headless EGL.
Usage: python bench/bench_dmcontrol.py --out bench/results/dmcontrol.json [--steps 100]
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from dreamer4_libero.data.dmcontrol import collect_episode, resize_like_release

TASKS = ("cartpole-swingup", "reacher-easy", "walker-walk", "cheetah-run")


def run_all(steps: int = 100, log=print) -> dict:
    torch.set_num_threads(1)
    rows = []
    for task in TASKS:
        for size in (224, 128):
            t = time.perf_counter()
            frames, _ = collect_episode(task, seed=0, steps=steps, policy="random", render_size=size)
            dt = time.perf_counter() - t
            rows.append(
                {
                    "task": task,
                    "render_size": size,
                    "frames": len(frames),
                    "seconds": dt,
                    "frames_per_s": len(frames) / dt,
                }
            )
    x = np.random.default_rng(0).integers(0, 256, size=(256, 224, 224, 3), dtype=np.uint8)
    t = time.perf_counter()
    resize_like_release(x)
    resize_fps = len(x) / (time.perf_counter() - t)
    out = {
        "mujoco_gl": os.environ.get("MUJOCO_GL", "egl"),
        "steps_per_episode": steps,
        "rows": rows,
        "mean_frames_per_s_render_224": float(np.mean([r["frames_per_s"] for r in rows if r["render_size"] == 224])),
        "mean_frames_per_s_render_128": float(np.mean([r["frames_per_s"] for r in rows if r["render_size"] == 128])),
        "resize_frames_per_s": resize_fps,
        "notes": "one episode per task and size, environment start-up included, 1 torch thread",
    }
    log(
        f"  dmcontrol: {out['mean_frames_per_s_render_224']:.1f} frames/s rendered at 224, "
        f"{out['mean_frames_per_s_render_128']:.1f} at 128, resize alone {resize_fps:.0f}"
    )
    return out
