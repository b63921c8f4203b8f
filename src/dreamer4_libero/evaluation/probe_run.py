"""The `probe` and `probe_baselines` jobs (evaluation.md §1): feature groups, the study, the records.

`probe_groups` decides which (extraction × probe mode) groups a job scores and with which target
frame stride: a world-model variant gets wm_agent / wm_spatial under every extraction and both
modes (strides from `probe_eval.frame_stride`); the baselines job gets the model-free sets
(tok_latent from the study tokenizer, pixels, frame_diff, time_only, lagged_actions, and the demo's
controls) under extraction "none". `run_probe` runs the study (evaluation/probe_study.py) and
writes one record per (feature, extraction, probe mode, H, seed) plus summary.json, the folder
replaced atomically as a whole.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from ..data.shards import ShardStore
from ..fileio import atomic_dir, dumps_json, read_json, sha256_file
from ..models.upstream import load_frozen_tokenizer
from .features import baseline_feature_sets
from .loading import load_run, versions
from .probe_study import PROTOCOL, FeatureGroup, load_probe_lists, record_name, run_study, summarize
from .runtime import eval_autocast, precision_name, run_amp
from .wm_features import EXTRACTIONS, NULL_ACTION, TokenizerFeatures, WorldModelFeatures

PROBE_MODES = ("policy", "idm")


def baseline_groups(
    ev: dict, tokenizer_checkpoint_json: str | None, window: int, resolution: int, device: torch.device
) -> tuple[list[FeatureGroup], dict]:
    """The baselines job's groups (one per probe mode, extraction "none") and its record identity."""
    tok_info, enc = {}, None
    if tokenizer_checkpoint_json:
        ck = read_json(tokenizer_checkpoint_json)
        tok, _ = load_frozen_tokenizer(ck["path"])
        enc = TokenizerFeatures(tok.to(device), resolution=resolution, device=device)
        tok_info = {
            "tokenizer_sha256": ck["sha256"],
            "n_params": {"tokenizer": sum(p.numel() for p in tok.parameters()), "dynamics": None},
        }
    sets = baseline_feature_sets(ev["pixel_resolution"], ev["pca"], enc, window, controls=ev["control_features"])
    identity = {
        "variant": "baselines",
        "checkpoint_sha256": None,
        "space_mode": None,
        "tokenizer_sha256": tok_info.get("tokenizer_sha256"),
        "n_params": tok_info.get("n_params"),
        "null_action": None,
        "window": window,
    }
    groups = [
        FeatureGroup("none", mode, lambda f, r, t, m=mode: {n: fs.extract(f, r, t, m) for n, fs in sets.items()}, sets)
        for mode in PROBE_MODES
    ]
    return groups, identity


def variant_groups(
    ev: dict, checkpoint_json: str, resolution: int, device: torch.device
) -> tuple[list[FeatureGroup], dict, int]:
    """A variant's groups (every extraction × probe mode, strides from `frame_stride`), its record
    identity and its window (the world model's seq_len)."""
    tok, dyn, info = load_run(checkpoint_json, resolution, device)
    window = info["seq_len"]
    wm = WorldModelFeatures(
        tok,
        dyn,
        packing=info["packing_factor"],
        window=window,
        resolution=resolution,
        batch=ev["batch"],
        device=device,
        tokenizer_chunk=info["tokenizer_chunk"],
    )
    identity = {
        "variant": info["variant"],
        "checkpoint_sha256": info["checkpoint_sha256"],
        "tokenizer_chunk": info["tokenizer_chunk"],
        "tokenizer_sha256": info["tokenizer_sha256"],
        "space_mode": info["space_mode"],
        "n_params": info["n_params"],
        "null_action": NULL_ACTION,
        "window": window,
        "n_agent": dyn.cfg.n_agent,
    }
    print(
        f"[probe] {info['variant']}: step {info['step']}, space_mode {info['space_mode']}, window {window}, "
        f"{info['n_params']['dynamics']:,} dynamics params",
        flush=True,
    )
    groups = [
        FeatureGroup(
            ext,
            mode,
            lambda f, r, t, m=mode, x=ext: wm.extract(f, r, t, m, x),
            wm.feature_sets(ext),
            stride=int(ev["frame_stride"].get(f"{mode}_{ext}", 1)),
        )
        for ext in EXTRACTIONS
        for mode in PROBE_MODES
    ]
    return groups, identity, window


def write_records(records: list[dict], out_dir: str, summary: dict) -> None:
    """Every record and summary.json (with each record's sha256 and flags) into `out_dir`, atomically."""
    with atomic_dir(out_dir) as tmp:
        rows = []
        for rec in records:
            path = tmp / record_name(rec)
            path.write_text(dumps_json(rec))
            rows.append(
                {
                    "path": path.name,
                    "sha256": sha256_file(path),
                    "feature": rec["feature"],
                    "extraction": rec["extraction"],
                    "probe_mode": rec["probe_mode"],
                    "H": rec["H"],
                    "seed": rec["seed"],
                    "flags": [k for k, on in rec["flags"].items() if on],
                }
            )
        leak = {f"{rec['feature']}__{rec['extraction']}__{rec['probe_mode']}": rec["leak_tests"] for rec in records}
        summary = {
            "protocol": PROTOCOL,
            "variant": summary["variant"],
            "n_records": len(rows),
            "records": rows,
            "leak_tests": leak,
            **{k: v for k, v in summary.items() if k != "variant"},
        }
        (tmp / "summary.json").write_text(dumps_json(summary))


def run_probe(
    ev: dict,
    *,
    manifest: str,
    probe_root: str,
    seeds: list[int],
    resolution: int,
    out_dir: str,
    device: torch.device,
    checkpoint_json: str | None = None,
    tokenizer_checkpoint_json: str | None = None,
    window: int = 32,
) -> list[dict]:
    """A variant's probe job (`checkpoint_json`) or, without one, the baselines job; `ev` is the validated
    `probe_eval` config section. Returns the records written."""
    t0 = time.perf_counter()
    amp = run_amp(checkpoint_json or tokenizer_checkpoint_json)  # the evaluated run's mixed precision
    store = ShardStore(manifest)
    lists = load_probe_lists(probe_root, seeds)
    if checkpoint_json is None:
        groups, identity = baseline_groups(ev, tokenizer_checkpoint_json, window, resolution, device)
    else:
        groups, identity, window = variant_groups(ev, checkpoint_json, resolution, device)
    identity["versions"] = versions()
    print(f"[probe] device {device}, precision {precision_name(device, amp)} (amp {amp})", flush=True)
    with eval_autocast(device, amp):
        records = run_study(
            groups,
            store,
            lists,
            seeds=seeds,
            H_list=ev["H_list"],
            window=window,
            B=ev["bootstrap_B"],
            identity=identity,
            leak_episodes=ev["leak_episodes"],
            leak_targets=ev["leak_targets"],
            n_splits=ev["n_splits"],
            progress=tqdm,
        )
    write_records(
        records,
        out_dir,
        {
            "variant": identity["variant"],
            "seeds": seeds,
            "H_list": sorted(ev["H_list"]),
            "device": device.type,
            "precision": precision_name(device, amp),
            "wall_s": round(time.perf_counter() - t0, 1),
        },
    )
    for line in summarize(records):
        print(f"[probe] {line}", flush=True)
    print(f"[probe] {len(records)} records -> {out_dir}", flush=True)
    return records
