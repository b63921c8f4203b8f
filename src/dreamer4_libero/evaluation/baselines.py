"""Feature-free sanity probe on the data: ridge on frame differences (evaluation.md §1.8).

On held-out tasks, a correct pipeline decodes the action from o_{t+1} - o_t (idm mode) far better
than from o_t - o_{t-1} (policy mode, only the previous action's effect is visible). A pipeline
that forgets the +1 of libero_data.md §3.2 reports the policy-mode number where it claims idm.
"""

from __future__ import annotations

import numpy as np

from ..data.loader import area_downsample
from ..data.shards import ShardStore, parse_episode_id
from .features import frame_diff, probe_targets
from .probe import run_probe

DIM_NAMES = ("x", "y", "z", "rx", "ry", "rz", "gripper")


def episode_design(store: ShardStore, episodes: list[str], mode: str, resolution: int):
    """Stack frame_diff features, targets a_t and task groups over episodes (H = 1, all valid t)."""
    xs, ys, groups = [], [], []
    for e in episodes:
        frames, raw = store.episode(e)
        t, y = probe_targets(raw, horizon=1)  # idm needs t+1 <= T-1: the same t range
        xs.append(frame_diff(area_downsample(frames, resolution), t, mode))
        ys.append(y)
        groups += [parse_episode_id(e)[0]] * len(t)
    return np.concatenate(xs), np.concatenate(ys), np.array(groups)


def frame_diff_probe(
    store: ShardStore,
    train_eps: list[str],
    eval_sets: dict[str, list[str]],
    *,
    mode: str,
    resolution: int = 32,
    seed: int = 0,
    pca_components: int = 256,
) -> dict:
    """Ridge on frame differences; alpha by task-grouped CV on the train episodes."""
    X, Y, g = episode_design(store, train_eps, mode, resolution)
    evals = {}
    for name, eps in eval_sets.items():
        Xe, Ye, _ = episode_design(store, eps, mode, resolution)
        evals[name] = (Xe, Ye)
    res = run_probe(X, Y, g, evals, seed=seed, pca_components=pca_components)
    out = {
        "feature": "frame_diff",
        "probe_mode": mode,
        "resolution": resolution,
        "seed": seed,
        "pca_components": pca_components,
        "alpha": res["alpha"],
        "alpha_on_grid_edge": res["alpha_on_grid_edge"],
        "n_train_frames": int(len(Y)),
        "n_train_tasks": int(len(set(g))),
        "eval": {},
    }
    for name, r in res["eval"].items():
        per_dim = [None if (v is None or np.isnan(v)) else float(v) for v in r["r2_per_dim"]]
        dims05 = [v for v in per_dim[:6] if v is not None]
        out["eval"][name] = {
            "r2_uniform": float(r["r2_uniform"]),
            "r2_varweighted": float(r["r2_varweighted"]),
            "r2_per_dim": dict(zip(DIM_NAMES, per_dim)),
            "r2_mean_dims_0_5": float(np.mean(dims05)) if dims05 else None,
            "gripper_sign_acc": r.get("gripper_sign_acc"),
            "n_frames": int(r["n_frames"]),
        }
    return out
