"""Training shards: one folder per task, episode boundaries kept, actions raw and unshifted.

Layout (`<shard_root>/<suite>/<stem>/`):
    frames.npy    uint8  (N, 128, 128, 3)  upright agentview frames of all kept demos, concatenated
    actions.npy   float64 (N, 7)           the raw LIBERO `actions` rows (libero_data.md §3.2)
    episodes.json {"format": SHARD_FORMAT, "task_id": ..., "episodes": [{name, index, start, T}]}
    entry.json    this file's manifest entry (written last, inside the same atomic folder)

`.npy` files are written streaming (one demo at a time, never the whole task in memory) and
have a fixed-size header, so the output is byte-identical for identical input. The folder is
built under a temporary name and renamed into place only when complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..fileio import read_json, sha256_bytes

SHARD_FORMAT = "d4l-shard-v1"
_NPY_HEADER_LEN = 128  # bytes: magic + version + length + padded dict, a multiple of 64


class NpyStreamWriter:
    """Append rows to a `.npy` file whose leading dimension is known only at the end."""

    def __init__(self, path: str | os.PathLike, dtype: np.dtype, row_shape: tuple[int, ...]):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.n = 0
        self._fh = open(self.path, "wb")
        self._fh.write(b"\0" * _NPY_HEADER_LEN)

    def write(self, rows: np.ndarray) -> None:
        if rows.dtype != self.dtype or rows.shape[1:] != self.row_shape:
            raise ValueError(
                f"{self.path}: expected rows {self.dtype}{self.row_shape}, got {rows.dtype}{rows.shape[1:]}"
            )
        self._fh.write(np.ascontiguousarray(rows).data)
        self.n += rows.shape[0]

    def close(self) -> None:
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.n, *self.row_shape),
        }
        text = repr(header).encode("latin1")
        prefix = b"\x93NUMPY\x01\x00"
        pad = _NPY_HEADER_LEN - len(prefix) - 2 - len(text) - 1
        if pad < 0:
            raise ValueError("npy header does not fit")
        body = text + b" " * pad + b"\n"
        self._fh.seek(0)
        self._fh.write(prefix + len(body).to_bytes(2, "little") + body)
        self._fh.close()


def npy_data_ok(path: str | os.PathLike) -> bool:
    """True if a .npy file is as long as its header says (guards reuse after a crash)."""
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return os.path.getsize(path) == arr.offset + arr.nbytes


def npy_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """Shape stored in a .npy header, without reading the data."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = reader(fh)
    return tuple(shape)


def demo_stats(name: str, frames: np.ndarray, actions: np.ndarray) -> dict:
    """A demo's manifest entry: T, first-frame sha256 and raw action sum/min/max (the run identity's data
    fingerprint reads T, the hash and the sums)."""
    a = np.asarray(actions)
    return {
        "name": name,
        "T": int(len(a)),
        "first_frame_sha256": sha256_bytes(np.ascontiguousarray(frames[0]).tobytes()),
        "action_sum": [float(x) for x in a.sum(axis=0)],
        "action_min": [float(x) for x in a.min(axis=0)],
        "action_max": [float(x) for x in a.max(axis=0)],
    }


@dataclass(frozen=True)
class Episode:
    """One demo inside a shard: frames[start:start+T], actions[start:start+T]."""

    episode_id: str  # "<suite>/<stem>/demo_<k>"
    task_id: str
    shard: Path
    start: int
    T: int


class ShardError(ValueError):
    """A shard file is missing, truncated or corrupt; the message names the file."""


def _npy_rows(path: Path, dtype: np.dtype, ndim: int) -> int:
    """Rows of a shard ``.npy`` after checking its header (dtype, dimensions) and its length on disk."""
    why = "rerun the preprocessing stage to rebuild it"
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, found = reader(fh)
            offset = fh.tell()
    except FileNotFoundError:
        raise ShardError(f"{path}: shard file missing ({why})") from None
    except (OSError, ValueError, EOFError, SyntaxError) as e:
        raise ShardError(
            f"{path}: corrupt shard file: unreadable .npy header ({type(e).__name__}: {e}); {why}"
        ) from None
    if found != np.dtype(dtype) or len(shape) != ndim or fortran:
        raise ShardError(
            f"{path}: corrupt shard file: expected a {ndim}-d {np.dtype(dtype)} array, header says "
            f"{found} {tuple(shape)}{' (Fortran order)' if fortran else ''}; {why}"
        )
    size, expected = os.path.getsize(path), offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
    if size != expected:
        raise ShardError(
            f"{path}: corrupt shard file: {size} bytes on disk, its header ({tuple(shape)}) needs "
            f"{expected} (truncated or overwritten); {why}"
        )
    return int(shape[0])


class Shard:
    """Read access to one task's shard folder (memory-mapped, so cheap to open in workers).

    Opening checks what is cheap to check (episodes.json parses; both .npy headers have the expected
    dtype and row shape, the files are as long as their headers say and hold the episodes' rows) and
    raises ``ShardError`` naming the bad file. Bytes overwritten inside the data are not detected.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        meta_path = self.folder / "episodes.json"
        try:
            meta = read_json(meta_path)
            if meta.get("format") != SHARD_FORMAT:
                raise ShardError(f"{meta_path}: expected format {SHARD_FORMAT!r}, found {meta.get('format')!r}")
            self.task_id: str = meta["task_id"]
            self.episodes = [
                Episode(f"{self.task_id}/{e['name']}", self.task_id, self.folder, int(e["start"]), int(e["T"]))
                for e in meta["episodes"]
            ]
        except ShardError:
            raise
        except FileNotFoundError:
            raise ShardError(f"{meta_path}: shard file missing (rerun the preprocessing stage)") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ShardError(
                f"{meta_path}: corrupt shard file ({type(e).__name__}: {e}); rerun the preprocessing "
                "stage to rebuild it"
            ) from None
        n_frames = _npy_rows(self.folder / "frames.npy", np.uint8, 4)  # (N, H, W, 3)
        n_actions = _npy_rows(self.folder / "actions.npy", np.float64, 2)  # (N, action width)
        need = max((e.start + e.T for e in self.episodes), default=0)
        if n_frames != n_actions or n_frames < need:
            raise ShardError(
                f"{self.folder}: corrupt shard: frames.npy has {n_frames} rows, actions.npy {n_actions}, "
                f"episodes.json needs {need}; rerun the preprocessing stage to rebuild it"
            )

    @cached_property
    def frames(self) -> np.ndarray:  # (N,128,128,3) uint8, memory-mapped
        return np.load(self.folder / "frames.npy", mmap_mode="r")

    @cached_property
    def actions(self) -> np.ndarray:  # (N,7) float64
        return np.load(self.folder / "actions.npy", mmap_mode="r")

    def __getstate__(self):  # don't pickle open memmaps into worker processes
        return {"folder": self.folder, "task_id": self.task_id, "episodes": self.episodes}

    def __setstate__(self, state):
        self.__dict__.update(state)


class ShardStore:
    """All shards listed by a preprocessing manifest, addressable by episode id."""

    def __init__(self, manifest_path: str | os.PathLike):
        self.manifest_path = Path(manifest_path)
        manifest = read_json(self.manifest_path)
        root = Path(manifest["shard_root"])
        if not root.is_absolute():
            root = self.manifest_path.parent / root
        self.shard_root = root
        self.shards: dict[str, Shard] = {}
        for f in manifest["files"]:
            if f.get("skipped_file") or not f["demos_kept"]:
                continue
            self.shards[f["task_id"]] = Shard(root / f["task_id"])
        self.episodes: dict[str, Episode] = {e.episode_id: e for s in self.shards.values() for e in s.episodes}

    def episode(self, episode_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(frames (T,128,128,3) uint8 upright, raw actions (T,7) float64) of one episode."""
        try:
            ep = self.episodes[episode_id]
        except KeyError:
            raise ValueError(f"{self.manifest_path}: no episode {episode_id!r} in the shards") from None
        shard = self.shards[ep.task_id]
        sl = slice(ep.start, ep.start + ep.T)
        return shard.frames[sl], shard.actions[sl]


def parse_episode_id(episode_id: str) -> tuple[str, int]:
    """'<suite>/<stem>/demo_<k>' -> ('<suite>/<stem>', k)."""
    task_id, _, demo = episode_id.rpartition("/")
    if not task_id or not demo.startswith("demo_") or not demo[5:].isdigit():
        raise ValueError(f"not an episode id (<suite>/<stem>/demo_<k>): {episode_id!r}")
    return task_id, int(demo[5:])
