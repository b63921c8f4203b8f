"""Training checkpoints: atomic step files, newest-valid resolution, RNG capture and a directory lock.

Layout of a checkpoint dir (dreamer4_model.md §8, snakemake_slurm.md §4)::

    <ckpt_dir>/step_0000500.pt     one file per saved update count (the last ``keep_last`` are kept)
    <ckpt_dir>/.lock               the dir lock (dirlock.py): flock target, holds the owner's pid/host/job id
    <ckpt_dir>/.lock.excl          the dir lock's O_EXCL lock file where flock is unavailable (dirlock.py)
    <ckpt_dir>/metrics.jsonl       (metrics.py) append-only training log, kept across attempts
    <ckpt_dir>/attempts.jsonl      (engine.py) one start line and one end line per attempt
    <ckpt_dir>/config.json         (engine.py) resolved config of the finished run

There is no ``latest`` symlink: the newest checkpoint is found by scanning the step files, and a
newest file that does not load (truncated, corrupt bytes caught by the zip CRC-32s, wrong content)
is skipped with a warning in favour of the previous one. Every file is written to a temp file in the
same dir, fsynced, renamed with ``os.replace`` and the dir fsynced, so a kill at any moment leaves
either the old or the new file (a killed write's temp file is removed by the next lock holder); a
failed write (disk full) raises ``CheckpointWriteError`` and leaves the older files as they were. Every file
loads with ``torch.load(weights_only=True)``: it contains only tensors, Python
numbers/str/bool/None and plain lists/tuples/dicts (RNG states in those forms, see ``rng_state``).

Checkpoint dict (upstream keys first): ``step`` (int, number of completed optimizer updates),
``epoch`` (int, always 0: the engine has no epochs), ``<model_key>`` (``model`` or ``dynamics``;
plain state_dict, never DDP-``module.`` or ``_orig_mod.`` prefixed), ``opt`` (AdamW state_dict),
``scaler`` (GradScaler state_dict, ``{}`` without fp16 AMP), ``args`` (plain dict), and
``scale_pos_embeds`` (bool, only when ``args`` has that key); ours: ``rng`` (rank 0's RNG state),
``rng_by_rank`` (list, one state per rank, only for world_size > 1), ``data`` (``{"next_step",
"grad_accum"}``: the next micro-batch index of the data stream), ``world_size``, ``config``
(resolved config dict), ``metrics_tail`` (last metric records), ``format``, ``nonfinite``
(``{"policy", "skipped", "skipped_updates"}``: updates skipped for a NaN/inf loss, engine.py).
"""

from __future__ import annotations

import errno
import math
import os
import random
import re
import shutil
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from ..fileio import atomic_path, atomic_temp_re, fsync_dir, safe_torch_load
from .dirlock import LOCK_NAME, CheckpointLock, CheckpointLockError  # noqa: F401  (the dir lock, re-exported)

FORMAT = "dreamer4_libero.checkpoint/1"
STEP_RE = re.compile(r"^step_(\d{7,})\.pt$")


class CheckpointWarning(UserWarning):
    """A checkpoint file was skipped (unreadable, truncated or invalid)."""


# --------------------------------------------------------------------------------------------
# paths and scanning


def step_path(ckpt_dir: str | os.PathLike, step: int) -> Path:
    return Path(ckpt_dir) / f"step_{int(step):07d}.pt"


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """All ``step_*.pt`` files of the dir as (step, path), oldest first (temp files are ignored)."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_file():
            out.append((int(m.group(1)), p))
    out.sort(key=lambda sp: sp[0])
    return out


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """Path of the highest-step file (not checked for validity; see ``load_latest_valid``)."""
    cks = list_checkpoints(ckpt_dir)
    return cks[-1][1] if cks else None


# --------------------------------------------------------------------------------------------
# atomic save / load


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, file size limit, I/O error); older files are untouched."""


#: fault injection (tests/test_*_train.py, tests/test_engine.py): seconds to sleep inside ``atomic_torch_save``
#: after the temp file is completely written and closed, before ``os.replace`` -- a window in which a test
#: kills the trainer "during a checkpoint write". Off unless set; never set it in production.
FAULT_PAUSE_ENV = "D4L_FAULT_CKPT_WRITE_PAUSE_S"
#: optional: pause only for the file of this name (e.g. ``step_0000006.pt``); unset = every checkpoint write
FAULT_MATCH_ENV = "D4L_FAULT_CKPT_WRITE_MATCH"
#: the line printed (stderr, flushed) when the pause starts; it names the temp file and the final file
FAULT_MARKER = "[fault-injection] checkpoint temp file written"

_TMP_RE = atomic_temp_re(r"step_\d{7,}\.pt")  # atomic_path's temp names for step files


def _fault_pause(tmp: Path, final: Path) -> None:
    secs = os.environ.get(FAULT_PAUSE_ENV)
    if not secs:
        return
    match = os.environ.get(FAULT_MATCH_ENV)
    if match and final.name != match:
        return
    print(
        f"{FAULT_MARKER}: {tmp} -> {final}; pausing {float(secs)} s before os.replace ({FAULT_PAUSE_ENV})",
        file=sys.stderr,
        flush=True,
    )
    time.sleep(float(secs))


def _write_failure(e: BaseException, final: Path) -> str:
    """Why a checkpoint write failed, in words: the OSError in the chain (torch wraps it in a RuntimeError)."""
    err, seen = e, set()
    while err is not None and not isinstance(err, OSError) and id(err) not in seen:
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    hints = {
        errno.ENOSPC: "no space left on device: the disk is full",
        errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "file too large: the file size limit (ulimit -f / RLIMIT_FSIZE) was reached",
    }
    if isinstance(err, OSError) and err.errno in hints:
        why = f"{hints[err.errno]} ({err})"
    else:
        why = f"{type(e).__name__}: {e}"
    try:
        why += f"; {shutil.disk_usage(final.parent).free / 2**20:.0f} MiB free in {final.parent}"
    except OSError:
        pass
    return why


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file in the same dir, fsync, ``os.replace``, fsync the dir.

    A failed write (disk full, file size limit, I/O error) removes the temp file and raises
    ``CheckpointWriteError`` naming the checkpoint and the cause; the files already there are untouched.
    """
    final = Path(path)
    try:
        with atomic_path(final) as tmp:  # fsyncs the temp file before the rename, removes it on failure
            with open(tmp, "wb") as fh:  # a file object: torch's RuntimeError then chains the OSError (errno)
                torch.save(obj, fh)
            _fault_pause(tmp, final)
    except (OSError, RuntimeError) as e:
        raise CheckpointWriteError(
            f"checkpoint write failed: {final}: {_write_failure(e, final)}. The temp file was removed and "
            f"the older checkpoints in {final.parent} are untouched; free space (or lower keep_last) and run "
            f"again to resume from the newest of them"
        ) from e
    return final


def remove_stale_temp_files(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Delete the temp files of step checkpoints a killed writer left behind (``.step_*.pt.*.tmp``).

    Only for the holder of the dir's ``CheckpointLock``: no other writer can be active then. The
    files are never read as checkpoints (``list_checkpoints`` ignores them); this frees their space.
    """
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    removed = []
    for p in d.iterdir():
        if _TMP_RE.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def prune_checkpoints(ckpt_dir: str | os.PathLike, keep_last: int | None, protect: Iterable[Path] = ()) -> list[Path]:
    """Delete all but the ``keep_last`` highest-step files (None or <= 0: keep all)."""
    if not keep_last or keep_last <= 0:
        return []
    protect = {Path(p).resolve() for p in protect}
    removed = []
    for _, p in list_checkpoints(ckpt_dir)[:-keep_last]:
        if p.resolve() in protect:
            continue
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    if removed:
        fsync_dir(Path(ckpt_dir))
    return removed


def save_checkpoint(ckpt_dir: str | os.PathLike, state: dict, keep_last: int | None = None) -> Path:
    """Write ``state`` (must hold an int ``step``) to ``step_{step:07d}.pt`` and prune old files."""
    step = state["step"]
    if not isinstance(step, int) or isinstance(step, bool):
        raise TypeError(f"checkpoint step must be a Python int, got {type(step).__name__}")
    path = atomic_torch_save(state, step_path(ckpt_dir, step))
    prune_checkpoints(ckpt_dir, keep_last, protect=[path])
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load one checkpoint with ``weights_only=True`` (fileio.safe_torch_load)."""
    return safe_torch_load(path, map_location=map_location)


def verify_zip_crc(path: str | os.PathLike) -> None:
    """Raise ValueError if a zip-format torch file fails its CRC-32 checks.

    ``torch.load`` does not check them: bytes overwritten inside a tensor record load silently as wrong
    weights. Non-zip files are left to ``torch.load`` (a truncated zip is not a zip: it fails there).
    """
    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as z:
        bad = z.testzip()
    if bad is not None:
        raise ValueError(f"CRC-32 mismatch in record {bad!r}: the file was changed or damaged after it was written")


def _validate(ckpt: Any, path: Path, model_key: str | None) -> None:
    if not isinstance(ckpt, dict):
        raise ValueError(f"not a dict but {type(ckpt).__name__}")
    step = ckpt.get("step")
    if not isinstance(step, int):
        raise ValueError("no integer 'step'")
    m = STEP_RE.match(path.name)
    if m and int(m.group(1)) != step:
        raise ValueError(f"file name says step {int(m.group(1))} but the file holds step {step}")
    if model_key is not None and not isinstance(ckpt.get(model_key), dict):
        raise ValueError(f"no state dict under key {model_key!r} (keys: {sorted(ckpt)})")


def load_latest_valid(
    ckpt_dir: str | os.PathLike, model_key: str | None = None, map_location: Any = "cpu", log=None
) -> tuple[Path | None, dict | None]:
    """Newest checkpoint that loads and validates, newest first; each skipped file gives a warning.

    Each file's zip CRC-32s are checked first (``verify_zip_crc``): corrupt bytes never resume a run.
    Returns (None, None) when the dir has no loadable checkpoint (fresh start).
    """
    for step, path in reversed(list_checkpoints(ckpt_dir)):
        try:
            verify_zip_crc(path)
            ckpt = load_checkpoint(path, map_location=map_location)
            _validate(ckpt, path, model_key)
        except Exception as e:  # truncated zip, bad pickle, wrong content ...
            msg = f"skipping unreadable checkpoint {path} ({type(e).__name__}: {e}); trying the previous one"
            warnings.warn(msg, CheckpointWarning, stacklevel=2)
            if log is not None:
                log(msg)
            continue
        return path, ckpt
    return None, None


# --------------------------------------------------------------------------------------------
# RNG states in weights_only-safe forms


def rng_state(device: torch.device | None = None) -> dict:
    """torch CPU (+ CUDA of ``device``), python ``random`` and numpy global RNG states."""
    np_state = np.random.get_state(legacy=False)  # {'bit_generator','state':{'key','pos'},'has_gauss','gauss'}
    numpy_state = {
        "bit_generator": str(np_state["bit_generator"]),
        "state": {"key": [int(v) for v in np_state["state"]["key"]], "pos": int(np_state["state"]["pos"])},
        "has_gauss": int(np_state["has_gauss"]),
        "gauss": float(np_state["gauss"]),
    }
    cuda = None
    if device is not None and torch.device(device).type == "cuda":
        cuda = torch.cuda.get_rng_state(torch.device(device))
    return {"torch": torch.get_rng_state(), "cuda": cuda, "python": random.getstate(), "numpy": numpy_state}


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], torch.device(device))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": np.asarray(n["state"]["key"], dtype=np.uint32), "pos": int(n["state"]["pos"])},
            "has_gauss": int(n["has_gauss"]),
            "gauss": float(n["gauss"]),
        }
    )


def seed_everything(seed: int, device: torch.device | None = None) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# plain (weights_only-safe) containers


def to_plain(obj: Any, _path: str = "") -> Any:
    """Recursively convert to types ``torch.load(weights_only=True)`` accepts.

    Paths -> str, numpy scalars -> int/float/bool, numpy arrays -> tensors, tuples/sets -> lists
    (sets sorted), dict keys -> str. Raises TypeError for anything else (functions, objects).
    """
    if obj is None or type(obj) in (bool, int, float, str):
        return obj
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):  # IntEnum & co.
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, str):  # str subclasses such as torch.__version__ (TorchVersion) are refused by weights_only
        return str(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, torch.device):
        return str(obj)
    if isinstance(obj, torch.dtype):
        return str(obj).replace("torch.", "")
    if isinstance(obj, dict):
        return {str(k): to_plain(v, f"{_path}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, f"{_path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        return sorted(to_plain(v, _path) for v in obj)
    raise TypeError(f"cannot store {type(obj).__name__} at {_path or '<root>'} in a weights_only checkpoint")


def to_json_plain(obj: Any) -> Any:
    """Like ``to_plain`` but JSON-ready (tensors -> lists, non-finite floats -> None)."""
    obj = to_plain(obj)

    def conv(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, torch.Tensor):
            return o.tolist()
        if isinstance(o, dict):
            return {k: conv(v) for k, v in o.items()}
        if isinstance(o, list):
            return [conv(v) for v in o]
        return o

    return conv(obj)


def unwrap_state_dict(sd: dict) -> dict:
    """Strip DDP ``module.`` and torch.compile ``_orig_mod.`` prefixes (dreamer4_model.md §7.4)."""
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for pre in ("module.", "_orig_mod."):
                if k.startswith(pre):
                    k, changed = k[len(pre) :], True
        out[k] = v
    return out


def build_checkpoint(
    *,
    step: int,
    model_key: str,
    model_state: dict,
    opt_state: dict,
    scaler_state: dict,
    args: dict,
    rng: dict,
    rng_by_rank: list | None,
    data: dict,
    world_size: int,
    config: dict,
    metrics_tail: list | None = None,
    extra_states: dict | None = None,
) -> dict:
    """Assemble the checkpoint dict (upstream key layout plus ours, see the module docstring)."""
    args = to_plain(args or {})
    ck = {
        "step": int(step),
        "epoch": 0,
        model_key: unwrap_state_dict(model_state),
        "opt": opt_state,
        "scaler": dict(scaler_state or {}),
        "args": args,
    }
    for key, state in (extra_states or {}).items():  # e.g. a separate aux head: its own top-level key
        ck[key] = unwrap_state_dict(state)
    if "scale_pos_embeds" in args:
        ck["scale_pos_embeds"] = bool(args["scale_pos_embeds"])
    ck.update(
        {
            "rng": rng,
            "data": {k: int(v) for k, v in data.items()},
            "world_size": int(world_size),
            "config": to_plain(config),
            "format": FORMAT,
        }
    )
    if rng_by_rank is not None:
        ck["rng_by_rank"] = rng_by_rank
    if metrics_tail is not None:
        ck["metrics_tail"] = to_plain(metrics_tail)
    return ck
