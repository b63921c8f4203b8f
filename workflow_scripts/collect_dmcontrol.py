#!/usr/bin/env python
"""Render DeepMind Control Suite episodes into training shards (rule `collect_dmcontrol`).

Writes <out>/shards/dmcontrol/<task>/, <out>/manifest.json and <out>/splits/train.json (every episode);
a task whose shard folder is complete with the same options is reused, so a killed run resumes.
Headless rendering is checked first (data/headless_gl.py): without EGL it exits 2 naming MUJOCO_GL, what
was tried and the alternatives, before writing anything.
"""

import argparse
import time

from dreamer4_libero.cli import run_main
from dreamer4_libero.config import parse_section
from dreamer4_libero.data.dmcontrol import STOCK_TASKS, collect
from dreamer4_libero.data.headless_gl import check_headless_rendering


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--collect", required=True, help="JSON of the config's dmcontrol_pretrain.collect section")
    ap.add_argument("--out", required=True)
    ap.add_argument("--progress", default="true")
    a = ap.parse_args()
    c = parse_section(a.collect, "dmcontrol_pretrain.collect", "--collect")
    skipped = [t for t in STOCK_TASKS if t not in c["tasks"]]
    print(
        f"[collect_dmcontrol] {len(c['tasks'])} task(s): {', '.join(c['tasks'])}; {c['episodes_per_task']} "
        f"episode(s) x {c['steps']} steps, policy {c['policy']}, rendered at {c['render_size']}",
        flush=True,
    )
    if skipped:
        print(f"[collect_dmcontrol] stock tasks not collected: {', '.join(skipped)}", flush=True)
    gl = check_headless_rendering()  # a node without EGL stops here, naming MUJOCO_GL and the alternatives
    print(
        f"[collect_dmcontrol] headless rendering: MUJOCO_GL={gl['MUJOCO_GL']} works "
        f"(probe frame in {gl['probe_s']:.2f} s)",
        flush=True,
    )
    t0 = time.time()
    m = collect(
        a.out,
        c["tasks"],
        episodes=c["episodes_per_task"],
        steps=c["steps"],
        seed=c["seed"],
        policy=c["policy"],
        policy_per_task=c["policy_per_task"],
        render_size=c["render_size"],
        progress=a.progress.lower() != "false",
    )
    dt = time.time() - t0
    n = m["totals"]["frames"]
    print(
        f"[collect_dmcontrol] {m['totals']['demos_kept']} episodes, {n} frames in {dt:.1f} s "
        f"({n / max(dt, 1e-9):.1f} frames/s, reused tasks included) -> {a.out}/manifest.json",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    run_main(main, "collect_dmcontrol")
