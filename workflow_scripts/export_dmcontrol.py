#!/usr/bin/env python
"""The DMControl pretraining's final weights in the upstream layout (rule `pretrain_dmcontrol`).

Reads the pretraining runs' checkpoint.json (tokenizer and dynamics, trained by the study's trainers on
the collect_dmcontrol shards) and writes <out>/tokenizer.pt and <out>/dynamics.pt as the released
nicklashansen/dreamer4 files are laid out (weights + args; no optimizer or RNG state), each loaded back
once to check it, plus <out>/pretrain.json (sources, steps, sha256).
"""

import argparse
import os
from pathlib import Path

import torch

from dreamer4_libero.cli import run_main
from dreamer4_libero.fileio import atomic_path, read_json, sha256_file, write_json
from dreamer4_libero.models.upstream import load_dynamics_checkpoint, load_tokenizer_checkpoint
from dreamer4_libero.reporting.archive import read_engine_checkpoint, upstream_checkpoint


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokenizer-checkpoint-json", required=True)
    ap.add_argument("--dynamics-checkpoint-json", required=True)
    ap.add_argument("--collection-manifest", required=True)
    ap.add_argument("--out-dir", required=True)
    a = ap.parse_args()
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "format": "d4l-dmcontrol-pretrain-v1",
        "collection_manifest": os.path.abspath(a.collection_manifest),
        "collection_manifest_sha256": sha256_file(a.collection_manifest),
        "tasks": read_json(a.collection_manifest)["tasks"],
    }
    for kind, ckj_path, key, check in (
        ("tokenizer", a.tokenizer_checkpoint_json, "model", load_tokenizer_checkpoint),
        ("dynamics", a.dynamics_checkpoint_json, "dynamics", load_dynamics_checkpoint),
    ):
        ckj = read_json(ckj_path)
        up = upstream_checkpoint(read_engine_checkpoint(ckj["path"], ckj.get("sha256")), key)
        final = out / f"{kind}.pt"
        with atomic_path(final) as tmp:
            torch.save(up, tmp)
        check(str(final))  # builds from the state dict, as for the released files
        record[kind] = {
            "path": os.path.abspath(final),
            "sha256": sha256_file(final),
            "step": up["step"],
            "source_checkpoint": ckj["path"],
            "source_checkpoint_json": os.path.abspath(ckj_path),
        }
        print(f"[pretrain_dmcontrol] {kind}: step {up['step']} -> {final}", flush=True)
    write_json(out / "pretrain.json", record)
    return 0


if __name__ == "__main__":
    run_main(main, "pretrain_dmcontrol")
