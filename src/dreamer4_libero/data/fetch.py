"""Fetch files over HTTP(S) (or copy them from a local folder), verified by sha256 and recorded.

Used by `make fetch-dmcontrol` (workflow_scripts/fetch_dmcontrol.py) for the released DMControl
checkpoints; nothing here knows about them. For each file:
- the bytes go to a temp file next to the destination (fileio.atomic_path), hashed while they arrive,
  with a progress bar (size, rate, ETA); only a complete, verified file is renamed into place, so a
  failed or interrupted fetch leaves no partial file under the final name;
- the expected sha256 is the known one where the caller gives it, else the one recorded by an earlier
  fetch (`<dest>/<record>`); a file whose digest differs is an error naming the file, expected and got;
  without either, the digest is recorded (trust on first fetch);
- a file already in place whose sha256 matches its expectation is skipped (nothing downloaded);
- the record JSON (per file: url or source path, size, sha256, time, what it was verified against) is
  written next to the files, atomically.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..cli import SetupError
from ..fileio import atomic_path, atomic_temp_re, read_json, sha256_file, write_json

RECORD_FORMAT = "d4l-fetch-record-v1"
CHUNK = 1 << 20  # bytes read per step (1 MiB)
log_info = logging.getLogger(__name__).info


class FetchError(SetupError):
    """A file could not be fetched or does not match its expected sha256."""


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: `name` in the destination folder, `url_path` below the base URL."""

    name: str
    url_path: str
    sha256: str | None = None  # known digest (None: verify against the record, else record it)


def join_url(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + path.lstrip("/")


def _progress(total: int | None, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    # unit_scale bytes: the bar shows size done / total, rate (MB/s) and ETA
    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
    )


def _check_digest(name: str, got: str, expected: str | None, source: str) -> None:
    if expected and got != expected:
        raise FetchError(
            f"{name}: sha256 mismatch (from {source}): expected {expected}, got {got}; the file was not kept"
        )


def download(
    url: str, dest: Path, expected_sha256: str | None = None, progress: bool = True, timeout_s: float = 60.0
) -> dict:
    """Stream `url` into `dest` via a temp file; return {size, sha256}. Errors name the URL."""
    h = hashlib.sha256()
    size = 0
    req = urllib.request.Request(url, headers={"User-Agent": "dreamer4-libero-fetch/1"})
    with atomic_path(dest, suffix=".part") as tmp:
        try:
            resp = urllib.request.urlopen(req, timeout=timeout_s)
        except urllib.error.HTTPError as exc:
            raise FetchError(f"{dest.name}: HTTP error {exc.code} ({exc.reason}) for {url}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise FetchError(
                f"{dest.name}: cannot reach {url}: {reason} (no network on this machine? run the "
                f"fetch where there is internet, or copy the files in and use --from DIR)"
            ) from None
        with resp, open(tmp, "wb") as out:
            total = resp.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            with _progress(total, dest.name, progress) as bar:
                try:
                    while block := resp.read(CHUNK):
                        out.write(block)
                        h.update(block)
                        size += len(block)
                        bar.update(len(block))
                except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
                    raise FetchError(
                        f"{dest.name}: download from {url} broke off after {size} bytes "
                        f"({type(exc).__name__}: {exc}); the file was not kept"
                    ) from None
        if total is not None and size != total:
            raise FetchError(
                f"{dest.name}: download from {url} ended after {size} of {total} bytes; the file was not kept"
            )
        _check_digest(dest.name, h.hexdigest(), expected_sha256, url)
    return {"size": size, "sha256": h.hexdigest()}


def copy_local(src: Path, dest: Path, expected_sha256: str | None = None, progress: bool = True) -> dict:
    """Copy `src` into `dest` via a temp file, verified like a download; return {size, sha256}."""
    if not src.is_file():
        raise FetchError(f"{dest.name}: not found in the local copy: {src}")
    h = hashlib.sha256()
    size = 0
    with atomic_path(dest, suffix=".part") as tmp:
        with open(src, "rb") as inp, open(tmp, "wb") as out, _progress(src.stat().st_size, dest.name, progress) as bar:
            while block := inp.read(CHUNK):
                out.write(block)
                h.update(block)
                size += len(block)
                bar.update(len(block))
        _check_digest(dest.name, h.hexdigest(), expected_sha256, str(src))
    return {"size": size, "sha256": h.hexdigest()}


def read_record(path: Path) -> dict:
    """The record JSON of a destination folder ({} when there is none yet)."""
    if not path.exists():
        return {}
    rec = read_json(path)
    if not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT or not isinstance(rec.get("files"), dict):
        raise FetchError(f"{path}: not a fetch record (format {RECORD_FORMAT}); delete it to fetch afresh")
    return rec


def fetch_files(
    files: list[RemoteFile],
    dest_dir: str | os.PathLike,
    base_url: str | None = None,
    from_dir: str | os.PathLike | None = None,
    record_name: str = "fetch_record.json",
    source_label: str = "",
    progress: bool = True,
    log=log_info,
) -> dict:
    """Fetch every file into `dest_dir` (from `base_url`, or copied from `from_dir`); return the record.

    Exactly one of base_url / from_dir. Files already in place with the expected sha256 are skipped."""
    if (base_url is None) == (from_dir is None):
        raise ValueError("fetch_files: give exactly one of base_url and from_dir")
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    record_path = dest / record_name
    record = read_record(record_path) or {"format": RECORD_FORMAT, "source": source_label, "files": {}}
    for f in files:
        target = dest / f.name
        for stale in dest.iterdir():  # temp files of a fetch that was killed (atomic_path names them)
            if atomic_temp_re(re.escape(f.name)).match(stale.name):
                log(f"{f.name}: removing the temp file of an interrupted fetch: {stale.name}")
                stale.unlink()
        recorded = record["files"].get(f.name, {}).get("sha256")
        expected = f.sha256 or recorded
        against = "known sha256" if f.sha256 else ("sha256 recorded by the first fetch" if recorded else None)
        if target.exists() and expected:
            t0 = time.perf_counter()
            got = sha256_file(target)
            if got == expected:
                log(
                    f"{f.name}: present, sha256 {got} matches the {against} ({time.perf_counter() - t0:.1f} s to "
                    f"check): skipped"
                )
                continue
            log(f"{f.name}: present but its sha256 {got} is not the {against} {expected}: removed, fetching it again")
            target.unlink()
        where = join_url(base_url, f.url_path) if base_url is not None else str(Path(from_dir) / f.name)
        log(f"{f.name}: {'downloading' if base_url is not None else 'copying'} {where}")
        t0 = time.perf_counter()
        got = (
            download(where, target, expected, progress)
            if base_url is not None
            else copy_local(Path(where), target, expected, progress)
        )
        dt = time.perf_counter() - t0
        entry = {
            ("url" if base_url is not None else "copied_from"): where,
            "size": got["size"],
            "sha256": got["sha256"],
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "verified_against": against or "nothing (first fetch: sha256 recorded here)",
        }
        log(
            f"{f.name}: {got['size']} bytes in {dt:.1f} s, sha256 {got['sha256']} "
            f"({'verified against the ' + against if against else 'recorded'})"
        )
        record["files"][f.name] = entry
        write_json(record_path, record)
    return record
