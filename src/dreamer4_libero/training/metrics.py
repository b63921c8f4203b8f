"""Training metrics: an append-only ``metrics.jsonl`` in the checkpoint dir, exported at the end.

The live log sits in the checkpoint dir (not a declared output, so Snakemake's retry never deletes
it; snakemake_slurm.md §4). One JSON object per line, always with an integer ``step`` (number of
completed updates). On resume from step N, lines with step > N (written by the killed attempt
after its last checkpoint) and unparsable lines (a line cut by a kill) are dropped, so the file
never holds a step twice. At the end the engine copies it to the declared output dir and draws one
loss-curve PNG per metric group (the part of the key before the first ``/``), log-y when every
value of the group is positive. All writes of final files are atomic.

Live view (training/monitor.py): the log's ``sinks`` (TensorBoard, W&B; rank 0 only) receive every record
``append`` writes, in the same call, and are rewound with the file on resume (``truncate_after``), so
their curves hold the same steps as ``metrics.jsonl``; ``images`` sends pictures to the sinks only.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from ..fileio import atomic_path

METRICS_NAME = "metrics.jsonl"
# bookkeeping keys that are not curves
NON_CURVE_KEYS = {"step", "time", "elapsed_s", "epoch", "attempt", "skipped_nonfinite"}


def _clean(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):  # torch / numpy scalars
        v = v.item()
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (str, type(None))):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f if math.isfinite(f) else None


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Records of a metrics.jsonl file; unparsable lines (a line cut by a kill) are skipped."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    with open(p) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                out.append(rec)
    return out


def _dump_lines(records: Iterable[dict]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)


class MetricsLog:
    """Append-only JSONL log (+ its live-view sinks); ``enabled=False`` (ranks > 0) makes every method a no-op."""

    def __init__(
        self, ckpt_dir: str | os.PathLike, enabled: bool = True, name: str = METRICS_NAME, sinks: Iterable = ()
    ):
        self.path = Path(ckpt_dir) / name
        self.enabled = enabled
        self.sinks = list(sinks) if enabled else []
        self._fh = None
        self._tail: list[dict] = []

    def truncate_after(self, step: int) -> int:
        """Keep only well-formed lines with step <= ``step`` (atomic rewrite) and rewind the sinks to the kept
        records; returns lines dropped."""
        if not self.enabled:
            return 0
        self._close_file()
        keep, dropped = [], 0
        if self.path.exists():
            with open(self.path) as fh:
                n_lines = sum(1 for line in fh if line.strip())
            keep = [r for r in read_metrics(self.path) if r["step"] <= step]
            dropped = n_lines - len(keep)
            if dropped:
                with atomic_path(self.path) as tmp:
                    tmp.write_text(_dump_lines(keep))
        self._tail = keep[-100:]
        for sink in self.sinks:
            sink.rewind(step, keep)
        return dropped

    def append(self, record: dict) -> dict:
        """Append one record (values made JSON-safe: scalars -> float/int, non-finite -> null)."""
        rec = {str(k): _clean(v) for k, v in record.items()}
        if not isinstance(rec.get("step"), int):
            raise ValueError("metric records need an integer 'step'")
        if not self.enabled:
            return rec
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a")
        self._fh.write(json.dumps(rec, sort_keys=True) + "\n")
        self._fh.flush()
        self._tail.append(rec)
        del self._tail[:-100]
        for sink in self.sinks:  # the same record, flushed now (the log cadence)
            sink.scalars(rec)
        return rec

    def images(self, step: int, images: dict) -> None:
        """Pictures of update ``step`` ({tag: (H,W,3) uint8 or float in [0,1]}) to the sinks (not the file)."""
        if images:
            for sink in self.sinks:
                sink.images(int(step), images)

    def sync(self) -> None:
        """fsync the file (called at every checkpoint so the log is as durable as the weights); flush the sinks."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        for sink in self.sinks:
            sink.flush()

    def tail(self, n: int = 20) -> list[dict]:
        return list(self._tail[-n:]) if n > 0 else []

    def records(self) -> list[dict]:
        if self._fh is not None:
            self._fh.flush()
        return read_metrics(self.path)

    def _close_file(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def close(self) -> None:
        """Close the file and the sinks (idempotent)."""
        self._close_file()
        for sink in self.sinks:
            sink.close()


def export_metrics(records: list[dict], dest: str | os.PathLike) -> Path:
    """Atomically write records (sorted by step, one per step: the last one wins) to ``dest``."""
    by_step: dict[int, dict] = {}
    for r in records:
        by_step[r["step"]] = r
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        tmp.write_text(_dump_lines(by_step[s] for s in sorted(by_step)))
    return dest


def metric_groups(records: list[dict]) -> dict[str, list[str]]:
    """Numeric curve keys grouped by the part before the first '/' (a key without '/' is its own group)."""
    groups: dict[str, list[str]] = {}
    for r in records:
        for k, v in r.items():
            if k in NON_CURVE_KEYS or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            g = k.split("/", 1)[0]
            if k not in groups.setdefault(g, []):
                groups[g].append(k)
    return {g: sorted(ks) for g, ks in sorted(groups.items())}
