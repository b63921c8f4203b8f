"""Atomic file writes and hashing shared by every stage.

Nothing half-written may look complete: every writer goes to a temporary path in the
same folder, fsyncs, then renames over the final name (``os.replace`` is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def fsync_dir(path: Path) -> None:
    """fsync a folder so a rename or unlink inside it is durable (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_temp_re(final_name_re: str) -> re.Pattern:
    """Names ``atomic_path`` gives the temp files of finals whose name matches ``final_name_re``."""
    return re.compile(rf"^\.{final_name_re}\..*\.tmp.*$")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path next to ``final`` (named as ``atomic_temp_re`` says); rename it onto ``final``
    if the block succeeds; the temp file is removed either way."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
        fsync_dir(final.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, fsync_files: bool = True) -> Iterator[Path]:
    """Yield a fresh temp folder; on success it replaces ``final`` as a whole.

    ``fsync_files=False`` skips flushing the files to disk before the rename (the rename itself
    stays atomic, so a killed process never leaves a complete-looking folder); callers that do
    this must verify the contents when they reuse the folder (see data/preprocess.py).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        for f in tmp.iterdir() if fsync_files else ():
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        fsync_dir(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def dumps_json(obj: Any) -> str:
    """Canonical JSON text: sorted keys, 2-space indent, trailing newline (byte-stable)."""
    return json.dumps(obj, sort_keys=True, indent=2, default=_json_default) + "\n"


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write canonical JSON."""
    with atomic_path(path) as tmp:
        tmp.write_text(dumps_json(obj))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as fh:
        return json.load(fh)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# checkpoint loading without arbitrary code execution

#: environment switch the workflow sets from config `trust_checkpoint` (rules/common.smk)
TRUST_ENV = "D4L_TRUST_CHECKPOINT"


class CheckpointTrustError(RuntimeError):
    """A checkpoint needs arbitrary unpickling (it could run code) and was not explicitly trusted."""


def trusted_by_config() -> bool:
    return os.environ.get(TRUST_ENV, "0").strip().lower() in ("1", "true", "yes")


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu", trust: bool | None = None) -> Any:
    """``torch.load(path, weights_only=True)``: tensors, containers, numbers and strings only, so a
    crafted file cannot execute code. A file that needs more raises CheckpointTrustError naming it and
    why, unless ``trust`` (default: config ``trust_checkpoint`` via $D4L_TRUST_CHECKPOINT) is set; then
    it is loaded with full unpickling and a warning."""
    import pickle
    import warnings

    import torch

    trust = trusted_by_config() if trust is None else trust
    try:
        return torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        why = str(e).strip().splitlines()
        reason = next((ln for ln in why if "GLOBAL" in ln or "Unsupported" in ln), why[0] if why else "?")
        if not trust:
            raise CheckpointTrustError(
                f"{path}: refusing to load: it needs arbitrary unpickling, which can run code from the file "
                f"({reason.strip()}). Pipeline checkpoints never need this; if you trust where this file comes "
                f"from, set `trust_checkpoint: true` in the config (or {TRUST_ENV}=1)"
            ) from None
        warnings.warn(f"{path}: loading with full unpickling because trust_checkpoint is set ({reason.strip()})")
        return torch.load(str(path), map_location=map_location, weights_only=False)
