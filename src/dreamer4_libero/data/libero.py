"""Reader for one LIBERO demonstration file (``<suite>/<task>_demo.hdf5``).

Implements ``/work/shared/spec/libero_data.md`` §2–§5 and the reader API of ``docs/data_contracts.md``.
Finding the files under a root is ``libero_discovery.py`` (:func:`discover_task_files`,
:class:`TaskFile`, :class:`LiberoFormatError`); interpreting stored values (demo names, attributes,
image resizing) is ``libero_values.py``. Trap names below are the rows of the trap table,
libero_data.md §5.

* :class:`TaskFileReader` opens one task file, checks it against every row of the trap table
  under the policy ``on_bad_demo`` (``"error"`` or ``"skip"``), and yields
  :class:`DemoRecord` s in numeric demo order with **upright** ``(T, 128, 128, 3)`` uint8
  agentview frames and the **raw, unshifted** ``(T, 7)`` float64 actions
  (the +1 action shift of §3.2 belongs to the training/probe accessor, not here).
* :class:`FileReport` records what was decided for the file (convention, instruction,
  demos kept / skipped with reasons, warnings, action-range violations, file skip reason);
  ``FileReport.to_manifest()`` is the JSON-able per-file manifest entry. Per-kept-demo hashes
  and action statistics are computed by the caller, not by the reader.

Policies (``on_bad_demo``):

* ``"error"`` (default): any problem of the trap table marked *error* raises
  :class:`LiberoFormatError`, whose message names the file (path relative to the root),
  the demo, the key, and expected vs found, e.g.
  ``libero_10/X_demo.hdf5: data/demo_3/actions: expected shape (T, 7) with T=57, found (57, 6)``.
* ``"skip"``: file-level problems (row 1, unreadable file; row 2, no ``/data`` or no demo groups;
  row 9a, actions of the wrong width or dtype; row 10, an unknown image convention) set
  ``report.skipped_file`` to the reason and yield no demo; demo-level problems (row 3, missing images
  or actions; row 4, length mismatch; row 6, images not uint8; row 7, wrong image shape; row 8,
  NaN/Inf actions; row 12, bad or colliding demo names) append ``{"demo": name, "reason": ...}`` to
  ``report.demos_skipped`` and go on.
* Under both: too-short demos (``T < max(2, min_len)``, row 5) are skipped, listed in
  ``demos_skipped`` and warned about; out-of-range actions (row 9b) are warned about and counted,
  never skipped; metadata problems (row 13, attributes as bytes or missing/malformed JSON; row 14,
  ``num_demos``/``total`` disagreeing with the contents) and unusual file names (row 16) are
  warnings; extra keys are ignored (row 15). A file left with no usable demo raises under
  ``"error"`` and is marked ``skipped_file`` under ``"skip"``.

Structural checks (keys, shapes, dtypes, lengths, names) of every demo run when the reader is
entered, before any demo is yielded, so a file-level problem found in demo 40 never lets
demos 0–39 through. Checks that need the data (NaN/Inf, value ranges of converted images)
run while iterating.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from .libero_discovery import LiberoFormatError, TaskFile, open_h5
from .libero_values import (
    attr_as_int,
    canonical_demo_name,
    clean_text,
    decode_attr,
    is_clean_text,
    missing_ids,
    resize_hwc,
)

try:  # h5py is a hard dependency of the reader, imported lazily for discovery-only users
    import h5py
except ImportError:  # pragma: no cover
    h5py = None  # type: ignore[assignment]

__all__ = [
    "READER_VERSION",
    "IMAGE_SIZE",
    "ACTION_DIM",
    "NO_USABLE_DEMOS",
    "DemoRecord",
    "FileReport",
    "TaskFileReader",
]

READER_VERSION = "1"
IMAGE_SIZE = 128
ACTION_DIM = 7
ACTION_RANGE_TOL = 1e-6

# one logger name for the whole LIBERO reader (discovery in libero_discovery.py, per-file reading here)
log = logging.getLogger("dreamer4_libero.data.libero")

# Anything h5py / HDF5 may raise for an unreadable object (§5 row 1, unreadable file). TypeError is
# included because h5py raises it for some corrupt datatype messages.
_H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError)

#: the start of a file's skip reason when every one of its demos was skipped (preprocess counts those demos instead)
NO_USABLE_DEMOS = "expected at least one usable demo"

# the /data attributes the reader uses (others are extras: never read, §5 row 15)
_DATA_ATTRS = ("macros_image_convention", "problem_info", "env_args", "bddl_file_content", "num_demos", "total")
_LANGUAGE_RE = re.compile(r"\(:language\s+([^()]*?)\s*\)", re.IGNORECASE | re.DOTALL)


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------


@dataclass
class DemoRecord:
    """One kept demo: canonical name ``demo_<k>``, upright frames, raw unshifted actions."""

    name: str
    index: int
    T: int
    frames: np.ndarray  # (T, 128, 128, 3) uint8, upright, C-contiguous
    actions: np.ndarray  # (T, 7) float64, raw (actions[k] produced frames[k])
    source_name: str = ""  # group name as stored in the file (e.g. "demo_01")
    action_range_violations: int = 0  # values with |a| > 1+1e-6 or gripper not ±1 (§5 row 9b: warned, kept)


@dataclass
class FileReport:
    """Per-file decisions; ``to_manifest()`` gives the JSON-able manifest entry."""

    rel_path: str
    suite: str
    stem: str
    task_id: str
    image_convention: str | None = None  # "opengl" | "opencv" (None if never determined)
    convention_assumed: bool = False
    instruction: str | None = None
    instruction_source: str = "none"  # "problem_info" | "bddl_file_content" | "none"
    demos_kept: list[str] = field(default_factory=list)
    demos_skipped: list[dict[str, str]] = field(default_factory=list)
    frames: int = 0
    warnings: list[str] = field(default_factory=list)
    action_range_violations: int = 0
    skipped_file: str | None = None
    reader_version: str = READER_VERSION

    def to_manifest(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


# --------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------


@dataclass
class _DemoPlan:
    source_name: str  # as stored
    name: str  # canonical
    index: int
    T: int
    image_resize: bool
    image_dtype: np.dtype


class TaskFileReader:
    """Read one LIBERO task file; use as a context manager and iterate :meth:`demos`.

    ``on_bad_demo``: ``"error"`` or ``"skip"`` (see the module docstring);
    ``min_len``: demos with ``T < max(2, min_len)`` are skipped and counted (both policies);
    ``convert_dtype``: accept non-uint8 agentview images (float in [0, 1] → ``round(x*255)``;
    integers in 0..255 cast); ``resize``: ``None`` or ``128`` — resize HWC RGB images of
    another resolution to 128×128 (CHW, RGBA and grayscale stay errors).

    Under ``"skip"``, if HDF5 fails while *reading data* in the middle of the file (corrupt
    chunk, "message not aligned"), iteration stops, ``report.skipped_file`` is set (and
    ``demos_kept``/``frames`` reset), and **the caller must discard every demo this reader
    already yielded for the file**. Always check ``report.skipped_file`` after iterating.
    Under ``"error"`` the same failure raises :class:`LiberoFormatError`.
    """

    def __init__(
        self,
        task: TaskFile,
        on_bad_demo: str = "error",
        min_len: int = 2,
        convert_dtype: bool = False,
        resize: int | None = None,
    ) -> None:
        if on_bad_demo not in ("error", "skip"):
            raise ValueError(f"on_bad_demo: expected 'error' or 'skip', found {on_bad_demo!r}")
        if resize not in (None, IMAGE_SIZE):
            raise ValueError(f"resize: expected None or {IMAGE_SIZE}, found {resize!r}")
        if h5py is None:  # pragma: no cover
            raise ImportError("h5py is required to read LIBERO files")
        self.task = task
        self.on_bad_demo = on_bad_demo
        self.min_len = max(2, int(min_len))
        self.convert_dtype = bool(convert_dtype)
        self.resize = resize
        self.report = FileReport(rel_path=task.rel_path, suite=task.suite, stem=task.stem, task_id=task.task_id)
        self.report.warnings.extend(task.notes)
        self._file: Any = None
        self._plans: list[_DemoPlan] = []
        self._collided_T = 0
        self._entered = False
        self._iterated = False

    # ---- helpers -----------------------------------------------------------------------

    @property
    def skip(self) -> bool:
        return self.on_bad_demo == "skip"

    def _warn(self, msg: str) -> None:
        self.report.warnings.append(msg)
        log.warning("%s: %s", self.task.rel_path, msg)

    def _err(self, key: str, detail: str, level: str, demo: str | None = None) -> LiberoFormatError:
        reason = f"{key}: {detail}" if key else detail
        return LiberoFormatError(reason, file=self.task.rel_path, demo=demo, key=key or None, level=level)

    def _h5(self, key: str, what: str, fn, demo: str | None = None):
        """Run an h5py access; any h5py exception is an unreadable file (§5 row 1: file-level)."""
        try:
            return fn()
        except LiberoFormatError:
            raise
        except _H5_ERRORS as e:
            raise self._err(key, f"expected a readable HDF5 {what}, found {type(e).__name__}: {e}", "file", demo) from e

    def _skip_file(self, err: LiberoFormatError) -> None:
        self.report.skipped_file = err.reason
        self.report.demos_kept = []
        self.report.frames = 0
        self.report.action_range_violations = 0
        self._plans = []
        log.warning("%s: skipping file: %s", self.task.rel_path, err.reason)

    def _skip_demo(self, name: str, err: LiberoFormatError) -> None:
        self.report.demos_skipped.append({"demo": name, "reason": err.reason})
        log.warning("%s: skipping %s: %s", self.task.rel_path, name, err.reason)

    # ---- context manager ---------------------------------------------------------------

    def __enter__(self) -> "TaskFileReader":
        if self._entered:
            raise RuntimeError("TaskFileReader is not re-entrant")
        self._entered = True
        try:
            self._open_and_scan()
        except LiberoFormatError as e:
            if self.skip and e.level == "file":
                self._skip_file(e)
            else:
                self.close()
                raise
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except _H5_ERRORS:  # pragma: no cover - closing a broken file
                pass
            self._file = None

    # ---- file-level scan -----------------------------------------------------------------

    def _open_and_scan(self) -> None:
        path = self.task.path
        self._file = self._h5("", "file", lambda: open_h5(path))
        f = self._file
        has_data = self._h5("data", "group", lambda: "data" in f)
        if not has_data:
            keys = self._h5("/", "group", lambda: sorted(f.keys()))
            raise self._err("data", f"expected a '/data' group, found top-level keys {keys}", "file")
        data = self._h5("data", "group", lambda: f["data"])
        if not isinstance(data, h5py.Group):
            raise self._err("data", f"expected a group, found {type(data).__name__}", "file")

        def read_attrs() -> dict[str, Any]:
            present = set(data.attrs.keys())
            return {k: decode_attr(data.attrs[k]) for k in _DATA_ATTRS if k in present}

        attrs = self._h5("data", "attribute set", read_attrs)
        for key in sorted(k for k, v in attrs.items() if isinstance(v, str) and not is_clean_text(v)):
            attrs[key] = clean_text(attrs[key])
            self._warn(f"data attr {key}: not valid UTF-8; the undecodable bytes are replaced by U+FFFD")
        self._read_convention(attrs)
        self._read_metadata(attrs)
        members = self._h5("data", "group", lambda: list(data.keys()))
        demos = self._resolve_demo_names(members)
        n_named = sum(canonical_demo_name(m) is not None for m in members)
        if not demos:
            raise self._err("data", f"expected demo groups 'demo_<k>', found none (members: {sorted(members)})", "file")
        total = self._collided_T
        seen: dict[tuple, str] = {}  # demo identity (object address, content digest) -> first demo with it
        for source_name, name, k in demos:
            plan = self._scan_demo(data, source_name, name, k)
            if plan is None:
                continue
            total += plan[1]
            if plan[0] is not None and not self._is_duplicate_demo(data, source_name, name, seen):
                self._plans.append(plan[0])
        self._check_counts(attrs, n_named, total)
        if not self._plans:
            self._no_usable_demos()

    def _is_duplicate_demo(self, data: Any, source: str, name: str, seen: dict[tuple, str]) -> bool:
        """A demo that is the same HDF5 object as an earlier one (a soft or hard link) or has the same actions
        array (every value; teleoperated demos never repeat one): an error naming both, or under `skip` a
        skipped demo (issue 29). Images are not read here: a corrupt image chunk surfaces when it is read."""

        def identity() -> list[tuple]:
            g = data[source]
            a = np.ascontiguousarray(g["actions"][()])
            digest = hashlib.sha256(str((a.dtype.str, a.shape)).encode() + a.tobytes()).hexdigest()
            return [("object", h5py.h5o.get_info(g.id).addr), ("content", digest)]

        keys = self._h5(f"data/{source}", "demo group", identity, name)
        first = next((seen[k] for k in keys if k in seen), None)
        if first is None:
            for k in keys:
                seen[k] = name
            return False
        how = "the same HDF5 object (a link)" if keys[0] in seen else "the same actions"
        err = self._err(f"data/{source}", f"expected a distinct demo, found {how} as {first}", "demo", name)
        if not self.skip:
            raise err
        self._skip_demo(name, err)
        return True

    def _no_usable_demos(self) -> None:
        skipped = ", ".join(f"{d['demo']} ({d['reason']})" for d in self.report.demos_skipped) or "none"
        err = self._err("data", f"{NO_USABLE_DEMOS}, found none; skipped: {skipped}", "file")
        if self.skip:
            self._skip_file(err)
        else:
            raise err

    def _read_convention(self, attrs: dict[str, Any]) -> None:
        raw = attrs.get("macros_image_convention")
        if raw is None:
            self.report.image_convention = "opengl"
            self.report.convention_assumed = True
            self._warn("data attr macros_image_convention missing: assuming 'opengl' (images stored upside down)")
            return
        value = str(raw).strip().lower() if isinstance(raw, str) else None
        if value not in ("opengl", "opencv"):
            raise self._err(
                "data attr macros_image_convention", f"expected 'opengl' or 'opencv', found {raw!r}", "file"
            )
        self.report.image_convention = value

    def _read_metadata(self, attrs: dict[str, Any]) -> None:
        instruction: str | None = None
        pi = attrs.get("problem_info")
        if pi is None:
            self._warn("data attr problem_info missing")
        else:
            try:
                parsed = json.loads(pi) if isinstance(pi, str) else None
            except json.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, dict):
                self._warn(f"data attr problem_info: expected a JSON object, found {str(pi)[:60]!r}")
            else:
                li = decode_attr(parsed.get("language_instruction"))
                if isinstance(li, str) and li.strip():
                    instruction = li.strip()
                    self.report.instruction_source = "problem_info"
                else:
                    self._warn("data attr problem_info: no usable 'language_instruction'")
        if instruction is None:
            bddl = attrs.get("bddl_file_content")
            if isinstance(bddl, str):
                m = _LANGUAGE_RE.search(bddl)
                if m and m.group(1).strip():
                    instruction = " ".join(m.group(1).split()).lower()
                    self.report.instruction_source = "bddl_file_content"
            if instruction is None:
                self.report.instruction_source = "none"
                self._warn("no language instruction found (problem_info and bddl_file_content unusable)")
            else:
                self._warn("language instruction taken from bddl_file_content")
        self.report.instruction = instruction
        ea = attrs.get("env_args")
        if ea is None:
            self._warn("data attr env_args missing")
        else:
            try:
                parsed = json.loads(ea) if isinstance(ea, str) else None
            except json.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, dict):
                self._warn(f"data attr env_args: expected a JSON object, found {str(ea)[:60]!r}")

    def _check_counts(self, attrs: dict[str, Any], n_demos: int, total: int) -> None:
        for key, actual in (("num_demos", n_demos), ("total", total)):
            raw = attrs.get(key)
            if raw is None:
                continue  # not required
            v = attr_as_int(raw)
            if v != actual:
                shown = v if v is not None else repr(raw)
                self._warn(f"data attr {key}: says {shown}, contents have {actual} (contents win)")

    def _resolve_demo_names(self, members: list[str]) -> list[tuple[str, str, int]]:
        """Demo names (§5 row 12): valid names sorted numerically; bad names / collisions per policy; gaps warn."""
        by_index: dict[int, list[str]] = {}
        for m in members:
            parsed = canonical_demo_name(m)
            if parsed is None:
                if m.lower().startswith("demo"):
                    err = self._err(
                        f"data/{m}", r"expected a demo group name matching '^demo_\d+$', found " + repr(m), "demo", m
                    )
                    if not self.skip:
                        raise err
                    self._skip_demo(m, err)
                continue  # anything else under /data (e.g. 'mask') is an extra: ignored
            by_index.setdefault(parsed[1], []).append(m)
        out: list[tuple[str, str, int]] = []
        for k in sorted(by_index):
            names = sorted(by_index[k])
            if len(names) > 1:
                for n in names:
                    others = [o for o in names if o != n]
                    err = self._err(
                        f"data/{n}",
                        f"expected a unique demo id, found id {k} also used by "
                        f"{', '.join('data/' + o for o in others)}",
                        "demo",
                        n,
                    )
                    if not self.skip:
                        raise err
                    self._skip_demo(n, err)
                    self._collided_T += self._peek_T(n)
                continue
            out.append((names[0], f"demo_{k}", k))
        ids = sorted(by_index)
        if ids:
            n_missing, shown = missing_ids(ids, 20)
            if n_missing:
                more = f" … ({n_missing} in all)" if n_missing > len(shown) else ""
                self._warn(f"data: demo ids not contiguous from 0: missing {shown}{more}")
        return out

    def _peek_T(self, source: str) -> int:
        """Best-effort T of a demo that is not scanned (for the `total` recount only)."""
        try:
            return int(self._file[f"data/{source}/obs/agentview_rgb"].shape[0])
        except Exception:  # noqa: BLE001 - only feeds a warning
            return 0

    # ---- per-demo structural scan ------------------------------------------------------------

    def _scan_demo(self, data: Any, source: str, name: str, k: int) -> tuple[_DemoPlan | None, int] | None:
        """Return (plan or None if skipped, T for the `total` recount); raise per policy."""
        try:
            return self._scan_demo_inner(data, source, name, k)
        except LiberoFormatError as e:
            if e.level == "demo" and self.skip:
                self._skip_demo(name, e)
                # a skipped demo's frames are still in the file's `total` (issue 29): its T, else the images' length
                return None, getattr(e, "_T", None) or self._peek_T(source)
            raise

    def _scan_demo_inner(self, data: Any, source: str, name: str, k: int) -> tuple[_DemoPlan | None, int]:
        gk = f"data/{source}"
        g = self._h5(gk, "group", lambda: data[source], source)
        if not isinstance(g, h5py.Group):
            raise self._err(gk, f"expected a group, found {type(g).__name__}", "demo", source)
        # §5 row 3, missing images or actions: required keys
        has_obs = self._h5(gk, "group", lambda: "obs" in g, source)
        obs = None
        if has_obs:
            obs = self._h5(f"{gk}/obs", "group", lambda: g["obs"], source)
            if not isinstance(obs, h5py.Group):
                raise self._err(f"{gk}/obs", f"expected a group, found {type(obs).__name__}", "demo", source)
        img_key = f"{gk}/obs/agentview_rgb"
        if obs is None or not self._h5(f"{gk}/obs", "group", lambda: "agentview_rgb" in obs, source):
            raise self._err(
                img_key, "expected a dataset (T, 128, 128, 3) uint8, found nothing (missing)", "demo", source
            )
        act_key = f"{gk}/actions"
        if not self._h5(gk, "group", lambda: "actions" in g, source):
            raise self._err(act_key, "expected a dataset (T, 7) float64, found nothing (missing)", "demo", source)
        img = self._h5(img_key, "dataset", lambda: obs["agentview_rgb"], source)
        act = self._h5(act_key, "dataset", lambda: g["actions"], source)
        for key, ds in ((img_key, img), (act_key, act)):
            if not isinstance(ds, h5py.Dataset):
                raise self._err(key, f"expected a dataset, found {type(ds).__name__}", "demo", source)
        img_shape = tuple(self._h5(img_key, "dataset", lambda: img.shape, source) or ())
        img_dtype = self._h5(img_key, "dataset", lambda: img.dtype, source)
        act_shape = tuple(self._h5(act_key, "dataset", lambda: act.shape, source) or ())
        act_dtype = self._h5(act_key, "dataset", lambda: act.dtype, source)

        # T: num_samples, else the images' first dim (§5 row 4, length mismatch)
        ns_raw = self._h5(gk, "attribute set", lambda: g.attrs.get("num_samples"), source)
        img_T = img_shape[0] if len(img_shape) >= 1 else None
        if ns_raw is None:
            if img_T is None:
                raise self._err(img_key, f"expected shape (T, 128, 128, 3), found {img_shape}", "demo", source)
            T = int(img_T)
            self._warn(f"{gk}: attr num_samples missing: using T={T} from obs/agentview_rgb")
        else:
            T_attr = attr_as_int(ns_raw)
            if T_attr is None or T_attr < 0:
                raise self._err(
                    f"{gk} attr num_samples",
                    f"expected a non-negative integer, found {decode_attr(ns_raw)!r}",
                    "demo",
                    source,
                )
            T = T_attr
        content_T = int(img_T) if img_T is not None else T

        def fail(key: str, detail: str, level: str = "demo") -> LiberoFormatError:
            e = self._err(key, detail, level, source)
            e._T = content_T  # type: ignore[attr-defined]
            return e

        # §5 row 9a (file-level): actions width / dtype
        if len(act_shape) != 2 or act_shape[1] != ACTION_DIM:
            raise fail(act_key, f"expected shape (T, {ACTION_DIM}) with T={T}, found {act_shape}", "file")
        if act_dtype.kind != "f":
            raise fail(act_key, f"expected a float dtype (float64), found {act_dtype}", "file")

        # §5 row 4, length mismatch: first dims of every per-step array
        firsts: list[tuple[str, int | None]] = [("obs/agentview_rgb", img_T), ("actions", act_shape[0])]
        for rel in ("states", "robot_states", "rewards", "dones"):
            if self._h5(gk, "group", lambda: rel in g, source):
                ds = self._h5(f"{gk}/{rel}", "dataset", lambda: g[rel], source)
                if isinstance(ds, h5py.Dataset):
                    shp = tuple(self._h5(f"{gk}/{rel}", "dataset", lambda: ds.shape, source) or ())
                    firsts.append((rel, shp[0] if shp else None))
        for okey in sorted(self._h5(f"{gk}/obs", "group", lambda: list(obs.keys()), source)):
            if okey == "agentview_rgb":
                continue
            ds = self._h5(f"{gk}/obs/{okey}", "dataset", lambda: obs[okey], source)
            if isinstance(ds, h5py.Dataset):
                shp = tuple(self._h5(f"{gk}/obs/{okey}", "dataset", lambda: ds.shape, source) or ())
                if shp:  # a scalar extra has no time axis: ignored (§5 row 15, extra keys)
                    firsts.append((f"obs/{okey}", shp[0]))
        bad = [(rel, n) for rel, n in firsts if n != T]
        if bad:
            listing = ", ".join(f"{rel}={n}" for rel, n in firsts)
            if ns_raw is not None and len({n for _, n in firsts}) == 1:
                raise fail(
                    f"{gk} attr num_samples",
                    f"expected {firsts[0][1]} (the first dim of every array), found {T}; never truncated",
                    "demo",
                )
            rel, n = bad[0]
            raise fail(
                f"{gk}/{rel}",
                f"expected first dim T=num_samples={T}, found {n} (first dims: {listing}); never truncated",
                "demo",
            )

        # §5 row 6, images not uint8: image dtype
        if img_dtype != np.uint8:
            if not self.convert_dtype:
                raise fail(img_key, f"expected dtype uint8, found {img_dtype} (pass convert_dtype=True to convert)")
            if img_dtype.kind not in "uif":
                raise fail(img_key, f"expected dtype uint8 (or a convertible integer/float dtype), found {img_dtype}")
        # §5 row 7, wrong resolution / layout: image shape
        need_resize = False
        if img_shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            hwc_rgb = len(img_shape) == 4 and img_shape[3] == 3 and img_shape[1] > 0 and img_shape[2] > 0
            if self.resize == IMAGE_SIZE and hwc_rgb:
                need_resize = True
            else:
                hint = "" if hwc_rgb else " (only HWC RGB images can be resized)"
                if hwc_rgb and self.resize is None:
                    hint = " (pass resize=128 to resize)"
                raise fail(
                    img_key, f"expected shape (T, {IMAGE_SIZE}, {IMAGE_SIZE}, 3) with T={T}, found {img_shape}{hint}"
                )

        # §5 row 5, demo too short: skip + count + warn, both policies
        if T < self.min_len:
            reason = f"{gk}: too short: expected T >= {self.min_len}, found T={T}"
            self.report.demos_skipped.append({"demo": name, "reason": reason})
            self._warn(f"skipping {name}: {reason}")
            return None, content_T
        return _DemoPlan(source, name, k, T, need_resize, img_dtype), content_T

    # ---- iteration ------------------------------------------------------------------------------

    def demos(self) -> Iterator[DemoRecord]:
        """Yield kept demos in numeric order (see the class docstring for mid-file failures)."""
        if not self._entered:
            raise RuntimeError("use TaskFileReader as a context manager before calling demos()")
        if self._iterated:
            raise RuntimeError("demos() can be iterated only once per reader")
        self._iterated = True
        if self.report.skipped_file is not None:
            return
        for plan in list(self._plans):
            if self._file is None:
                raise RuntimeError("TaskFileReader is closed")
            try:
                rec = self._read_demo(plan)
            except LiberoFormatError as e:
                if not self.skip:
                    raise
                if e.level == "file":
                    self._skip_file(e)
                    return
                self._skip_demo(plan.name, e)
                continue
            self.report.demos_kept.append(rec.name)
            self.report.frames += rec.T
            self.report.action_range_violations += rec.action_range_violations
            yield rec
        if not self.report.demos_kept:
            self._no_usable_demos()

    def _read_demo(self, plan: _DemoPlan) -> DemoRecord:
        src = plan.source_name
        gk = f"data/{src}"
        act_key, img_key = f"{gk}/actions", f"{gk}/obs/agentview_rgb"
        f = self._file
        actions = self._h5(act_key, "dataset (reading data)", lambda: f[act_key][()], src)
        actions = np.asarray(actions)
        # §5 row 8: NaN / Inf in actions
        finite = np.isfinite(actions)
        if not finite.all():
            bad = np.argwhere(~finite)[0]
            raise self._err(
                act_key,
                f"expected finite values, found {int((~finite).sum())} non-finite "
                f"(first {float(actions[tuple(bad)])} at [{int(bad[0])}, {int(bad[1])}])",
                "demo",
                src,
            )
        actions = np.ascontiguousarray(actions, dtype=np.float64)
        # §5 row 9b, actions out of range: warn + count, never skip
        over = np.abs(actions) > 1.0 + ACTION_RANGE_TOL
        grip_bad = np.abs(np.abs(actions[:, ACTION_DIM - 1]) - 1.0) > ACTION_RANGE_TOL
        viol = over.copy()
        viol[:, ACTION_DIM - 1] |= grip_bad
        n_viol = int(viol.sum())
        if n_viol:
            self._warn(
                f"{act_key}: {n_viol} value(s) out of range: {int(over.sum())} with |a| > 1, "
                f"{int(grip_bad.sum())} gripper value(s) not ±1 (max |a| = {float(np.abs(actions).max()):.4g}); kept"
            )

        frames = self._h5(img_key, "dataset (reading data)", lambda: f[img_key][()], src)
        frames = np.asarray(frames)
        if frames.dtype != np.uint8:
            frames = self._convert(frames, img_key, src)
        if plan.image_resize:
            frames = resize_hwc(frames, IMAGE_SIZE)
        if self.report.image_convention == "opengl":
            frames = np.ascontiguousarray(frames[:, ::-1])
        else:
            frames = np.ascontiguousarray(frames)
        return DemoRecord(
            name=plan.name,
            index=plan.index,
            T=plan.T,
            frames=frames,
            actions=actions,
            source_name=src,
            action_range_violations=n_viol,
        )

    def _convert(self, frames: np.ndarray, key: str, src: str) -> np.ndarray:
        """convert_dtype=True: float in [0,1] → round(x*255); integers in 0..255 → cast."""
        if frames.dtype.kind == "f":
            finite = np.isfinite(frames)
            if not finite.all():
                raise self._err(key, f"expected finite image values, found {int((~finite).sum())} NaN/Inf", "demo", src)
            lo, hi = float(frames.min()), float(frames.max())
            if lo < 0.0 or hi > 1.0:
                raise self._err(key, f"expected float images in [0, 1], found range [{lo:.4g}, {hi:.4g}]", "demo", src)
            return np.clip(np.rint(frames.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
        lo, hi = int(frames.min()), int(frames.max())
        if lo < 0 or hi > 255:
            raise self._err(
                key,
                f"expected integer image values in 0..255 for conversion, found range [{lo}, {hi}] ({frames.dtype})",
                "demo",
                src,
            )
        return frames.astype(np.uint8)
