"""Staging the training shards to node-local disk (config ``data.stage_to_local``, issue 28).

A trainer started with staging on (``--stage-to-local true``, or ``$D4L_STAGE_TO_LOCAL=1``, which the
workflow sets from the config: rules/common.smk) trains from a copy of the preprocessing output on the
node's local scratch instead of the shared filesystem:

1. Where: ``$SLURM_TMPDIR``, else ``$TMPDIR``; neither set -> a warning, and the shared path is used.
2. Who: local rank 0 of each node copies; the node's other ranks wait for its status file
   (``<scratch>/d4l_stage_<key>.json``, written atomically, or in /dev/shm where the scratch takes no file;
   ``key`` = the manifest's path, the Slurm job and the launching torchrun agent, so two launches on one
   node never share a folder).
3. What: ``manifest.json`` and the shard folder of every task the manifest keeps, into
   ``<scratch>/d4l_stage_<key>/`` (built under a temporary name, renamed when verified).
4. Verify: every copied file's sha256, taken from the bytes read off the shared path, must equal the
   sha256 of the staged file read back; every staged shard must open (``Shard``: headers, lengths)
   and hold the manifest's demos with the manifest's fingerprints (T, first-frame sha256 exactly,
   raw action sums to 1e-6 relative). The manifest records no whole-file checksums of the shards,
   so the byte check is against the source and the content check against the manifest.
5. Any failure (no space, unwritable scratch, a checksum mismatch, a timeout waiting for rank 0) warns
   (``StagingWarning``, text starting ``stage_to_local:``) and trains from the shared path: the bytes
   are the same either way, so the result does not depend on where they were read.
6. Clean up: local rank 0 removes the staged folder and the status file when training ends, also on
   failure (``staged_manifest`` is a context manager). Other ranks' open memory maps survive the removal.

The staged ``manifest.json`` is a byte copy (its ``shard_root`` is relative), so the run identity's data
fingerprint (training/identity.py) is the same as from the shared path.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..fileio import dumps_json, read_json, sha256_file, write_json
from .shards import Shard, ShardError

STAGE_ENV = "D4L_STAGE_TO_LOCAL"  # set by the workflow from config data.stage_to_local
SCRATCH_ENVS = ("SLURM_TMPDIR", "TMPDIR")
WAIT_ENV = "D4L_STAGE_WAIT_S"  # how long a non-zero local rank waits for rank 0's copy
WAIT_S = 3600.0
SHM = Path("/dev/shm")
SPACE_MARGIN = 1.05  # free space needed on the scratch disk, as a multiple of the bytes to copy
_CHUNK = 1 << 22


class StagingWarning(UserWarning):
    """Staging was asked for but the run trains from the shared path."""


class StagingError(RuntimeError):
    """A copy or a verification failed; the message names the file."""


def warn(msg: str) -> None:
    warnings.warn(f"stage_to_local: {msg}", StagingWarning, stacklevel=3)


def env_flag(env=None) -> bool:
    return (env or os.environ).get(STAGE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def add_staging_arg(parser: argparse.ArgumentParser) -> None:
    """The trainers' ``--stage-to-local BOOL`` (default: ``$D4L_STAGE_TO_LOCAL``)."""
    from ..training.engine_config import parse_bool

    parser.add_argument(
        "--stage-to-local",
        type=parse_bool,
        metavar="BOOL",
        default=None,
        help=f"train from a verified copy of the shards on $SLURM_TMPDIR / $TMPDIR (config "
        f"data.stage_to_local; default: ${STAGE_ENV})",
    )


def scratch_dir(env=None) -> tuple[Path | None, str | None]:
    """(the node-local scratch folder, the variable that named it), or (None, None)."""
    env = env if env is not None else os.environ
    for name in SCRATCH_ENVS:
        if env.get(name):
            return Path(env[name]), name
    return None, None


def stage_key(manifest: str | os.PathLike, env=None) -> str:
    """The same for every local rank of one launch, different between launches and runs."""
    env = env if env is not None else os.environ
    launch = (
        f"{os.getppid()}.{env.get('TORCHELASTIC_RESTART_COUNT', '0')}" if "LOCAL_RANK" in env else f"p{os.getpid()}"
    )  # under torchrun: the agent (the ranks' parent); alone: this process
    h = hashlib.sha256(str(Path(manifest).resolve()).encode()).hexdigest()[:10]
    return f"{h}_{env.get('SLURM_JOB_ID') or 'nojob'}_{launch}"


def kept_shards(manifest: dict) -> list[str]:
    """Task ids whose shard folders the trainers read (as data/shards.py ShardStore)."""
    return [f["task_id"] for f in manifest["files"] if not f.get("skipped_file") and f["demos_kept"]]


def _copy_hashed(src: Path, dst: Path) -> tuple[int, str]:
    """Copy ``src`` to ``dst``; returns (bytes, sha256 of the bytes read from ``src``)."""
    h, n = hashlib.sha256(), 0
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while True:
            buf = fi.read(_CHUNK)
            if not buf:
                break
            h.update(buf)
            fo.write(buf)
            n += len(buf)
    return n, h.hexdigest()


def verify_against_manifest(staged_root: Path, manifest: dict) -> None:
    """Each kept shard under ``staged_root/shards`` opens and holds the manifest's demos with their
    fingerprints; raises ``StagingError`` naming the shard."""
    root = (
        staged_root / manifest["shard_root"]
        if not Path(manifest["shard_root"]).is_absolute()
        else staged_root / "shards"
    )
    for f in manifest["files"]:
        if f.get("skipped_file") or not f["demos_kept"]:
            continue
        try:
            shard = Shard(root / f["task_id"])
        except ShardError as e:
            raise StagingError(f"staged shard {f['task_id']}: {e}") from None
        eps = {e.episode_id.rsplit("/", 1)[1]: e for e in shard.episodes}
        for d in f.get("demos") or []:
            e = eps.get(d["name"])
            if e is None or e.T != d["T"]:
                raise StagingError(
                    f"staged shard {shard.folder}: demo {d['name']} has "
                    f"{'no episode' if e is None else f'T={e.T}'}, the manifest says T={d['T']}"
                )
            first = hashlib.sha256(np.ascontiguousarray(shard.frames[e.start]).tobytes()).hexdigest()
            if first != d["first_frame_sha256"]:
                raise StagingError(
                    f"staged shard {shard.folder / 'frames.npy'}: demo {d['name']}'s first frame has "
                    f"sha256 {first[:16]}..., the manifest says {d['first_frame_sha256'][:16]}..."
                )
            s = np.asarray(shard.actions[e.start : e.start + e.T]).sum(axis=0)
            if not np.allclose(s, d["action_sum"], rtol=1e-6, atol=1e-6):
                raise StagingError(
                    f"staged shard {shard.folder / 'actions.npy'}: demo {d['name']}'s action sums "
                    f"differ from the manifest's"
                )


def stage_shards(
    manifest_path: str | os.PathLike,
    dest: str | os.PathLike,
    copy: Callable[[Path, Path], tuple[int, str]] | None = None,
) -> dict:
    """Copy the manifest and its kept shards to ``dest`` (built as ``dest.tmp``, renamed when verified).

    Returns {manifest (the staged manifest's path), bytes, files, seconds, seconds_per_GB}; raises
    ``StagingError`` / ``OSError`` (the partial copy is removed)."""
    t0 = time.perf_counter()
    copy = copy or _copy_hashed
    src_manifest = Path(manifest_path)
    manifest = read_json(src_manifest)
    shard_root = Path(manifest["shard_root"])
    src_root = shard_root if shard_root.is_absolute() else src_manifest.parent / shard_root
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    todo = [
        (src_root / t / p.name, Path("shards") / t / p.name)
        for t in kept_shards(manifest)
        for p in sorted((src_root / t).iterdir())
        if p.is_file()
    ]
    need = sum(s.stat().st_size for s, _ in todo)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        free = shutil.disk_usage(tmp).free
        if free < SPACE_MARGIN * need:
            raise StagingError(f"{tmp}: {free / 1e9:.2f} GB free, the shards need {need / 1e9:.2f} GB")
        if shard_root.is_absolute():  # a relative shard root keeps the manifest a byte copy
            (tmp / "manifest.json").write_text(dumps_json({**manifest, "shard_root": "shards"}))
        else:
            shutil.copyfile(src_manifest, tmp / "manifest.json")
        total = 0
        for src, rel in todo:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            n, digest = copy(src, tmp / rel)
            total += n
            got = sha256_file(tmp / rel)
            if got != digest:
                raise StagingError(
                    f"{tmp / rel}: sha256 {got[:16]}... after the copy, {digest[:16]}... read from {src}"
                )
        verify_against_manifest(tmp, manifest if not shard_root.is_absolute() else {**manifest, "shard_root": "shards"})
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    dt = time.perf_counter() - t0
    return {
        "manifest": str(dest / "manifest.json"),
        "bytes": total,
        "files": len(todo),
        "seconds": dt,
        "seconds_per_GB": dt / (total / 1e9) if total else None,
    }


def _status_paths(scratch: Path, key: str) -> list[Path]:
    """Where local rank 0 leaves its status: the scratch, else (a full or unwritable scratch) /dev/shm."""
    return [scratch / f"d4l_stage_{key}.json", SHM / f"d4l_stage_{key}.json"]


def _wait_for_status(paths: list[Path], timeout_s: float, poll_s: float = 0.5) -> dict | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        for status in paths:
            if status.exists():
                try:
                    return read_json(status)
                except (OSError, ValueError):
                    pass  # written atomically: only a reader race; try again
        time.sleep(poll_s)
    return None


@contextmanager
def staged_manifest(
    manifest: str | os.PathLike, enabled: bool | None = None, *, env=None, log: Callable[[str], None] = print
) -> Iterator[str]:
    """The manifest path to train from: the staged copy's where staging is on and worked, else ``manifest``.

    ``enabled`` None = ``$D4L_STAGE_TO_LOCAL``. Local rank 0 (``$LOCAL_RANK``, 0 without torchrun) copies
    and, on leaving the context, removes the copy; the other ranks wait for it (module docstring)."""
    env = env if env is not None else os.environ
    manifest = str(manifest)
    if enabled is None:
        enabled = env_flag(env)
    if not enabled:
        yield manifest
        return
    scratch, var = scratch_dir(env)
    if scratch is None:
        warn(f"neither ${SCRATCH_ENVS[0]} nor ${SCRATCH_ENVS[1]} is set: training from the shared path {manifest}")
        yield manifest
        return
    local_rank = int(env.get("LOCAL_RANK", "0"))
    key = stage_key(manifest, env)
    dest, statuses = scratch / f"d4l_stage_{key}", _status_paths(scratch, key)
    if local_rank != 0:  # wait for this node's local rank 0
        wait = float(env.get(WAIT_ENV, WAIT_S))
        usable = scratch.is_dir() and os.access(scratch, os.W_OK)
        st = _wait_for_status(statuses, wait) if usable else None
        if st and st.get("ok"):
            yield st["manifest"]
        else:
            why = (st or {}).get("error") or (
                f"no status from local rank 0 in {wait:g} s" if usable else f"{scratch} is not a writable folder"
            )
            warn(f"local rank 0 did not stage the shards ({why}): training from the shared path {manifest}")
            yield manifest
        return
    used = manifest
    try:
        try:
            res = stage_shards(manifest, dest)
            used = res["manifest"]
            log(
                f"stage_to_local: {res['bytes'] / 1e9:.3f} GB ({res['files']} files) staged to {dest} (${var}) in "
                f"{res['seconds']:.1f} s, verified against the source and the manifest; training from there"
            )
            st = {"ok": True, **res}
        except Exception as e:  # any failure: the shared path still has the same bytes
            warn(
                f"copy to {dest} (${var}) failed ({type(e).__name__}: {e}); falling back to the shared path {manifest}"
            )
            st = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        for status in statuses:  # a full or read-only scratch: /dev/shm, so that no rank waits in vain
            try:
                write_json(status, st)
                break
            except OSError:
                continue
        yield used
    finally:
        if used != manifest:
            shutil.rmtree(dest, ignore_errors=True)
        for status in statuses:
            try:
                status.unlink(missing_ok=True)
            except OSError:
                pass
