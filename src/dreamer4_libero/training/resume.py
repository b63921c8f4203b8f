"""Resuming a run: which checkpoint, where the run continues, what changed, and the attempt records.

* `choose_checkpoint`: rank 0 removes the temp files of interrupted writes and picks the newest valid
  checkpoint; every rank loads that same file.
* `resume_position`: the update count, the data position and the skipped updates to continue from
  (an upstream-format checkpoint stores the index of its last update, ours the number completed).
* `config_diff`: settings that differ from the checkpoint's (warned about; volatile ones excluded).
* `restore_rng`: every rank's RNG state as saved, or a reseed with a warning when the world size changed.
* `attempts.jsonl`: one start and one end record per attempt (`append_jsonl`, `read_attempts`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from .checkpoints import (
    load_checkpoint,
    load_latest_valid,
    remove_stale_temp_files,
    seed_everything,
    set_rng_state,
    to_json_plain,
)

# engine settings that may change between attempts without a warning (the rest is warned about on resume)
VOLATILE_ENGINE_KEYS = {
    "time_limit_min",
    "deadline_margin_s",
    "start_time",
    "progress",
    "max_steps",
    "run_name",
    "ckpt_dir",
    "out_dir",
    "keep_last",
    "save_every",
    "log_every",
    "num_threads",
    "metrics_tail",
    "nonfinite",
    "nonfinite_max_skips",
    "tensorboard",
    "image_every",
    "wandb",
    "wandb_project",
    "wandb_entity",
}


def choose_checkpoint(
    ckpt_dir: Path, model_key: str, rank: int, world: int, device: torch.device, log: Callable[[str], None]
) -> tuple[Path | None, dict | None]:
    """(path, checkpoint) to resume from, the same on every rank; (None, None) for a fresh start."""
    path, ck = None, None
    if rank == 0:
        for tmp in remove_stale_temp_files(ckpt_dir):  # we hold the lock: no writer is active
            log(f"removed {tmp.name}: the temp file of a checkpoint write that was interrupted")
        path, ck = load_latest_valid(ckpt_dir, model_key, log=log)
    if world > 1:
        box = [str(path) if path else None]
        dist.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
        if rank != 0 and box[0] is not None:
            path = Path(box[0])
            ck = load_checkpoint(path)
    return path, ck


def resume_position(ck: dict, path: Path, max_steps: int, grad_accum: int) -> tuple[int, int, list[int]]:
    """(completed updates, next data index, skipped updates) a run continues from."""
    upstream = "format" not in ck
    step = int(ck["step"]) + (1 if upstream else 0)  # upstream saves the index of the last update
    if step > max_steps:
        raise ValueError(
            f"checkpoint {path} has step {step} > max_steps {max_steps}; use a fresh --ckpt-dir or raise max_steps"
        )
    data = ck.get("data") or {}
    if data.get("grad_accum", grad_accum) == grad_accum and "next_step" in data:
        data_next = int(data["next_step"])
    else:
        data_next = step * grad_accum
    skipped = [int(u) for u in (ck.get("nonfinite") or {}).get("skipped_updates", [])]
    return step, data_next, skipped


def config_diff(old: dict, new: dict) -> list[str]:
    """`<section>.<key>: old -> new` for the engine and task settings that differ (volatile ones excluded)."""
    diffs = []
    for sec in ("engine", "task"):
        a, b = old.get(sec, {}) or {}, new.get(sec, {}) or {}
        for k in sorted(set(a) | set(b)):
            if sec == "engine" and k in VOLATILE_ENGINE_KEYS:
                continue
            if a.get(k) != b.get(k):
                diffs.append(f"{sec}.{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return diffs


def restore_rng(
    ck: dict, rank: int, world: int, device: torch.device, seed: int, step: int, log: Callable[[str], None]
) -> None:
    """This rank's saved RNG state; without one for this world size, a reseed (and a warning)."""
    same_world = int(ck.get("world_size", 1)) == world
    state = None
    if same_world and world > 1 and ck.get("rng_by_rank"):
        state = ck["rng_by_rank"][rank]
    elif same_world and world == 1 and ck.get("rng"):
        state = ck["rng"]
    if state is not None:
        set_rng_state(state, device)
    else:
        log(
            f"WARNING: checkpoint has no RNG state for world_size {world}; reseeding "
            f"(the continuation is not bitwise that of an uninterrupted run)"
        )
        seed_everything((seed * 1_000_003 + rank * 7919 + step) % 2**31, device)


def read_attempts(ckpt_dir: str | os.PathLike) -> list[dict]:
    """The records of attempts.jsonl (a line cut by a kill is skipped)."""
    p = Path(ckpt_dir) / "attempts.jsonl"
    out = []
    if p.exists():
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def append_jsonl(path: Path, rec: dict) -> None:
    """One record appended and fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(to_json_plain(rec), sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
