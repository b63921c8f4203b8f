"""The released DMControl checkpoints of nicklashansen/dreamer4, and what the study does without them.

The published DMControl-initialised runs started from the two files of the upstream release (its
README, "Checkpoints"): a tokenizer trained 90k steps and a world model trained 40k steps with actions,
both 128x128, 30 tasks, in the upstream checkpoint format (dreamer4_model.md §8; loaded by
models/upstream.py). `make fetch-dmcontrol` puts them in `dmcontrol_init.released_dir` (default
`assets/dmcontrol/`, kept out of git) with a record of their sha256; config `dmcontrol_init.source:
released` (the paper config) uses them. Without them, the DAG stops at parse time
(`check_dmcontrol_files`) naming the two ways on: fetch them, or pretrain (`source: pretrain`), with
what the pretraining costs under the config (`pretrain_cost`).
"""

from __future__ import annotations

import os
from pathlib import Path

from .fetch import RemoteFile

HF_REPO = "nicklashansen/dreamer4"
#: where the files are served: <base>/<file name>; $D4L_DMCONTROL_URL or --base-url override it (tests,
#: mirrors)
BASE_URL = f"https://huggingface.co/{HF_REPO}/resolve/main"
BASE_URL_ENV = "D4L_DMCONTROL_URL"
TOKENIZER_FILE = "tokenizer_ckpt.pt"
DYNAMICS_FILE = "dynamics_ckpt.pt"
RECORD_FILE = "fetch_record.json"
DEFAULT_DIR = "assets/dmcontrol"
#: known sha256 of the release files: none is published (the upstream README and the spec give none),
#: so the first fetch records them in RECORD_FILE and every later fetch is verified against that record
KNOWN_SHA256: dict[str, str | None] = {TOKENIZER_FILE: None, DYNAMICS_FILE: None}

#: DMControl collection speed, frames/s on one core (docs/bench/bench_cpu.json, `make bench`, 2026-12-02:
#: 40.8 rendered at 224 px and resized, 52.9 rendered at 128 px)
COLLECT_FRAMES_PER_S = {224: 40.8, 128: 52.9}
FRAME_BYTES = 128 * 128 * 3  # one uint8 (128,128,3) frame in the shards


def release_files() -> list[RemoteFile]:
    return [RemoteFile(n, n, KNOWN_SHA256[n]) for n in (TOKENIZER_FILE, DYNAMICS_FILE)]


def base_url(override: str | None = None) -> str:
    return override or os.environ.get(BASE_URL_ENV) or BASE_URL


def release_paths(released_dir: str) -> dict[str, str]:
    """{tokenizer, dynamics} paths of the release files in `released_dir`."""
    return {
        "tokenizer": f"{released_dir.rstrip('/')}/{TOKENIZER_FILE}",
        "dynamics": f"{released_dir.rstrip('/')}/{DYNAMICS_FILE}",
    }


def pretrain_cost(cfg: dict) -> dict:
    """What `dmcontrol_init.source: pretrain` runs under this config: the collection's frames, hours on
    one core and shard bytes; the two trainings' steps, GPUs and GPU-hours requested (gpus x runtime_min
    of the first attempt)."""
    from ..config import dmcontrol_pretrain_runs

    col = (cfg.get("dmcontrol_pretrain") or {}).get("collect") or {}
    frames = len(col["tasks"]) * col["episodes_per_task"] * (col["steps"] + 1)
    rate = COLLECT_FRAMES_PER_S[col["render_size"]]
    runs = dmcontrol_pretrain_runs(cfg)
    train = {}
    for key in ("tokenizer", "dynamics"):
        r = runs[key]
        name = r.get("run_name") or r["name"]
        train[key] = {
            "run": name,
            "steps": r["max_steps"],
            "gpus": r["gpus"],
            "runtime_min": r["runtime_min"],
            "gpu_hours": r["gpus"] * r["runtime_min"] / 60,
        }
    return {
        "frames": frames,
        "collect_hours": frames / rate / 3600,
        "collect_frames_per_s": rate,
        "shard_bytes": frames * FRAME_BYTES,
        "train": train,
        "gpu_hours": sum(t["gpu_hours"] for t in train.values()),
    }


def pretrain_cost_text(cfg: dict) -> str:
    c = pretrain_cost(cfg)
    t, d = c["train"]["tokenizer"], c["train"]["dynamics"]
    return (
        f"collect_dmcontrol renders {c['frames']:,} frames on one core (about {c['collect_hours']:.1f} h at "
        f"{c['collect_frames_per_s']} frames/s, {c['shard_bytes'] / 1e9:.0f} GB of shards), then "
        f"{t['run']} trains {t['steps']:,} steps on {t['gpus']} GPUs and {d['run']} {d['steps']:,} steps on "
        f"{d['gpus']} GPUs: {c['gpu_hours']:.0f} GPU-hours requested ({t['gpus']} x {t['runtime_min']} min + "
        f"{d['gpus']} x {d['runtime_min']} min per attempt)"
    )


def check_dmcontrol_files(cfg: dict) -> None:
    """Parse-time check of the workflow: every DMControl init file a runnable variant needs exists.

    Raises config.ConfigError naming the missing files and the two ways on (fetch the release, or
    `dmcontrol_init.source: pretrain` with its cost). Nothing to check when no runnable variant is
    initialised from files (source pretrain / none, or the DMControl variants disabled)."""
    from ..config import ConfigError, dmcontrol_pretrain_runs, dynamics_variants

    runs = [r for r in dynamics_variants(cfg).values() if r["runnable"] and r["init_from"] == "dmcontrol"]
    if not runs or runs[0]["init_source"] not in ("released", "files"):
        return
    dm = cfg.get("dmcontrol_init") or {}
    source = runs[0]["init_source"]
    paths = (
        release_paths(dm.get("released_dir") or DEFAULT_DIR)
        if source == "released"
        else {k: dm.get(k) for k in ("tokenizer", "dynamics")}
    )
    if dm.get("tokenizer_choice", "dmcontrol") == "study":
        paths.pop("tokenizer")
    ft = dmcontrol_pretrain_runs(cfg)["finetune_tokenizer"]
    if dm.get("tokenizer_choice") == "finetune" and ft.get("init_from"):
        paths["tokenizer"] = ft["init_from"]
    missing = {k: p for k, p in paths.items() if p and not Path(p).is_file()}
    if not missing:
        return
    names = ", ".join(r["name"] for r in runs)
    lines = [f"dmcontrol_init.source is {source}, but these DMControl checkpoints are missing:"]
    lines += [f"    {k}: {p}" for k, p in missing.items()]
    lines.append(f"  The DMControl-initialised variants ({names}) need them. Either:")
    if source == "released":
        lines.append(
            f"  1. fetch the released {HF_REPO} files (on a machine with internet, e.g. the login node): "
            f"`make fetch-dmcontrol` (downloads {TOKENIZER_FILE} and {DYNAMICS_FILE} into "
            f"{dm.get('released_dir') or DEFAULT_DIR}/ and records their sha256; offline, copy them in "
            f"and run `make fetch-dmcontrol FETCH_ARGS='--from DIR'`), or"
        )
    else:
        lines.append(
            "  1. put the files at the paths of dmcontrol_init.tokenizer / dmcontrol_init.dynamics (or use "
            "`dmcontrol_init.source: released` and `make fetch-dmcontrol`), or"
        )
    lines.append(f"  2. set `dmcontrol_init.source: pretrain` to make them in the study: {pretrain_cost_text(cfg)}.")
    lines.append("  (`dmcontrol_init.source: none` skips the DMControl variants instead.)")
    raise ConfigError("\n".join(lines))
