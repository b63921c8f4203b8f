"""DeepMind Control Suite episodes for the offline DMControl pretraining stage.

The released DMControl world model (nicklashansen/dreamer4) was trained on 30 tasks
(dreamer4_model.md §9.1); this module renders episodes of the stock-dm_control subset with
`dm_control` (dmcontrol_env.md: dm-control 1.0.50 + mujoco 3.17.0, headless EGL, checked before any
rendering work by data/headless_gl.py) and writes them
in the shard format the training loader reads (data/shards.py), so the same trainers pretrain on it.

Conventions, as the released data and as LIBERO:
- frames are rendered at 224x224 (camera 0) and resized to 128x128 like upstream's preprocessing
  (§9.2: float/255, bilinear, align_corners False, clamp, x255, truncate to uint8);
- time alignment is LIBERO's (libero_data.md §3.2): frame 0 = the render after reset; for k >= 1,
  frame k = the render after `step(actions[k])`, so `actions[k]` produced frame k; `actions[0]` = 0;
- actions are stored raw at the task's own width (1-6); the loader pads them to 16 with a mask of
  ones on the task's dims, as upstream's WMDataset does;
- a task keeps its upstream name (`walker-walk`) and its index in the §9.1 list as its identity;
  shards live under `dmcontrol/<name>/`, episodes are `dmcontrol/<name>/demo_<k>`.
Every (task, episode) has its own seed (environment and policy) from the collection seed, so a
replay of the same seed gives the same frames and actions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..fileio import atomic_dir, dumps_json, read_json, write_json
from .headless_gl import check_headless_rendering
from .shards import SHARD_FORMAT, NpyStreamWriter, demo_stats, npy_data_ok
from .splits import SPLIT_FORMAT

#: upstream's task_set.py, in order (the index selects the task embedding and action mask): name -> action dim
UPSTREAM_TASKS: dict[str, int] = {
    "walker-stand": 6,
    "walker-walk": 6,
    "walker-run": 6,
    "cheetah-run": 6,
    "reacher-easy": 2,
    "reacher-hard": 2,
    "acrobot-swingup": 1,
    "pendulum-swingup": 1,
    "cartpole-balance": 1,
    "cartpole-balance-sparse": 1,
    "cartpole-swingup": 1,
    "cartpole-swingup-sparse": 1,
    "cup-catch": 2,
    "finger-spin": 2,
    "finger-turn-easy": 2,
    "finger-turn-hard": 2,
    "hopper-stand": 4,
    "hopper-hop": 4,
    "walker-walk-backward": 6,
    "walker-run-backward": 6,
    "cheetah-run-backward": 6,
    "cheetah-run-front": 6,
    "cheetah-run-back": 6,
    "cheetah-jump": 6,
    "hopper-hop-backward": 4,
    "cup-spin": 2,
    "pendulum-spin": 1,
    "jumper-jump": 2,
    "reacher-three-easy": 3,
    "reacher-three-hard": 3,
}
#: tasks that MMBench's custom environments add (not in stock dm_control): left out, and said so
CUSTOM_TASKS = frozenset(
    {
        "walker-walk-backward",
        "walker-run-backward",
        "cheetah-run-backward",
        "cheetah-run-front",
        "cheetah-run-back",
        "cheetah-jump",
        "hopper-hop-backward",
        "cup-spin",
        "pendulum-spin",
        "jumper-jump",
        "reacher-three-easy",
        "reacher-three-hard",
    }
)
STOCK_TASKS = [t for t in UPSTREAM_TASKS if t not in CUSTOM_TASKS]
ACTION_DIM = 16
RELEASE_SIZE = 128
MANIFEST_FORMAT = "d4l-dmcontrol-manifest-v1"
COLLECTOR_VERSION = "1"
POLICIES = ("random", "smooth", "sine", "zero")


class DMControlError(ValueError):
    """A task or setting the collector cannot use."""


def task_index(name: str) -> int:
    if name not in UPSTREAM_TASKS:
        raise DMControlError(
            f"unknown DMControl task {name!r}: not in upstream's 30-task list ({', '.join(UPSTREAM_TASKS)})"
        )
    return list(UPSTREAM_TASKS).index(name)


def dm_control_name(name: str) -> tuple[str, str]:
    """Upstream `domain-task` -> dm_control's (domain, task): `cup-catch` -> (`ball_in_cup`, `catch`)."""
    task_index(name)
    if name in CUSTOM_TASKS:
        raise DMControlError(
            f"DMControl task {name!r} comes from MMBench's custom environments, not stock "
            f"dm_control; the stock subset is: {', '.join(STOCK_TASKS)}"
        )
    domain, _, task = name.partition("-")
    return ("ball_in_cup" if domain == "cup" else domain), task.replace("-", "_")


def resize_like_release(frames: np.ndarray, size: int = RELEASE_SIZE) -> np.ndarray:
    """uint8 (T,H,W,3) -> uint8 (T,size,size,3) as upstream's preprocess_dataset.py (§9.2)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div(255.0)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    return x.mul(255.0).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()  # .to(uint8) truncates


def make_policy(kind: str, low: np.ndarray, high: np.ndarray, rng: np.random.Generator) -> Callable[[int], np.ndarray]:
    """step k (>= 1) -> action in [low, high]. random: uniform i.i.d.; smooth: AR(1) noise (0.8);
    sine: one sinusoid per dimension with random period and phase; zero: no action."""
    if kind not in POLICIES:
        raise DMControlError(f"unknown DMControl policy {kind!r} (one of {', '.join(POLICIES)})")
    mid, half = (high + low) / 2.0, (high - low) / 2.0
    if kind == "random":
        return lambda k: rng.uniform(low, high)
    if kind == "zero":
        return lambda k: np.clip(np.zeros_like(low), low, high)
    if kind == "sine":
        period = rng.uniform(10.0, 60.0, size=low.shape)
        phase = rng.uniform(0.0, 2 * np.pi, size=low.shape)
        return lambda k: mid + half * np.sin(2 * np.pi * k / period + phase)
    state = {"u": rng.uniform(-1.0, 1.0, size=low.shape)}

    def smooth(k: int) -> np.ndarray:
        state["u"] = 0.8 * state["u"] + 0.6 * rng.standard_normal(low.shape)
        return mid + half * np.clip(state["u"], -1.0, 1.0)

    return smooth


def load_env(name: str, seed: int):
    """The dm_control environment of an upstream task name, headless (EGL unless MUJOCO_GL is set).

    The first call of a process proves that rendering works (headless_gl.check_headless_rendering):
    a node without EGL fails here with the alternatives, not inside dm_control's import."""
    domain, task = dm_control_name(name)
    check_headless_rendering()
    from dm_control import suite

    return suite.load(domain, task, task_kwargs={"random": int(seed)})


def episode_seed(seed: int, name: str, episode: int) -> int:
    return int(np.random.SeedSequence([int(seed), task_index(name), int(episode)]).generate_state(1)[0])


def collect_episode(
    name: str,
    *,
    seed: int,
    steps: int,
    policy: str = "random",
    render_size: int = 224,
    camera_id: int = 0,
    actions: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One episode: (frames uint8 (steps+1, 128, 128, 3), actions float64 (steps+1, A)), LIBERO-aligned.

    `actions` (steps+1, A), if given, are replayed instead of the policy's (actions[0] is ignored)."""
    env = load_env(name, seed)
    spec = env.action_spec()
    low, high = np.asarray(spec.minimum, np.float64), np.asarray(spec.maximum, np.float64)
    width = UPSTREAM_TASKS[name]
    if low.shape != (width,):
        raise DMControlError(f"{name}: dm_control action width {low.shape} differs from upstream's {width}")
    act = np.zeros((steps + 1, width), np.float64)
    if actions is not None:
        actions = np.asarray(actions, np.float64)
        if actions.shape != act.shape:
            raise DMControlError(f"{name}: replayed actions have shape {actions.shape}, expected {act.shape}")
        act[1:] = np.clip(actions[1:], low, high)
    else:
        pick = make_policy(policy, low, high, np.random.default_rng(seed))
        for k in range(1, steps + 1):
            act[k] = np.clip(pick(k), low, high)
    env.reset()
    frames = np.empty((steps + 1, render_size, render_size, 3), np.uint8)
    frames[0] = env.physics.render(render_size, render_size, camera_id=camera_id)
    for k in range(1, steps + 1):
        env.step(act[k])  # actions[k] produces frame k
        frames[k] = env.physics.render(render_size, render_size, camera_id=camera_id)
    small = frames if render_size == RELEASE_SIZE else resize_like_release(frames)
    return small, act


def _collect_task(name: str, shard_root: Path, options: dict, bar) -> dict:
    """Write one task's shard folder (or reuse a finished one with the same options); its manifest entry."""
    task_id = f"dmcontrol/{name}"
    final = shard_root / task_id
    entry_path = final / "entry.json"
    if entry_path.exists():
        try:
            old = read_json(entry_path)
            if old.get("options") == options and all(npy_data_ok(final / n) for n in ("frames.npy", "actions.npy")):
                bar.update(options["episodes"] * (options["steps"] + 1))
                return old
        except (OSError, ValueError):
            pass
    width = UPSTREAM_TASKS[name]
    with atomic_dir(final, fsync_files=False) as tmp:
        fw = NpyStreamWriter(tmp / "frames.npy", np.uint8, (RELEASE_SIZE, RELEASE_SIZE, 3))
        aw = NpyStreamWriter(tmp / "actions.npy", np.float64, (width,))
        episodes, demos = [], []
        for e in range(options["episodes"]):
            frames, actions = collect_episode(
                name,
                seed=episode_seed(options["seed"], name, e),
                steps=options["steps"],
                policy=options["policy"],
                render_size=options["render_size"],
            )
            demo = f"demo_{e}"
            episodes.append({"name": demo, "index": e, "start": fw.n, "T": int(len(frames))})
            demos.append(demo_stats(demo, frames, actions))
            fw.write(frames)
            aw.write(actions)
            bar.update(len(frames))
        fw.close()
        aw.close()
        (tmp / "episodes.json").write_text(
            dumps_json({"format": SHARD_FORMAT, "task_id": task_id, "episodes": episodes})
        )
        dm_domain, dm_task = dm_control_name(name)
        entry = {
            "task_id": task_id,
            "upstream_task": name,
            "task_index": task_index(name),
            "dm_control": {"domain": dm_domain, "task": dm_task},
            "action_dim": width,
            "demos_kept": [d["name"] for d in demos],
            "demos_skipped": [],
            "frames": int(fw.n),
            "options": options,
            "demos": demos,
        }
        (tmp / "entry.json").write_text(dumps_json(entry))
    return entry


def collect(
    out_dir: str | os.PathLike,
    tasks: list[str],
    *,
    episodes: int,
    steps: int,
    seed: int = 0,
    policy: str = "random",
    policy_per_task: dict | None = None,
    render_size: int = 224,
    progress: bool = True,
) -> dict:
    """Collect every task into `<out_dir>/shards/`, write `<out_dir>/manifest.json` and the training list
    `<out_dir>/splits/train.json` (all episodes); return the manifest. Finished tasks are reused."""
    if not tasks:
        raise DMControlError("no DMControl task configured (dmcontrol_pretrain.collect.tasks is empty)")
    if render_size not in (RELEASE_SIZE, 224):
        raise DMControlError(f"render_size must be 224 (as the released data) or 128, got {render_size}")
    policy_per_task = dict(policy_per_task or {})
    unknown = sorted(set(policy_per_task) - set(tasks))
    if unknown:
        raise DMControlError(
            f"dmcontrol_pretrain.collect.policy_per_task names tasks that are not collected: {unknown}"
        )
    for t in tasks:
        dm_control_name(t)  # unknown or custom tasks fail before any rendering
    check_headless_rendering()  # so does a node without a working headless OpenGL (no EGL): before any file
    out = Path(out_dir)
    shard_root = out / "shards"
    bar = tqdm(
        total=len(tasks) * episodes * (steps + 1),
        desc="collect_dmcontrol",
        unit="frame",
        disable=not progress,
        dynamic_ncols=True,
    )
    files = []
    try:
        for t in tasks:
            options = {
                "collector_version": COLLECTOR_VERSION,
                "episodes": int(episodes),
                "steps": int(steps),
                "seed": int(seed),
                "policy": policy_per_task.get(t, policy),
                "render_size": int(render_size),
            }
            files.append(_collect_task(t, shard_root, options, bar))
    finally:
        bar.close()
    manifest = {
        "format": MANIFEST_FORMAT,
        "shard_root": "shards",
        "action_dim": ACTION_DIM,
        "tasks": tasks,
        "files": files,
        "totals": {
            "tasks": len(files),
            "demos_kept": sum(len(f["demos_kept"]) for f in files),
            "frames": sum(f["frames"] for f in files),
        },
    }
    write_json(out / "manifest.json", manifest)
    eps = sorted(f"{f['task_id']}/{d}" for f in files for d in f["demos_kept"])
    write_json(
        out / "splits" / "train.json",
        {
            "format": SPLIT_FORMAT,
            "source": "dmcontrol collection",
            "tasks": sorted(f["task_id"] for f in files),
            "episodes": eps,
        },
    )
    return manifest
