"""Run identity: which checkpoint folder a training run resumes from (snakemake_slurm.md §4, §6).

A run's checkpoints live in `<ckpt_root>/<run_name>/<identity hash[:16]>/`, outside every declared
output, so Snakemake's retries (and forced reruns, and extended runs with more `max_steps`) resume.
The hash is sha256 of the canonical JSON of everything that changes what the run learns:

- the run's config section without the keys that only say how long, how often or where it runs
  (`VOLATILE_KEYS`: max_steps, save_every, logging, resources, workers, retries, ...), and without
  later-added keys at their default (`NEUTRAL_DEFAULTS`: tokenizer_chunk null; a task may add its own,
  as the dynamics runs do for lr_schedule constant, which the tokenizer had from the start);
- the global batch (per-process batch × world size);
- a fingerprint of its own training data: sha256 over its sorted training episodes' ids with their
  manifest fingerprints (T, first-frame sha256, raw action sums), so regenerated or real data with
  the same names is new data; never the probe lists;
- the sha256 of every checkpoint that enters the loss (the init checkpoint, the frozen tokenizer)
  and the tokenizer choice;
- the run's `fresh_tag` (a per-run config key: a new tag = a truly fresh run; its retries resume).

`identity.json` beside the checkpoints records the inputs; the engine's `attempts.jsonl` there keeps
each attempt's history (Snakemake wipes `log:` files on retry).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from ..fileio import read_json, write_json
from ..job_sizing import SCHEDULING_KEYS

#: config keys that never change what a run learns (excluded from the identity)
VOLATILE_KEYS = (
    frozenset(
        {
            "nonfinite",
            "nonfinite_max_skips",  # what to do after a NaN loss: a rerun may switch it and resume
            "max_steps",
            "save_every",
            "keep_last",
            "log_every",
            "eval",
            "run_name",
            "enabled",
            "note",
            "stand_in_for",
            "label",
            "name",
            "runnable",
            "not_run_reason",
            "init_paths",
            "init_source",
            "init_note",
            "attention",
            "fused_adamw",
            "compile",
            "activation_checkpointing",  # kernels: the same maths, not bitwise the same floats
        }
    )
    | SCHEDULING_KEYS
)  # where, on what and how long it runs
#: keys added after runs existed, left out of the identity while at their default (so those runs keep their folder)
NEUTRAL_DEFAULTS = {"tokenizer_chunk": None}
IDENTITY_VERSION = 1
HASH_CHARS = 16


def canonical_sha256(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def training_data_fingerprint(manifest_path: str | os.PathLike, episodes: list[str]) -> str:
    """sha256 over the sorted training episodes' (id, T, first-frame sha256, raw action sums)."""
    manifest = read_json(manifest_path)
    demos = {}
    for f in manifest["files"]:
        for d in f.get("demos") or []:
            demos[f"{f['task_id']}/{d['name']}"] = d
    lines = []
    for e in sorted(episodes):
        if e not in demos:
            raise ValueError(f"{manifest_path}: training episode {e!r} is not in the manifest")
        d = demos[e]
        if "first_frame_sha256" not in d or "action_sum" not in d:
            raise ValueError(
                f"{manifest_path}: demo {e!r} has no first_frame_sha256/action_sum (old manifest: rerun preprocessing)"
            )
        lines.append([e, int(d["T"]), d["first_frame_sha256"], [float(x) for x in d["action_sum"]]])
    return canonical_sha256(lines)


def run_identity(
    section: dict,
    *,
    world_size: int,
    data_fingerprint: str,
    checkpoints: dict | None = None,
    tokenizer_choice: str | None = None,
    neutral_defaults: dict | None = None,
) -> tuple[str, dict]:
    """(hash, identity dict) of one training run; see the module docstring for what enters it.
    `neutral_defaults`: the task's own later-added keys, left out while at these values."""
    neutral = {**NEUTRAL_DEFAULTS, **(neutral_defaults or {})}
    cfg = {
        k: v for k, v in sorted(section.items()) if k not in VOLATILE_KEYS and not (k in neutral and v == neutral[k])
    }
    ident = {
        "version": IDENTITY_VERSION,
        "config": cfg,
        "global_batch": int(section["batch_size"]) * int(world_size),
        "data_fingerprint": data_fingerprint,
        "checkpoints": dict(sorted((checkpoints or {}).items())),
        "tokenizer_choice": tokenizer_choice,
        "fresh_tag": section.get("fresh_tag") or "",
    }
    return canonical_sha256(ident), ident


def identity_dir(
    ckpt_root: str | os.PathLike, run_name: str, identity_hash: str, identity: dict, write: bool = True
) -> Path:
    """`<ckpt_root>/<run_name>/<hash[:16]>/`, created with identity.json (checked when it exists).
    `write=False` (every rank but global rank 0) only names the folder: one writer, on any number of nodes."""
    d = Path(ckpt_root) / run_name / identity_hash[:HASH_CHARS]
    if not write:
        return d
    path = d / "identity.json"
    if path.exists():
        old = read_json(path)
        if old.get("sha256") != identity_hash:
            raise ValueError(
                f"{path}: holds identity {old.get('sha256')}, expected {identity_hash} "
                "(hash prefix collision or an edited file)"
            )
    else:
        d.mkdir(parents=True, exist_ok=True)
        write_json(path, {"sha256": identity_hash, "identity": identity, "created": time.time()})
    return d


def world_size() -> int:
    """All ranks of the run, over all nodes (torchrun's WORLD_SIZE): the global batch is per node-independent."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def global_rank() -> int:
    """This process's rank over all nodes (torchrun's RANK; 0 outside torchrun), as the engine reads it."""
    return int(os.environ.get("RANK", "0")) if world_size() > 1 else 0


def resolve_run_dir(ckpt_root: str | os.PathLike, section: dict, identity_inputs: dict) -> Path:
    """The identity folder of a run from its config section and its task's `identity_inputs()`; only global
    rank 0 creates it and writes identity.json (the engine's process group starts later; the others only
    need the path, and read checkpoints from it once rank 0 has chosen one)."""
    h, ident = run_identity(section, world_size=world_size(), **identity_inputs)
    name = section["run_name"] if "run_name" in section else section["name"]
    return identity_dir(ckpt_root, name, h, ident, write=global_rank() == 0)
