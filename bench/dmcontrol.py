#!/usr/bin/env python
"""DMControl collection benchmark (JSON output): frames/s of collect_episode on this machine.

Per task: one episode with the random policy, rendered at 224x224 and resized to 128x128 like the
release (the collector's default), and at 128x128 directly (the faster deviation), both including
the environment's start-up; plus the resize alone. One core, headless EGL.
Usage: python bench/bench_dmcontrol.py --out bench/results/dmcontrol.json [--steps 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from dreamer4_libero.data.dmcontrol import collect_episode, resize_like_release
from dreamer4_libero.fileio import write_json

TASKS = ("cartpole-swingup", "reacher-easy", "walker-walk", "cheetah-run")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=100)
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for task in TASKS:
        for size in (224, 128):
            t = time.perf_counter()
            frames, _ = collect_episode(task, seed=0, steps=a.steps, policy="random", render_size=size)
            dt = time.perf_counter() - t
            rows.append({"task": task, "render_size": size, "frames": len(frames), "seconds": dt,
                         "frames_per_s": len(frames) / dt})
            print(f"{task:18s} render {size}: {len(frames) / dt:7.1f} frames/s")
    x = np.random.default_rng(0).integers(0, 256, size=(256, 224, 224, 3), dtype=np.uint8)
    t = time.perf_counter()
    resize_like_release(x)
    resize_fps = len(x) / (time.perf_counter() - t)
    print(f"resize 224 -> 128 alone: {resize_fps:.0f} frames/s")
    mean224 = float(np.mean([r["frames_per_s"] for r in rows if r["render_size"] == 224]))
    out = {"bench": "dmcontrol_collection", "machine": platform.platform(), "cpu_count": os.cpu_count(),
           "mujoco_gl": os.environ.get("MUJOCO_GL", "egl"), "steps_per_episode": a.steps, "rows": rows,
           "mean_frames_per_s_render_224": mean224,
           "mean_frames_per_s_render_128": float(np.mean([r["frames_per_s"] for r in rows if r["render_size"] == 128])),
           "resize_frames_per_s": resize_fps,
           "notes": "one episode per task and size, environment start-up included, 1 torch thread"}
    write_json(a.out, out)
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
