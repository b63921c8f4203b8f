#!/usr/bin/env python
"""Sanity checks on preprocessed data (rule `data_sanity`): frame-difference ridge probe on
held-out tasks in idm and policy mode, plus a picture of upright sample frames per task."""

import argparse
import json
from pathlib import Path

import numpy as np

from dreamer4_libero.cli import run_main
from dreamer4_libero.data.loader import episode_list
from dreamer4_libero.data.shards import ShardStore
from dreamer4_libero.evaluation.baselines import frame_diff_probe
from dreamer4_libero.fileio import write_json
from dreamer4_libero.reporting.plots import frame_grid, r2_per_dim_bars


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--probe-dir", required=True, help="splits/probe/seed<s> folder")
    ap.add_argument("--resolution", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-json", required=True)
    ap.add_argument("--out-png", required=True)
    ap.add_argument("--frames-png", required=True)
    a = ap.parse_args()
    store = ShardStore(a.manifest)
    pd = Path(a.probe_dir)
    train = episode_list(pd / "probe_train.json")
    evals = {
        "probe_eval_test": episode_list(pd / "probe_eval_test.json"),
        "probe_eval_train": episode_list(pd / "probe_eval_train.json"),
    }
    out = {
        mode: frame_diff_probe(store, train, evals, mode=mode, resolution=a.resolution, seed=a.seed)
        for mode in ("idm", "policy")
    }
    write_json(a.out_json, out)
    for mode, r in out.items():
        e = r["eval"]["probe_eval_test"]
        print(
            f"frame_diff {mode:6s} held-out tasks: R2 uniform {e['r2_uniform']:+.3f}, dims 0-5 "
            f"{e['r2_mean_dims_0_5']:+.3f}, per dim " + json.dumps({k: round(v, 3) for k, v in e["r2_per_dim"].items()})
        )
    r2_per_dim_bars(
        {m: out[m]["eval"]["probe_eval_test"] for m in out},
        a.out_png,
        "frame_diff ridge probe on held-out tasks (idm should beat policy)",
    )
    rows = {}
    for task, shard in list(store.shards.items())[:12]:
        ep = shard.episodes[0]
        frames, _ = store.episode(ep.episode_id)
        idx = np.linspace(0, ep.T - 1, 8).astype(int)
        rows[task.split("/", 1)[1][:48]] = np.asarray(frames[idx])
    frame_grid(rows, a.frames_png, "upright agentview frames (demo_0 of each task, 8 evenly spaced frames)")


if __name__ == "__main__":
    run_main(main, "data_sanity")
