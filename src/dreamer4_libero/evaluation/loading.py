"""Load a trained world-model run for evaluation (frozen tokenizer + dynamics, never the aux head),
and the provenance block every result record carries."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

from ..fileio import read_json, sha256_file
from ..models.tokenizer_chunks import resolve_chunk, tokenizer_train_seq_len
from ..models.upstream import load_dynamics_checkpoint, load_frozen_tokenizer, read_checkpoint


def need(mapping: dict, key: str, where: str):
    """mapping[key], or a ValueError naming the file and the key."""
    if key not in mapping:
        raise ValueError(f"{where}: key '{key}' missing")
    return mapping[key]


def load_run(checkpoint_json: str, resolution: int | None = None, device: str = "cpu") -> tuple:
    """(tokenizer, dynamics, info) from results/train/<variant>/checkpoint.json.

    The tokenizer is the one the run was trained with (`args.tokenizer_ckpt`), checked against the
    sha256 recorded in the checkpoint's args. Only the `dynamics` state dict is loaded (strict), so an
    aux head cannot enter the features or rollouts; this is asserted. `device` "auto" = CUDA if present.
    info["tokenizer_chunk"]: the chunk length the run encodes its windows in (`args.tokenizer_chunk`, recorded
    resolved by the trainer; absent = None, the whole window); info["tokenizer_train_seq_len"]: the tokenizer's own.
    """
    if not os.path.exists(checkpoint_json):
        raise FileNotFoundError(f"checkpoint json not found: {checkpoint_json}")
    ck = read_json(checkpoint_json)
    path = need(ck, "path", checkpoint_json)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{checkpoint_json}: checkpoint {path} not found")
    _, args, raw = read_checkpoint(path)
    if not isinstance(raw.get("dynamics"), dict):
        raise ValueError(f"{path}: no 'dynamics' state dict (keys: {sorted(raw)})")
    where = f"{path} ['args']"
    tok_path = need(args, "tokenizer_ckpt", where)
    packing = int(need(args, "packing_factor", where))
    if not os.path.exists(tok_path):
        raise FileNotFoundError(f"{where}['tokenizer_ckpt']: tokenizer checkpoint {tok_path} not found")
    tok_sha = sha256_file(tok_path)
    if args.get("tokenizer_sha256") and args["tokenizer_sha256"] != tok_sha:
        raise ValueError(
            f"{where}['tokenizer_sha256'] = {args['tokenizer_sha256']} but {tok_path} now hashes to "
            f"{tok_sha}: the tokenizer changed since this model was trained (rerun the dynamics stage)"
        )
    tok, _ = load_frozen_tokenizer(tok_path)
    if resolution is not None and (tok.cfg.H != resolution or tok.cfg.W != resolution):
        raise ValueError(f"resolution {resolution} but the tokenizer {tok_path} takes {tok.cfg.H}x{tok.cfg.W} frames")
    if tok.cfg.n_latents % packing:
        raise ValueError(f"{where}['packing_factor'] = {packing} does not divide n_latents {tok.cfg.n_latents}")
    dyn, report = load_dynamics_checkpoint(raw, explicit={"n_spatial": tok.cfg.n_latents // packing})
    aux = [n for n, _ in dyn.named_parameters() if "aux" in n]
    if aux:
        raise ValueError(f"{path}: aux parameters in the evaluated world model: {aux[:5]}")
    if dyn.cfg.d_spatial != tok.cfg.d_bottleneck * packing:
        raise ValueError(
            f"{path}: dynamics expects packed latents of width {dyn.cfg.d_spatial}, the tokenizer "
            f"gives {tok.cfg.d_bottleneck} x packing {packing}"
        )
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    info = {
        "variant": need(ck, "run_name", checkpoint_json),
        "checkpoint": path,
        "checkpoint_sha256": need(ck, "sha256", checkpoint_json),
        "step": ck.get("step"),
        "tokenizer_path": tok_path,
        "tokenizer_sha256": tok_sha,
        "space_mode": dyn.cfg.space_mode,
        "seq_len": int(args.get("seq_len", 32)),
        "packing_factor": packing,
        "tokenizer_chunk": resolve_chunk(args.get("tokenizer_chunk"), tok_path, f"{where}['tokenizer_chunk']"),
        "tokenizer_train_seq_len": tokenizer_train_seq_len(tok_path)[0],
        "n_params": {
            "tokenizer": sum(p.numel() for p in tok.parameters()),
            "dynamics": sum(p.numel() for p in dyn.parameters()),
        },
        "dynamics_config": dyn.cfg.to_dict(),
        "args": args,
        "load_report": report,
        "device": str(dev),
    }
    return tok.to(dev), dyn.to(dev), info


def versions() -> dict:
    """Library and code versions recorded in every result file."""
    import sklearn

    try:
        code = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
                cwd=Path(__file__).resolve().parent,
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        code = "unknown"
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "sklearn": sklearn.__version__,
        "code": code,
    }
