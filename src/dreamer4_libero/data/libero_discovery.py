"""Finding the LIBERO task files under a dataset root (libero_data.md §1, §5 rows 11 and 16).

:func:`discover_task_files` finds one HDF5 file per task under a root with suite folders and returns
them sorted by task id ``<suite>/<stem>``, with a warning for each unusual name it accepts (§5 row 16,
file names: ``.h5``, no ``_demo``, no suite folder) and an error for the same task twice (§5 row 11,
duplicate task: two suite folders, or copies such as ``X_demo (1).hdf5``). Reading one file is
``libero.py``. :class:`LiberoFormatError` is the error of both.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py

UNKNOWN_SUITE = "unknown"
HDF5_EXTENSIONS = (".hdf5", ".h5")

# one logger name for the whole LIBERO reader (discovery here, per-file reading in libero.py)
log = logging.getLogger("dreamer4_libero.data.libero")

_COPY_MARKER_RE = re.compile(r"(?: \(\d+\)| copy(?: \d+)?|-\d+)$")


class LiberoFormatError(ValueError):
    """A LIBERO file violates the format. ``str(err)`` names file, demo, key, expected/found.

    Attributes: ``file`` (path relative to the root, or None), ``demo`` (demo group name as
    stored, or None), ``key`` (HDF5 path such as ``data/demo_3/actions``, or None),
    ``reason`` (the message without the file prefix), ``level`` (``"file"``, ``"demo"`` or
    ``"dataset"`` for discovery problems).
    """

    def __init__(
        self,
        reason: str,
        *,
        file: str | None = None,
        demo: str | None = None,
        key: str | None = None,
        level: str = "file",
    ) -> None:
        self.reason = reason
        self.file = file
        self.demo = demo
        self.key = key
        self.level = level
        super().__init__(f"{file}: {reason}" if file else reason)


@dataclass(frozen=True)
class TaskFile:
    """One task file found on disk. ``notes`` = discovery warnings about its name."""

    path: Path
    rel_path: str
    suite: str
    stem: str
    task_id: str
    notes: tuple[str, ...] = field(default=(), compare=False)


def normalise_file_name(name: str) -> tuple[str, list[str]]:
    """Task stem of an HDF5 file name, and notes about what had to be normalised.

    Strip the extension, any trailing copy marker (`` (n)``, `` copy``, ``-n``), then
    ``_demo`` (libero_data.md §5 rows 11, duplicate task, and 16, file names).
    """
    notes: list[str] = []
    base = name
    lower = base.lower()
    ext = next((e for e in HDF5_EXTENSIONS if lower.endswith(e)), None)
    if ext is None:
        raise ValueError(f"not an HDF5 file name: {name!r}")
    base = base[: -len(ext)]
    if name[-len(ext) :] != ".hdf5":
        notes.append(f"extension {name[-len(ext) :]!r} instead of '.hdf5' (accepted)")
    stripped = base
    while True:
        m = _COPY_MARKER_RE.search(stripped)
        if not m or m.start() == 0:
            break
        stripped = stripped[: m.start()]
    if stripped != base:
        notes.append(f"copy marker {base[len(stripped) :]!r} stripped from the file name")
    if stripped.endswith("_demo") and len(stripped) > len("_demo"):
        stem = stripped[: -len("_demo")]
    else:
        stem = stripped
        notes.append("file name lacks the '_demo' suffix (accepted)")
    return stem, notes


def _is_dir_loop(here: Path, d: str, rel_dir: Path, warnings: list[str]) -> bool:
    """True (and a warning) if folder `here/d` is a symbolic link back to itself or to a folder above it."""
    sub = here / d
    if not sub.is_symlink():
        return False
    target, cur = os.path.realpath(sub), os.path.realpath(here)
    if cur == target or cur.startswith(target.rstrip(os.sep) + os.sep):
        msg = (
            f"{(rel_dir / d).as_posix()}: symbolic link loop (points to {os.readlink(sub)!r}, a folder above it): "
            "not followed"
        )
        warnings.append(msg)
        log.warning(msg)
        return True
    return False


def _broken_link(path: Path) -> str | None:
    """A description if `path` is a symbolic link that cannot be followed (dangling or a loop), else None."""
    if not path.is_symlink():
        return None
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"symbolic link loop ({os.readlink(path)!r})"
        return f"dangling symbolic link to {os.readlink(path)!r} ({e.strerror})"
    return None


def discover_task_files(root: str | os.PathLike) -> tuple[list[TaskFile], list[str]]:
    """Find one HDF5 file per task under ``root``; return (files sorted by task id, warnings).

    Suite = the folder the file sits in (``libero_90/`` … or any other name); files directly
    under ``root`` get suite ``unknown`` (warning). Non-HDF5 files, hidden files and folders
    (names starting with ``.``, e.g. temp files) are ignored. ``.h5`` and names without
    ``_demo`` are accepted with a warning. The same normalised stem twice anywhere raises
    :class:`LiberoFormatError` listing both paths, whatever the policy (never pick one).
    """
    root = Path(root)
    if not root.is_dir():
        raise LiberoFormatError(
            f"dataset root: expected a folder, found {'a file' if root.exists() else 'nothing'} at {root}",
            level="dataset",
        )
    warnings: list[str] = []
    found: list[TaskFile] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        rel_dir = here.relative_to(root)
        dirnames[:] = [
            d for d in sorted(dirnames) if not d.startswith(".") and not _is_dir_loop(here, d, rel_dir, warnings)
        ]
        for fname in sorted(filenames):
            if fname.startswith("."):
                continue
            if not fname.lower().endswith(HDF5_EXTENSIONS):
                log.debug("ignoring non-HDF5 file %s", rel_dir / fname)
                continue
            path = here / fname
            if not path.is_file():
                link = _broken_link(path)
                if link is None:  # a FIFO, socket or device with an HDF5 name: never opened
                    msg = f"{(rel_dir / fname).as_posix()}: not a regular file: ignored"
                    warnings.append(msg)
                    log.warning(msg)
                    continue
                # a dangling link or a link loop: kept, so that reading it fails (error, or a counted skip)
                msg = f"{(rel_dir / fname).as_posix()}: unreadable: {link}"
                warnings.append(msg)
                log.warning(msg)
            rel_path = (rel_dir / fname).as_posix()
            stem, notes = normalise_file_name(fname)
            depth = len(rel_dir.parts)
            if depth == 0:
                suite = UNKNOWN_SUITE
                notes.append(f"file is not inside a suite folder: suite {UNKNOWN_SUITE!r} assumed")
            else:
                suite = rel_dir.parts[-1]
                if depth > 1:
                    notes.append(f"file is nested {depth} folders deep: suite {suite!r} taken from its parent folder")
            notes_t = tuple(notes)
            for n in notes_t:
                msg = f"{rel_path}: {n}"
                warnings.append(msg)
                log.warning(msg)
            found.append(
                TaskFile(path=path, rel_path=rel_path, suite=suite, stem=stem, task_id=f"{suite}/{stem}", notes=notes_t)
            )
    by_stem: dict[str, list[TaskFile]] = {}
    for tf in found:
        by_stem.setdefault(tf.stem, []).append(tf)
    dups = {s: tfs for s, tfs in by_stem.items() if len(tfs) > 1}
    if dups:
        lines = [
            f"task stem {s!r}: expected one file, found {len(tfs)}: " + ", ".join(sorted(t.rel_path for t in tfs))
            for s, tfs in sorted(dups.items())
        ]
        raise LiberoFormatError("duplicate task files: " + "; ".join(lines), level="dataset")
    found.sort(key=lambda t: t.task_id)
    if not found:
        msg = f"no HDF5 task files under {root}"
        warnings.append(msg)
        log.warning(msg)
    return found, warnings


def open_h5(path: Path) -> "h5py.File":
    """Open read-only without HDF5 file locking (locking fails on some read-only/NFS mounts
    and would be misreported as a corrupt file)."""
    try:
        return h5py.File(path, "r", locking=False)
    except (TypeError, ValueError):  # pragma: no cover - h5py/HDF5 without the locking option
        return h5py.File(path, "r")
