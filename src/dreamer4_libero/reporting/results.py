"""Result inputs of the `tables` stage: load and check every record, aggregate probe cells over seeds.

Inputs (docs/results_format.md): probe records listed by `results/probe/<variant>/summary.json`
(including `results/probe/baselines/summary.json`), rollout records, the tokenizer record, and the
training folders `results/train/<run>/` (checkpoint.json + metrics.jsonl, or not_run.json).
Nothing else is read, so the tables depend on declared files only. A malformed file raises
`TablesError` naming it.

Uncertainty: CIs pooled over seeds and paired differences use the bootstrap of
`dreamer4_libero.evaluation.bootstrap` (task-level resamples, `ci_task`, §1.7). A count matrix
depends only on (level, task list, B, seed, set name); the library draws it once per such key and
reuses it for every row scored on the same episodes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..evaluation import bootstrap
from ..evaluation.horizon_bins import horizon_bins
from ..fileio import sha256_file
from ..training.metrics import read_metrics

log = logging.getLogger(__name__)

PROTOCOL = "eval-protocol-v1"
TEST, TRAIN = "probe_eval_test", "probe_eval_train"
CONTROLS = ("train_mean", "label_shuffle", "copy_prev")
BASELINES = "baselines"
BASELINE_FEATURES = (
    "lagged_actions",
    "time_only",
    "pixels",
    "frame_diff",
    "tok_latent",
    "const_control",
    "leak_control",
)
WM_FEATURES = ("wm_agent", "wm_spatial")
EXTRACTIONS = ("past_actions", "video_only")
PROBE_MODES = ("policy", "idm")
FLAG_NAMES = ("DEGENERATE", "NO-SIGNAL", "LEAK?")


class TablesError(ValueError):
    """A malformed input file; the message names the file."""


# ============================================================================ inputs


@dataclass
class TrainRun:
    name: str
    folder: Path
    not_run: str | None = None  # reason, if not_run.json
    checkpoint: dict | None = None  # checkpoint.json
    metrics: list[dict] = field(default_factory=list)
    has_metrics: bool = False


@dataclass
class Inputs:
    """Everything the tables read, loaded and checked (see `load_inputs`)."""

    config: dict
    variants: list[dict]
    probe: dict[tuple, dict]  # (variant, feature, extraction, probe_mode, H, seed) -> record
    probe_paths: dict[tuple, str]
    rollout: dict[str, dict]
    tokenizer: dict[str, dict]
    train: dict[str, TrainRun]
    files: list[tuple[str, str]]  # (display path, sha256), sorted

    @property
    def seeds(self) -> list[int]:
        return list(self.config["seeds"])

    @property
    def H_list(self) -> list[int]:
        return list(self.config["H_list"])

    @property
    def B(self) -> int:
        return int(self.config["bootstrap_B"])

    def variant(self, name: str) -> dict | None:
        return next((v for v in self.variants if v["name"] == name), None)

    def not_run_reason(self, name: str) -> str | None:
        """Why a variant has no results ("not run: <reason>"), or None if it was run."""
        run = self.train.get(name)
        if run is not None and run.not_run is not None:
            return run.not_run
        v = self.variant(name)
        if v is not None and not v.get("runnable", True):
            return v.get("not_run_reason") or "not runnable in this configuration"
        return None


def display_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """Path relative to `root` (default: the working directory) when inside it, else absolute."""
    p = Path(os.path.abspath(path))
    base = Path(os.path.abspath(root if root is not None else os.getcwd()))
    try:
        return p.relative_to(base).as_posix()
    except ValueError:
        return p.as_posix()


def _load_json_hashed(path: Path, what: str) -> tuple[Any, str]:
    """(parsed JSON, sha256 of the bytes read): one read per file (probe records are large)."""
    if not path.exists():
        raise TablesError(f"{path}: {what} not found")
    data = path.read_bytes()
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TablesError(f"{path}: malformed {what}: not valid JSON ({exc})") from None
    return obj, hashlib.sha256(data).hexdigest()


def _load_json(path: Path, what: str) -> Any:
    return _load_json_hashed(path, what)[0]


def dig(obj: Any, keys: Sequence[str]) -> Any:
    for k in keys:
        if not isinstance(obj, dict) or k not in obj:
            return None
        obj = obj[k]
    return obj


def _require(obj: Any, dotted: Iterable[str], path: Path, what: str) -> None:
    for key in dotted:
        cur = obj
        parts = key.split(".")
        for i, k in enumerate(parts):
            if not isinstance(cur, dict) or k not in cur:
                raise TablesError(f"{path}: malformed {what}: missing key '{'.'.join(parts[: i + 1])}'")
            cur = cur[k]


def is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_probe_record(rec: Any, path: Path) -> None:
    if not isinstance(rec, dict):
        raise TablesError(f"{path}: malformed probe record: top level is {type(rec).__name__}, not an object")
    _require(
        rec, ("variant", "feature", "extraction", "probe_mode", "H", "seed", "scorings", "flags"), path, "probe record"
    )
    if rec.get("protocol", PROTOCOL) != PROTOCOL:
        raise TablesError(f"{path}: probe record has protocol {rec.get('protocol')!r}, expected {PROTOCOL!r}")
    if not isinstance(rec["H"], int) or not isinstance(rec["seed"], int):
        raise TablesError(f"{path}: malformed probe record: 'H' and 'seed' must be integers")
    for scoring in ("all_valid", "common_Hmax"):
        for s in (TEST, TRAIN):
            blk = dig(rec, ("scorings", scoring, s))
            if blk is None:
                continue
            _require(blk, ("probe.r2_uniform",), path, f"probe record (scorings.{scoring}.{s})")
            for pred in ("probe",) + CONTROLS:
                if pred in blk:
                    v = dig(blk, (pred, "r2_uniform"))
                    if v is not None and not is_num(v):
                        raise TablesError(
                            f"{path}: malformed probe record: scorings.{scoring}.{s}.{pred}.r2_uniform "
                            f"is {v!r}, not a number or null"
                        )
            st = blk.get("stats")
            if st is not None:
                _require(
                    st,
                    ("episodes", "tasks", "n", "sum_y", "sum_y2", "sse"),
                    path,
                    f"probe record (scorings.{scoring}.{s}.stats)",
                )
                if not (
                    len(st["episodes"]) == len(st["tasks"]) == len(st["n"]) == len(st["sum_y"]) == len(st["sum_y2"])
                ):
                    raise TablesError(
                        f"{path}: malformed probe record: scorings.{scoring}.{s}.stats lists differ in length"
                    )
    if not isinstance(rec["flags"], dict):
        raise TablesError(f"{path}: malformed probe record: 'flags' must be an object")


def _load_sets_record(path: Path, what: str, name_key: str) -> dict:
    """A rollout or tokenizer record: an object with `name_key` and a `sets` object, else TablesError."""
    rec = _load_json(path, what)
    if not isinstance(rec, dict):
        raise TablesError(f"{path}: malformed {what}: top level is not an object")
    _require(rec, (name_key, "sets"), path, what)
    if not isinstance(rec["sets"], dict):
        raise TablesError(f"{path}: malformed {what}: 'sets' must be an object")
    return rec


def add_result_args(ap) -> None:
    """The result-file arguments shared by make_tables.py and make_archive.py."""
    ap.add_argument(
        "--tables-config",
        required=True,
        help="JSON: {variants: [{name, label, runnable, not_run_reason, stand_in_for, aux_weight, "
        "aux_input, space_mode, init_from, init_source, init_note}, ...] in config order, H_list, seeds, bootstrap_B, "
        "tokenizer_run}",
    )
    ap.add_argument(
        "--probe-summaries", nargs="*", default=[], help="results/probe/<variant>/summary.json (+ baselines)"
    )
    ap.add_argument("--rollout", nargs="*", default=[], help="results/rollout/<variant>/rollout.json")
    ap.add_argument("--tokenizer-eval", nargs="*", default=[], help="results/tokenizer_eval/<run>/psnr.json")
    ap.add_argument("--train-dirs", nargs="*", default=[], help="results/train/<run> folders")


def result_args(a) -> tuple[dict, dict]:
    """What add_result_args parsed: (the checked tables config, the result-file keyword arguments of
    make_tables / make_archive)."""
    from ..config import parse_section

    cfg = parse_section(a.tables_config, "$defs.tables_config", "--tables-config")
    files = {"probe_summaries": a.probe_summaries, "rollout": a.rollout, "tokenizer_eval": a.tokenizer_eval}
    return cfg, {**files, "train_dirs": a.train_dirs}


def normalise_config(cfg: dict) -> dict:
    """The tables config (`--tables-config`) checked and filled against config/schema.yaml `$defs.tables_config`
    (the one config helper, config.validate_section); a malformed one raises TablesError."""
    from ..config import ConfigError, validate_section

    try:
        return validate_section(cfg, "$defs.tables_config")
    except ConfigError as exc:
        raise TablesError(f"tables config: {exc}") from None


def load_inputs(
    tables_config: dict,
    probe_summaries: Iterable = (),
    rollout: Iterable = (),
    tokenizer_eval: Iterable = (),
    train_dirs: Iterable = (),
    root: str | os.PathLike | None = None,
) -> Inputs:
    """Read and check every input; a malformed file raises TablesError naming it."""
    cfg = normalise_config(tables_config)
    names = {v["name"] for v in cfg["variants"]}
    files: dict[str, str] = {}

    def track(p: Path, digest: str | None = None) -> None:
        files[display_path(p, root)] = digest or sha256_file(p)

    probe: dict[tuple, dict] = {}
    probe_paths: dict[tuple, str] = {}
    for sp in probe_summaries:
        sp = Path(sp)
        summ = _load_json(sp, "probe summary")
        if not isinstance(summ, dict) or not isinstance(summ.get("records"), list):
            raise TablesError(f"{sp}: malformed probe summary: needs {{'variant', 'records': [...]}}")
        track(sp)
        for i, ent in enumerate(summ["records"]):
            if not isinstance(ent, dict) or "path" not in ent:
                raise TablesError(f"{sp}: malformed probe summary: records[{i}] has no 'path'")
            rp = sp.parent / ent["path"]
            rec, digest = _load_json_hashed(rp, "probe record")
            if ent.get("sha256") and digest != ent["sha256"]:
                raise TablesError(
                    f"{rp}: sha256 differs from the one listed in {sp} (record changed after the summary)"
                )
            _check_probe_record(rec, rp)
            for k in ("feature", "extraction", "probe_mode", "H", "seed"):
                if k in ent and ent[k] != rec[k]:
                    raise TablesError(f"{rp}: {k}={rec[k]!r} but {sp} lists {k}={ent[k]!r}")
            if summ.get("variant") is not None and rec["variant"] != summ["variant"]:
                raise TablesError(f"{rp}: variant {rec['variant']!r} but {sp} is for {summ['variant']!r}")
            key = (rec["variant"], rec["feature"], rec["extraction"], rec["probe_mode"], rec["H"], rec["seed"])
            if key in probe:
                raise TablesError(f"{rp}: duplicate probe record for {key} (also {probe_paths[key]})")
            track(rp, digest)
            if rec["variant"] != BASELINES and rec["variant"] not in names:
                log.warning("%s: variant %s is not in the tables config; ignored", rp, rec["variant"])
                continue
            probe[key] = rec
            probe_paths[key] = display_path(rp, root)

    rolls: dict[str, dict] = {}
    for rp in rollout:
        rp = Path(rp)
        rec = _load_sets_record(rp, "rollout record", "variant")
        for sname, s in rec["sets"].items():
            if not isinstance(s, dict) or not isinstance(s.get("rows"), dict):
                raise TablesError(f"{rp}: malformed rollout record: sets.{sname}.rows must be an object")
            for rname, row in s["rows"].items():
                for k in ("psnr_frame_mean", "psnr_pooled"):
                    if not isinstance(row, dict) or (row.get(k) is not None and not is_num(row.get(k))):
                        raise TablesError(
                            f"{rp}: malformed rollout record: sets.{sname}.rows.{rname}.{k} is not a number"
                        )
        if rec["variant"] in rolls:
            raise TablesError(f"{rp}: a second rollout record for variant {rec['variant']!r}")
        track(rp)
        rolls[rec["variant"]] = rec

    toks: dict[str, dict] = {}
    for tp in tokenizer_eval:
        tp = Path(tp)
        rec = _load_sets_record(tp, "tokenizer record", "run")
        track(tp)
        toks[rec["run"]] = rec

    train: dict[str, TrainRun] = {}
    for d in train_dirs:
        d = Path(d)
        name = d.name
        nr = d / "not_run.json"
        if nr.exists():
            rec = _load_json(nr, "not_run.json")
            if not isinstance(rec, dict):
                raise TablesError(f"{nr}: malformed not_run.json: top level is not an object")
            _require(rec, ("reason",), nr, "not_run.json")
            track(nr)
            train[name] = TrainRun(name, d, not_run=str(rec["reason"]))
            continue
        ck = d / "checkpoint.json"
        run = TrainRun(name, d)
        if ck.exists():
            run.checkpoint = _load_json(ck, "checkpoint.json")
            if not isinstance(run.checkpoint, dict):
                raise TablesError(f"{ck}: malformed checkpoint.json: top level is not an object")
            track(ck)
        mp = d / "metrics.jsonl"
        if mp.exists():
            run.metrics = read_metrics(mp)
            run.has_metrics = True
            track(mp)
        if run.checkpoint is None and not run.has_metrics:
            raise TablesError(f"{d}: training folder has neither not_run.json nor checkpoint.json/metrics.jsonl")
        train[name] = run

    return Inputs(cfg, cfg["variants"], probe, probe_paths, rolls, toks, train, sorted(files.items()))


# ============================================================================ bootstrap (cached)


class BootstrapCache:
    """`bootstrap.r2_replicates` / `paired_r2_diff` at this table's B (the library caches each count matrix)."""

    def __init__(self, B: int):
        self.B = int(B)

    def replicates(self, stats: dict, predictor: str, level: str, seed: int, set_name: str) -> np.ndarray:
        return bootstrap.r2_replicates(stats, predictor, level, seed, set_name, self.B)

    def paired(
        self, stats_a: dict, pred_a: str, stats_b: dict, pred_b: str, level: str, seed: int, set_name: str
    ) -> np.ndarray:
        return bootstrap.paired_r2_diff(stats_a, pred_a, stats_b, pred_b, level, seed, set_name, self.B)


# ============================================================================ aggregation


@dataclass
class Agg:
    """One probe cell aggregated over seeds."""

    values: dict[int, float | None]  # seed -> R² (None: undefined or missing)
    mean: float | None = None
    std: float | None = None
    fixed_lists: bool = False
    n_seeds: int = 0
    ci: tuple[float | None, float | None] = (None, None)
    records: list[dict] = field(default_factory=list)


def finite(x: Any) -> bool:
    return is_num(x) and math.isfinite(x)


def mean_finite(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if finite(x)]
    return float(np.mean(xs)) if xs else None


class ProbeView:
    """Aggregates probe records over seeds (mean, ddof=1 std, CI from pooled replicates)."""

    def __init__(self, inp: Inputs):
        self.inp = inp
        self.boot = BootstrapCache(inp.B)

    def records(self, variant, feature, extraction, mode, H) -> dict[int, dict]:
        out = {}
        for s in self.inp.seeds:
            r = self.inp.probe.get((variant, feature, extraction, mode, H, s))
            if r is not None:
                out[s] = r
        return out

    def has(self, variant, feature, extraction, mode, H) -> bool:
        return bool(self.records(variant, feature, extraction, mode, H))

    def cell(self, variant, feature, extraction, mode, H, scoring, set_name, predictor="probe", ci=True) -> Agg:
        recs = self.records(variant, feature, extraction, mode, H)
        agg = Agg(values={}, records=list(recs.values()))
        reps = []
        for s, rec in recs.items():
            blk = dig(rec, ("scorings", scoring, set_name))
            v = dig(blk, (predictor, "r2_uniform"))
            agg.values[s] = float(v) if finite(v) else None
            if rec.get("seeds_vary_episodes") is False:
                agg.fixed_lists = True
            st = dig(blk, ("stats",))
            if ci and st is not None and predictor in (st.get("sse") or {}):
                reps.append(self.boot.replicates(st, predictor, "task", s, set_name))
        vals = [v for v in agg.values.values() if v is not None]
        agg.n_seeds = len(vals)
        agg.mean = float(np.mean(vals)) if vals else None
        agg.std = float(np.std(vals, ddof=1)) if len(vals) >= 2 else None
        if reps:
            lo, hi = bootstrap.percentile_ci(np.concatenate(reps))
            agg.ci = (lo, hi)
        return agg

    def paired_diff(self, rec_key_a: tuple, rec_key_b: tuple, scoring: str, set_name: str):
        """(mean point difference, (lo, hi), status) of R²(a) − R²(b), pooled over seeds."""
        diffs, reps = [], []
        status = None
        for s in self.inp.seeds:
            ra = self.inp.probe.get(tuple(rec_key_a) + (s,))
            rb = self.inp.probe.get(tuple(rec_key_b) + (s,))
            if ra is None or rb is None:
                continue
            ba, bb = dig(ra, ("scorings", scoring, set_name)), dig(rb, ("scorings", scoring, set_name))
            va, vb = dig(ba, ("probe", "r2_uniform")), dig(bb, ("probe", "r2_uniform"))
            sa, sb = dig(ba, ("stats",)), dig(bb, ("stats",))
            if sa is None or sb is None or not finite(va) or not finite(vb):
                continue
            try:
                reps.append(self.boot.paired(sa, "probe", sb, "probe", "task", s, set_name))
            except ValueError:
                status = "n/a (different episodes)"
                continue
            diffs.append(float(va) - float(vb))
        if not diffs:
            return None, (None, None), status
        lo, hi = bootstrap.percentile_ci(np.concatenate(reps))
        return float(np.mean(diffs)), (lo, hi), None


def flag_text(records: Sequence[dict]) -> str:
    """Flags set in the records: 'NAME' if in every seed, 'NAME (k/n seeds)' if in some."""
    n = len(records)
    parts = []
    for f in FLAG_NAMES:
        k = sum(1 for r in records if (r.get("flags") or {}).get(f))
        if k == n and n:
            parts.append(f)
        elif k:
            parts.append(f"{f} ({k}/{n} seeds)")
    return ", ".join(parts)


def n_params_of(inp: Inputs, variant: str) -> int | None:
    """Tokenizer + dynamics parameters (aux head excluded) from the variant's records."""
    cands = [r for k, r in sorted(inp.probe.items(), key=lambda kv: str(kv[0])) if k[0] == variant]
    if variant in inp.rollout:
        cands.append(inp.rollout[variant])
    for r in cands:
        npar = r.get("n_params") or {}
        if is_num(npar.get("tokenizer")) and is_num(npar.get("dynamics")):
            return int(npar["tokenizer"]) + int(npar["dynamics"])
    return None


# ============================================================================ rollout and tokenizer records


def rollout_row(rec: dict | None, row: str, set_name: str = "test_ood") -> dict | None:
    return dig(rec, ("sets", set_name, "rows", row)) if rec else None


def tok_psnr(rec: dict | None, key: str = "tok_psnr_frame_mean", set_name: str = "test_ood_rollout_list"):
    return dig(rec, ("sets", set_name, key)) if rec else None


def study_tokenizer(inp: Inputs) -> dict | None:
    run = inp.config.get("tokenizer_run")
    if run and run in inp.tokenizer:
        return inp.tokenizer[run]
    if not run and len(inp.tokenizer) == 1:
        return next(iter(inp.tokenizer.values()))
    return None


def reference_rollout(inp: Inputs) -> tuple[str | None, dict | None]:
    """The first variant (config order) whose rollout used the study tokenizer: source of reference rows."""
    for v in inp.variants:
        rec = inp.rollout.get(v["name"])
        if rec is not None and inp.not_run_reason(v["name"]) is None and not rec.get("tokenizer_eval"):
            return v["name"], rec
    for v in inp.variants:
        if v["name"] in inp.rollout:
            return v["name"], inp.rollout[v["name"]]
    return None, None


def study_bins(inp: Inputs, set_name: str = "test_ood") -> list[tuple[int, int]]:
    """Predicted-frame bins of the per-horizon deltas: those of the first rollout record (config order) that
    has them, else `horizon_bins` of the records' horizon (24 if none says)."""
    horizon = None
    for v in inp.variants:
        rec = inp.rollout.get(v["name"])
        bins = dig(rec, ("sets", set_name, "delta_copy_last_bins")) if rec else None
        if isinstance(bins, list) and bins and all(isinstance(dig(b, ("frames",)), list) for b in bins):
            return [tuple(int(x) for x in b["frames"]) for b in bins]
        if rec and horizon is None and is_num(rec.get("horizon")):
            horizon = int(rec["horizon"])
    return horizon_bins(horizon or 24)


def bin_delta(rec: dict | None, key: str, frames: tuple[int, int], set_name: str = "test_ood") -> dict:
    """{"mean", "ci"} of one bin of `delta_copy_last_bins` / `delta_action_bins` ({} if absent: older records)."""
    found = dig(rec, ("sets", set_name, key)) if rec else None
    for b in found if isinstance(found, list) else []:
        if isinstance(b, dict) and tuple(b.get("frames") or ()) == tuple(frames):
            return b
    return {}


def baseline_features(inp: Inputs) -> list[str]:
    present = {k[1] for k in inp.probe if k[0] == BASELINES}
    return [f for f in BASELINE_FEATURES if f in present] + sorted(present - set(BASELINE_FEATURES))
