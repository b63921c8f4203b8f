"""LIBERO root -> training shards + manifest (libero_data.md §5, §3.2).

One task file = one shard folder (see `shards.py`). Files are processed in parallel, each
in its own process; a finished shard whose input (size, sha256) and options are unchanged is
skipped on a rerun, so a killed run resumes where it stopped and an identical rerun writes
byte-identical shards and manifest. Input checksums are cached by (size, mtime) in
`<out>/.cache/`, outside every declared output.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..fileio import atomic_dir, dumps_json, read_json, sha256_file, write_json
from .libero import NO_USABLE_DEMOS, READER_VERSION, FileReport, TaskFileReader
from .libero_discovery import LiberoFormatError, TaskFile, discover_task_files
from .shards import SHARD_FORMAT, NpyStreamWriter, demo_stats, npy_data_ok

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "d4l-preprocess-manifest-v1"
SHARD_DIRNAME = "shards"


def _options(on_bad_demo: str, min_demo_len: int, convert_dtype: bool, resize: int | None) -> dict:
    return {
        "on_bad_demo": on_bad_demo,
        "min_demo_len": int(min_demo_len),
        "convert_dtype": bool(convert_dtype),
        "resize": resize,
    }


class ChecksumCache:
    """sha256 of input files, keyed by path and reused while (size, mtime_ns) are unchanged."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict = read_json(path) if path.exists() else {}

    def lookup(self, file: Path) -> tuple[int, str | None, int]:
        st = file.stat()
        hit = self.data.get(str(file.resolve()))
        if hit and hit["size"] == st.st_size and hit["mtime_ns"] == st.st_mtime_ns:
            return st.st_size, hit["sha256"], st.st_mtime_ns
        return st.st_size, None, st.st_mtime_ns

    def store(self, file: Path, size: int, mtime_ns: int, digest: str) -> None:
        self.data[str(file.resolve())] = {"size": size, "mtime_ns": mtime_ns, "sha256": digest}

    def save(self) -> None:
        write_json(self.path, self.data)


def process_file(task: TaskFile, shard_root: Path, options: dict, size: int, sha256: str | None) -> dict:
    """Write one task's shard folder (or reuse a finished one); return its manifest entry."""
    if sha256 is None:
        sha256 = sha256_file(task.path)
    final = shard_root / task.task_id
    entry_path = final / "entry.json"
    if entry_path.exists():
        try:
            old = read_json(entry_path)
            same_input = (old.get("size"), old.get("sha256"), old.get("options"), old.get("reader_version")) == (
                size,
                sha256,
                options,
                READER_VERSION,
            )
            data_ok = old.get("skipped_file") or all(npy_data_ok(final / n) for n in ("frames.npy", "actions.npy"))
            if same_input and data_ok:
                old["_reused"] = True
                return old
        except (OSError, ValueError):
            pass  # unreadable entry: rebuild the shard
    with atomic_dir(final, fsync_files=False) as tmp:  # big data: verified by npy_data_ok on reuse
        frames_w = NpyStreamWriter(tmp / "frames.npy", np.uint8, (128, 128, 3))
        actions_w = NpyStreamWriter(tmp / "actions.npy", np.float64, (7,))
        episodes, demos = [], []
        with TaskFileReader(
            task,
            on_bad_demo=options["on_bad_demo"],
            min_len=options["min_demo_len"],
            convert_dtype=options["convert_dtype"],
            resize=options["resize"],
        ) as reader:
            for rec in reader.demos():
                episodes.append({"name": rec.name, "index": rec.index, "start": frames_w.n, "T": int(rec.T)})
                demos.append(demo_stats(rec.name, rec.frames, rec.actions))
                frames_w.write(rec.frames)
                actions_w.write(np.asarray(rec.actions, dtype=np.float64))
            report = reader.report.to_manifest()
        frames_w.close()
        actions_w.close()
        if report.get("skipped_file"):  # under `skip` a file-level problem discards what was read
            (tmp / "frames.npy").unlink()
            (tmp / "actions.npy").unlink()
            episodes, demos = [], []
            report["demos_kept"], report["frames"] = [], 0
        else:
            (tmp / "episodes.json").write_text(
                dumps_json({"format": SHARD_FORMAT, "task_id": task.task_id, "episodes": episodes})
            )
        entry = {
            **report,
            "size": size,
            "sha256": sha256,
            "options": options,
            "reader_version": READER_VERSION,
            "demos": demos,
        }
        (tmp / "entry.json").write_text(dumps_json(entry))
    entry["_reused"] = False
    return entry


def skip_reasons(files: list[dict], limit: int = 5) -> str:
    """The most common skip reasons of manifest file entries, with counts, as one sentence."""
    reasons = Counter()
    for f in files:
        demos = f.get("demos_skipped") or []
        for d in demos:  # "data/demo_3: too short: ..." -> "too short: ..." (counted over demos and files)
            reasons[re.sub(r"^data/[^:]+: ", "", d["reason"])] += 1
        if f.get("skipped_file") and not (demos and NO_USABLE_DEMOS in f["skipped_file"]):
            reasons[f"{f.get('rel_path') or '?'}: {f['skipped_file']}"] += 1  # a file-level reason of its own
    if not reasons:
        return "No skip was recorded."
    top = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(limit))
    more = f" (and {len(reasons) - limit} other reasons)" if len(reasons) > limit else ""
    return f"Skip reasons: {top}{more}."


def unreadable_entry(task: TaskFile, err: OSError, options: dict) -> dict:
    """The manifest entry of a task file that cannot even be opened (a dangling link, a link loop): under
    `skip` a skipped file (no shard folder); under `error` a LiberoFormatError naming the file."""
    reason = f"expected a readable HDF5 file, found {type(err).__name__}: {err.strerror or err}"
    if options["on_bad_demo"] != "skip":
        raise LiberoFormatError(reason, file=task.rel_path, level="file")
    log.warning("%s: skipping file: %s", task.rel_path, reason)
    report = FileReport(
        rel_path=task.rel_path,
        suite=task.suite,
        stem=task.stem,
        task_id=task.task_id,
        warnings=list(task.notes),
        skipped_file=reason,
    ).to_manifest()  # as a reader's skip report
    return {
        **report,
        "size": None,
        "sha256": None,
        "options": options,
        "reader_version": READER_VERSION,
        "demos": [],
        "_reused": False,
    }


def find_duplicates(tasks: list[TaskFile], known: dict[str, tuple[int, str | None, int]]) -> list[dict]:
    """Task files whose content equals an earlier one's (``tasks`` order): the same file under two names (a
    symlink or hard link) or a copy with the same sha256. Only files that share their size with another are
    hashed here (their sha256 goes into ``known``, so ``process_file`` does not hash them again). Returns one
    record per later file: ``{task_id, rel_path, duplicate_of, sha256, how}`` (paths relative to the root)."""
    by_size: dict[int, list[TaskFile]] = {}
    for t in tasks:
        by_size.setdefault(known[t.task_id][0], []).append(t)
    dups = []
    for group in by_size.values():
        if len(group) < 2:
            continue
        first_of: dict[str, TaskFile] = {}  # sha256 -> the first file with it
        for t in group:
            size, digest, mtime = known[t.task_id]
            if digest is None:
                digest = sha256_file(t.path)
                known[t.task_id] = (size, digest, mtime)
            if digest in first_of:
                f = first_of[digest]
                how = "the same file as" if t.path.samefile(f.path) else "a copy of"  # a symlink / hard link
                dups.append(
                    {
                        "task_id": t.task_id,
                        "rel_path": t.rel_path,
                        "duplicate_of": f.rel_path,
                        "sha256": digest,
                        "how": how,
                    }
                )
            else:
                first_of[digest] = t
    return dups


def _clean_stale(shard_root: Path) -> None:
    """Remove temp folders left by a killed run (names start with '.' and end with '.tmp')."""
    if not shard_root.exists():
        return
    for p in [*shard_root.rglob(".*.tmp"), *shard_root.rglob(".*.old")]:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def preprocess(
    libero_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    workers: int = 1,
    on_bad_demo: str = "error",
    min_demo_len: int = 2,
    convert_dtype: bool = False,
    resize: int | None = None,
    progress: bool = True,
) -> dict:
    """Run the whole stage; return the manifest (also written to `<out_dir>/manifest.json`).

    Raises LiberoFormatError (message names file, demo, key, expected vs found) on bad input
    under `on_bad_demo: error`, and when nothing usable is left under `skip`. Two task files with the same
    content (a symlink, a copy) are an error naming both; under `skip` the first is kept, the others are
    left out with a warning and listed in the manifest's `duplicates_skipped`.
    """
    root = Path(libero_root)
    out = Path(out_dir)
    if not root.is_dir():
        raise LiberoFormatError(f"{root}: LIBERO root folder does not exist (set data.libero_root)")
    tasks, warnings = discover_task_files(root)
    if not tasks:
        raise LiberoFormatError(f"{root}: no LIBERO task files (*.hdf5 / *.h5 inside suite folders) found")
    shard_root = out / SHARD_DIRNAME
    _clean_stale(shard_root)
    options = _options(on_bad_demo, min_demo_len, convert_dtype, resize)
    cache = ChecksumCache(out / ".cache" / "input_sha256.json")
    entries: dict[str, dict] = {}
    known: dict[str, tuple[int, str | None, int]] = {}
    for t in tasks:
        try:
            known[t.task_id] = cache.lookup(t.path)
        except OSError as e:  # a dangling link or a link loop: an unreadable file (error, or a counted skip)
            entries[t.task_id] = unreadable_entry(t, e, options)
    dups = find_duplicates([t for t in tasks if t.task_id in known], known)
    if dups:
        lines = [f"{d['rel_path']} is {d['how']} {d['duplicate_of']} (sha256 {d['sha256'][:16]}...)" for d in dups]
        if on_bad_demo != "skip":
            raise LiberoFormatError(
                f"{root}: {len(dups)} task file(s) with the same content as another: "
                + "; ".join(lines)
                + ". Remove the duplicates, or set data.on_bad_demo: skip "
                "to keep the first of each",
                level="dataset",
            )
        for line in lines:
            msg = f"duplicate task file skipped (on_bad_demo: skip keeps the first): {line}"
            warnings.append(msg)
            log.warning(msg)
        dup_ids = {d["task_id"] for d in dups}
        tasks = [t for t in tasks if t.task_id not in dup_ids]

    todo = [t for t in tasks if t.task_id not in entries]
    bar = tqdm(total=len(todo), desc="preprocess", unit="file", disable=not progress, dynamic_ncols=True)
    try:
        if workers <= 1:
            for t in todo:
                entries[t.task_id] = process_file(t, shard_root, options, known[t.task_id][0], known[t.task_id][1])
                bar.set_postfix(frames=sum(e["frames"] for e in entries.values()))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork")) as pool:
                futs = {
                    pool.submit(process_file, t, shard_root, options, known[t.task_id][0], known[t.task_id][1]): t
                    for t in todo
                }
                for fut in as_completed(futs):
                    entries[futs[fut].task_id] = fut.result()
                    bar.set_postfix(frames=sum(e["frames"] for e in entries.values()))
                    bar.update()
    finally:
        bar.close()
        for t in todo:  # remember checksums even when a later file failed
            if t.task_id in entries:
                size, _, mtime = known[t.task_id]
                cache.store(t.path, size, mtime, entries[t.task_id]["sha256"])
        cache.save()

    files = []
    for t in tasks:
        e = dict(entries[t.task_id])
        e.pop("_reused", None)
        files.append(e)
    kept = sum(len(f["demos_kept"]) for f in files)
    if kept == 0:
        raise LiberoFormatError(
            f"{root}: no usable demo left after validation "
            f"({sum(len(f['demos_skipped']) for f in files)} demos and "
            f"{sum(bool(f.get('skipped_file')) for f in files)} files skipped). " + skip_reasons(files)
        )
    manifest = {
        "format": MANIFEST_FORMAT,
        "reader_version": READER_VERSION,
        "libero_root": str(libero_root),
        "shard_root": SHARD_DIRNAME,
        "options": options,
        "discovery_warnings": warnings,
        "files": files,
        "totals": {
            "files": len(files),
            "files_skipped": sum(bool(f.get("skipped_file")) for f in files),
            "tasks": sum(bool(f["demos_kept"]) for f in files),
            "demos_kept": kept,
            "demos_skipped": sum(len(f["demos_skipped"]) for f in files),
            "frames": sum(f["frames"] for f in files),
            "action_range_violations": sum(f.get("action_range_violations", 0) for f in files),
        },
    }
    if dups:  # only then, so that a manifest without duplicates stays as it was
        manifest["duplicates_skipped"] = [
            {k: d[k] for k in ("task_id", "rel_path", "duplicate_of", "sha256")} for d in dups
        ]
        manifest["totals"]["duplicates_skipped"] = len(dups)
    write_json(out / "manifest.json", manifest)
    reused = sum(bool(entries[t.task_id].get("_reused")) for t in tasks)
    log.info(
        "preprocess: %d files (%d reused), %d demos kept, %d frames",
        len(files),
        reused,
        kept,
        manifest["totals"]["frames"],
    )
    return manifest
