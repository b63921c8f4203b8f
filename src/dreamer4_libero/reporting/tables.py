"""The `tables` stage (evaluation.md §4): result JSONs and training metrics in, tables and plots out.

Inputs (docs/results_format.md): probe records listed by `results/probe/<variant>/summary.json`
(including `results/probe/baselines/summary.json`), rollout records, the tokenizer record, and the
training folders `results/train/<run>/` (checkpoint.json + metrics.jsonl, or not_run.json).
Nothing else is read, so the tables depend on declared files only.

Outputs (`write_tables`): one file per table per format under the output folder

    table1_probe, table2_quality, paper_table_probe, paper_table_rollout, controls, degeneracy,
    quality_bars, power (reporting/power.py)        (.md / .csv / .tex each)
    tables.md                                       (every table, the plots, one footer)
    plots/{loss_curves,aux_mse,probe_r2,h_curves,rollout_per_step}.png

Everything is deterministic: fixed row order (config order of the variants, then references),
fixed float formats, no timestamps or host names, PNGs saved without a Software tag; a footer
on each file lists the sha256 of every input file. Deleting the outputs and rerunning gives the
same bytes.

Uncertainty: CIs pooled over seeds and paired differences use the bootstrap of
`dreamer4_libero.evaluation.bootstrap` (task-level resamples, `ci_task`, §1.7). A count matrix
depends only on (level, task list, B, seed, set name); the library draws it once per such key and
reuses it for every row scored on the same episodes.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..evaluation import bootstrap
from ..evaluation.horizon_bins import horizon_bins
from ..fileio import atomic_path, sha256_file
from ..training.metrics import read_metrics

log = logging.getLogger(__name__)

PROTOCOL = "eval-protocol-v1"
TEST, TRAIN = "probe_eval_test", "probe_eval_train"
CONTROLS = ("train_mean", "label_shuffle", "copy_prev")
BASELINES = "baselines"
BASELINE_FEATURES = ("lagged_actions", "time_only", "pixels", "frame_diff", "tok_latent", "const_control",
                     "leak_control")
WM_FEATURES = ("wm_agent", "wm_spatial")
EXTRACTIONS = ("past_actions", "video_only")
PROBE_MODES = ("policy", "idm")
FLAG_NAMES = ("DEGENERATE", "NO-SIGNAL", "LEAK?")

# The published archive (evaluation.md §4), in the archive's variant order.
ARCHIVE_VARIANTS = ("dynamics_phase3", "dynamics_aux_phase6", "dynamics_aux_dmcontrol_pretrained",
                    "dynamics_aux_param_matched_276M")
ARCHIVED_R2 = dict(zip(ARCHIVE_VARIANTS, (-0.039, -0.039, -0.040, -0.036)))
ARCHIVED_ROLLOUT = dict(zip(ARCHIVE_VARIANTS, (13.41, 13.41, 10.28, 13.05)))
ARCHIVED_TOKENIZER_PSNR = 25.18
PAPER_PROBE_LABELS = dict(zip(ARCHIVE_VARIANTS, (
    "D4 dynamics (scratch, agent token)", "D4 dynamics + aux λ=0.05 (agent)",
    "D4 + DMControl pretrain + aux (agent)", "D4 param-matched 276M + aux (agent)")))
PAPER_ROLLOUT_LABELS = dict(zip(ARCHIVE_VARIANTS, (
    "D4 dynamics (scratch)", "D4 + aux", "D4 + DMControl pretrain + aux", "D4 param-matched 276M + aux")))
# (Table 1 model name, paper-table label, R², params)
QUOTED_PROBE = (
    ("V-JEPA 2 ViT-L + aux", "V-JEPA 2 ViT-L + aux (paper main)", 0.845, "304M"),
    ("LAPA + aux", "LAPA + aux (paper main)", 0.510, "344M"),
    ("LAPA frozen", "LAPA frozen", 0.410, "344M"),
)
DAGGER = "†"
QUOTED_NOTE = "† quoted from the paper, not recomputed; its probe convention (mode, R² averaging) is not stated, " \
              "so comparisons with our rows are indicative (an unknown convention can mean a factor of two, §1.2)."

HEADER_TABLE1 = ["Model", "Features", "Held-out-task R² (H=1)", "± std (3 seeds)", "95% CI", "Seen-task R²",
                 "Params", "Archived", "Flag"]
HEADER_TABLE2 = ["Model", "Tokenizer PSNR (dB)", "Rollout PSNR (dB, 8→24)", "Pooled PSNR (dB)",
                 "Δ vs copy-last (dB)", "Δ vs copy-last, frames 17–24 (dB)", "Δ true − shuffled actions (dB)",
                 "Params", "Archived rollout"]
HEADER_PAPER_PROBE = ["Variant", "params", "test R² (action probe, H=1, mean of 3 seeds)"]
HEADER_PAPER_ROLLOUT = ["Variant", "rollout PSNR (LIBERO test_ood)"]

TABLE_KEYS = ("table1_probe", "table2_quality", "paper_table_probe", "paper_table_rollout", "controls",
              "degeneracy", "quality_bars", "power")
PLOT_NAMES = ("loss_curves", "aux_mse", "probe_r2", "h_curves", "rollout_per_step")

# quality bars (§4)
TOK_PSNR_BAR = 25.0
ROLLOUT_POOLED_BAR = 18.0
EMA_DECAY = 0.99


class TablesError(ValueError):
    """A malformed input file; the message names the file."""


# ============================================================================ inputs

@dataclass
class TrainRun:
    name: str
    folder: Path
    not_run: str | None = None            # reason, if not_run.json
    checkpoint: dict | None = None        # checkpoint.json
    metrics: list[dict] = field(default_factory=list)
    has_metrics: bool = False


@dataclass
class Inputs:
    """Everything the tables read, loaded and checked (see `load_inputs`)."""
    config: dict
    variants: list[dict]
    probe: dict[tuple, dict]              # (variant, feature, extraction, probe_mode, H, seed) -> record
    probe_paths: dict[tuple, str]
    rollout: dict[str, dict]
    tokenizer: dict[str, dict]
    train: dict[str, TrainRun]
    files: list[tuple[str, str]]          # (display path, sha256), sorted

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


def _dig(obj: Any, keys: Sequence[str]) -> Any:
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
                raise TablesError(f"{path}: malformed {what}: missing key '{'.'.join(parts[:i + 1])}'")
            cur = cur[k]


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_probe_record(rec: Any, path: Path) -> None:
    if not isinstance(rec, dict):
        raise TablesError(f"{path}: malformed probe record: top level is {type(rec).__name__}, not an object")
    _require(rec, ("variant", "feature", "extraction", "probe_mode", "H", "seed", "scorings", "flags"), path,
              "probe record")
    if rec.get("protocol", PROTOCOL) != PROTOCOL:
        raise TablesError(f"{path}: probe record has protocol {rec.get('protocol')!r}, expected {PROTOCOL!r}")
    if not isinstance(rec["H"], int) or not isinstance(rec["seed"], int):
        raise TablesError(f"{path}: malformed probe record: 'H' and 'seed' must be integers")
    for scoring in ("all_valid", "common_Hmax"):
        for s in (TEST, TRAIN):
            blk = _dig(rec, ("scorings", scoring, s))
            if blk is None:
                continue
            _require(blk, ("probe.r2_uniform",), path, f"probe record (scorings.{scoring}.{s})")
            for pred in ("probe",) + CONTROLS:
                if pred in blk:
                    v = _dig(blk, (pred, "r2_uniform"))
                    if v is not None and not _is_num(v):
                        raise TablesError(f"{path}: malformed probe record: scorings.{scoring}.{s}.{pred}.r2_uniform "
                                          f"is {v!r}, not a number or null")
            st = blk.get("stats")
            if st is not None:
                _require(st, ("episodes", "tasks", "n", "sum_y", "sum_y2", "sse"), path,
                         f"probe record (scorings.{scoring}.{s}.stats)")
                if not (len(st["episodes"]) == len(st["tasks"]) == len(st["n"]) == len(st["sum_y"])
                        == len(st["sum_y2"])):
                    raise TablesError(f"{path}: malformed probe record: scorings.{scoring}.{s}.stats lists "
                                      "differ in length")
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
    ap.add_argument("--tables-config", required=True,
                    help="JSON: {variants: [{name, label, runnable, not_run_reason, stand_in_for, aux_weight, "
                         "aux_input, space_mode, init_from, init_source, init_note}, ...] in config order, H_list, seeds, bootstrap_B, "
                         "tokenizer_run}")
    ap.add_argument("--probe-summaries", nargs="*", default=[],
                    help="results/probe/<variant>/summary.json (+ baselines)")
    ap.add_argument("--rollout", nargs="*", default=[], help="results/rollout/<variant>/rollout.json")
    ap.add_argument("--tokenizer-eval", nargs="*", default=[], help="results/tokenizer_eval/<run>/psnr.json")
    ap.add_argument("--train-dirs", nargs="*", default=[], help="results/train/<run> folders")


def parse_tables_config(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--tables-config is not valid JSON: {exc}") from None


def normalise_config(cfg: dict) -> dict:
    """Check and fill the tables config (`--tables-config`)."""
    if not isinstance(cfg, dict):
        raise TablesError("tables config: must be a JSON object")
    out = {"H_list": [1, 2, 4, 8], "seeds": [0, 1, 2], "bootstrap_B": 1000, "tokenizer_run": None}
    out.update(cfg)
    vs = out.get("variants")
    if not isinstance(vs, list):
        raise TablesError("tables config: 'variants' must be a list of {name, label, runnable, ...}")
    norm = []
    for v in vs:
        if not isinstance(v, dict) or not isinstance(v.get("name"), str):
            raise TablesError(f"tables config: every variant needs a string 'name', got {v!r}")
        d = {"label": None, "runnable": True, "not_run_reason": None, "stand_in_for": None, "aux_weight": 0.0,
             "aux_input": None, "space_mode": None, "init_from": None, "init_source": None, "init_note": None}
        d.update(v)
        norm.append(d)
    out["variants"] = norm
    out["H_list"] = [int(h) for h in out["H_list"]]
    out["seeds"] = [int(s) for s in out["seeds"]]
    out["bootstrap_B"] = int(out["bootstrap_B"])
    if out["bootstrap_B"] < 1:
        raise TablesError("tables config: bootstrap_B must be >= 1")
    return out


def load_inputs(tables_config: dict, probe_summaries: Iterable = (), rollout: Iterable = (),
                tokenizer_eval: Iterable = (), train_dirs: Iterable = (), root: str | os.PathLike | None = None,
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
                raise TablesError(f"{rp}: sha256 differs from the one listed in {sp} "
                                  "(record changed after the summary)")
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
                    if not isinstance(row, dict) or (row.get(k) is not None and not _is_num(row.get(k))):
                        raise TablesError(f"{rp}: malformed rollout record: sets.{sname}.rows.{rname}.{k} "
                                          "is not a number")
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

    def paired(self, stats_a: dict, pred_a: str, stats_b: dict, pred_b: str, level: str, seed: int,
               set_name: str) -> np.ndarray:
        return bootstrap.paired_r2_diff(stats_a, pred_a, stats_b, pred_b, level, seed, set_name, self.B)


# ============================================================================ aggregation

@dataclass
class Agg:
    """One probe cell aggregated over seeds."""
    values: dict[int, float | None]               # seed -> R² (None: undefined or missing)
    mean: float | None = None
    std: float | None = None
    fixed_lists: bool = False
    n_seeds: int = 0
    ci: tuple[float | None, float | None] = (None, None)
    records: list[dict] = field(default_factory=list)


def _finite(x: Any) -> bool:
    return _is_num(x) and math.isfinite(x)


def _mean(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if _finite(x)]
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
            blk = _dig(rec, ("scorings", scoring, set_name))
            v = _dig(blk, (predictor, "r2_uniform"))
            agg.values[s] = float(v) if _finite(v) else None
            if rec.get("seeds_vary_episodes") is False:
                agg.fixed_lists = True
            st = _dig(blk, ("stats",))
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
            ba, bb = _dig(ra, ("scorings", scoring, set_name)), _dig(rb, ("scorings", scoring, set_name))
            va, vb = _dig(ba, ("probe", "r2_uniform")), _dig(bb, ("probe", "r2_uniform"))
            sa, sb = _dig(ba, ("stats",)), _dig(bb, ("stats",))
            if sa is None or sb is None or not _finite(va) or not _finite(vb):
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
        if _is_num(npar.get("tokenizer")) and _is_num(npar.get("dynamics")):
            return int(npar["tokenizer"]) + int(npar["dynamics"])
    return None


# ============================================================================ labels

def _is_dmcontrol(v: dict) -> bool:
    init = v.get("init_from")
    return init == "dmcontrol" or isinstance(init, dict)


def variant_label(v: dict, table: str) -> str:
    """Row label of a variant in the verbatim paper tables (`table` = "probe" or "rollout").

    The four archive-named variants get the archive's labels; others take `label` from the tables
    config, else one derived in the paper's style with "(leak-free aux)", "(agent reads frame)" and
    "(no aux)" for a DMControl init without the aux head.
    """
    name = v["name"]
    fixed = PAPER_PROBE_LABELS if table == "probe" else PAPER_ROLLOUT_LABELS
    if name in fixed:
        return fixed[name]
    if v.get("label"):
        return str(v["label"])
    aux = float(v.get("aux_weight") or 0.0) > 0
    if "param_matched_276M" in name:
        base = "D4 param-matched 276M"
    elif _is_dmcontrol(v):
        base = "D4 + DMControl pretrain"
    else:
        base = "D4 dynamics" if (table == "probe" or not aux) else "D4"
    if aux:
        lam = f" λ={float(v['aux_weight']):g}" if (table == "probe" and base == "D4 dynamics") else ""
        base += f" + aux{lam}"
    elif _is_dmcontrol(v):
        base += " (no aux)"
    elif base == "D4 dynamics":
        base += " (scratch)"
    if aux and v.get("aux_input") == "action_free":
        base += " (leak-free aux)"
    if v.get("space_mode") == "agent_reads":
        base += " (agent reads frame)"
    if table == "probe":
        base += " (agent)"
    return base


# ============================================================================ table model + rendering

MISSING = ("missing",)


@dataclass
class Row:
    cells: list[tuple]
    extra: list[Any] = field(default_factory=list)   # CSV-only columns
    not_run: str | None = None                        # reason: cells after `n_label` become one message
    n_label: int = 1
    variant: str | None = None                        # for the archive's per-run extraction


@dataclass
class Table:
    key: str
    title: str
    caption: str
    header: list[str]
    align: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    extra_header: list[str] = field(default_factory=list)


def _num_str(x: float, nd: int, signed: bool) -> str:
    s = f"{x:+.{nd}f}" if signed else f"{x:.{nd}f}"
    if float(s) == 0.0:                                        # never print a negative zero
        s = ("+" if signed else "") + s.lstrip("+-")
    return s


def _sign_style(s: str, fmt: str) -> str:
    if fmt == "md":
        return s.replace("-", "\u2212")
    if fmt == "tex":
        return s.replace("-", "$-$")
    return s


def _fmt_num(x: Any, nd: int, signed: bool, fmt: str) -> str:
    if not _finite(x):
        return _missing(fmt)
    if fmt == "csv":
        return _num_str(float(x), 6, False)
    return _sign_style(_num_str(float(x), nd, signed), fmt)


def _missing(fmt: str) -> str:
    return {"md": "—", "tex": "---", "csv": ""}[fmt]


def _fmt_general(x: Any, fmt: str) -> str:
    """4 significant digits (degeneracy numbers span many orders of magnitude)."""
    if not _finite(x):
        return _missing(fmt)
    if fmt == "csv":
        return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))
    s = f"{float(x):.4g}"
    return _sign_style(s, fmt)


def fmt_params(n: Any, fmt: str) -> str:
    if not _is_num(n):
        return _missing(fmt)
    if fmt == "csv":
        return str(int(n))
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e6:.3f}M"


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"$<$",
                ">": r"$>$", "|": r"$|$"}
_TEX_UNICODE = {"Δ": r"$\Delta$", "→": r"$\to$", "−": "$-$", "²": "$^2$", "λ": r"$\lambda$", "±": r"$\pm$",
                "†": r"$^\dagger$", "‡": r"$^\ddagger$", "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$",
                "—": "---", "–": "--", "✓": "yes", "✗": "no", "·": r"$\cdot$", "δ": r"$\delta$",
                "σ": r"$\sigma$", "μ": r"$\mu$", "α": r"$\alpha$", "…": r"\dots{}", "’": "'", "‘": "`",
                "“": "``", "”": "''", "≈": r"$\approx$", "φ": r"$\varphi$", "ŷ": r"$\hat{y}$", "≠": r"$\neq$"}


def tex_escape(s: str) -> str:
    """Plain text -> pdflatex-safe ASCII (booktabs only; symbols as math)."""
    out = []
    for ch in str(s):
        if ch in _TEX_SPECIAL:
            out.append(_TEX_SPECIAL[ch])
        elif ch in _TEX_UNICODE:
            out.append(_TEX_UNICODE[ch])
        elif ord(ch) < 128:
            out.append(ch)
        else:
            out.append("?")
    return "".join(out)


def _text(s: str, fmt: str) -> str:
    s = " ".join(str(s).split())
    if fmt == "md":
        return s.replace("|", "\\|")
    if fmt == "tex":
        return tex_escape(s)
    return s


def render_cell(cell: tuple, fmt: str) -> str:
    kind = cell[0]
    if kind == "missing":
        return _missing(fmt)
    if kind == "text":
        return _text(cell[1], fmt)
    if kind == "r2":
        return _fmt_num(cell[1], 3, True, fmt)
    if kind == "psnr":
        return _fmt_num(cell[1], 2, False, fmt)
    if kind == "dpsnr":
        return _fmt_num(cell[1], 2, True, fmt)
    if kind == "num":
        return _fmt_general(cell[1], fmt)
    if kind == "std":
        if not _finite(cell[1]):
            return _missing(fmt)
        if fmt == "csv":
            return _fmt_num(cell[1], 3, False, fmt)
        return ("$\\pm$" if fmt == "tex" else "±") + _fmt_num(cell[1], 3, False, fmt)
    if kind == "params":
        return fmt_params(cell[1], fmt)
    if kind in ("ci_r2", "ci_psnr"):
        lo, hi = cell[1]
        if not (_finite(lo) and _finite(hi)):
            return _missing(fmt)
        nd = 3 if kind == "ci_r2" else 2
        return f"[{_fmt_num(lo, nd, True, fmt)}, {_fmt_num(hi, nd, True, fmt)}]"
    if kind in ("r2_ci", "dpsnr_ci"):
        x, (lo, hi) = cell[1], cell[2]
        if not _finite(x):
            return _missing(fmt)
        nd = 3 if kind == "r2_ci" else 2
        s = _fmt_num(x, nd, True, fmt)
        if _finite(lo) and _finite(hi):
            s += f" [{_fmt_num(lo, nd, True, fmt)}, {_fmt_num(hi, nd, True, fmt)}]"
        return s
    raise ValueError(f"unknown cell kind {kind!r}")


def _csv_extra(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _fmt_num(v, 6, False, "csv") if math.isfinite(v) else ""
    return str(v)


def _row_strings(table: Table, row: Row, fmt: str) -> list[str]:
    if row.not_run is not None:
        cells = [render_cell(c, fmt) for c in row.cells[:row.n_label]]
        msg = _text(f"not run: {row.not_run}", fmt)
        return cells + [msg] + [""] * (len(table.header) - row.n_label - 1)
    return [render_cell(c, fmt) for c in row.cells]


def footer_lines(files: Sequence[tuple[str, str]]) -> list[str]:
    return ["Inputs (sha256):"] + [f"{h}  {p}" for p, h in files]


def render_md(table: Table, files: Sequence[tuple[str, str]] | None, level: int = 2) -> str:
    out = [f"{'#' * level} {table.title}", "", _text(table.caption, "md"), ""]
    out.append("| " + " | ".join(table.header) + " |")
    out.append("|" + "|".join("---" for _ in table.header) + "|")
    for row in table.rows:
        out.append("| " + " | ".join(_row_strings(table, row, "md")) + " |")
    if table.notes:
        out.append("")
        out.extend(f"{n}  " if i < len(table.notes) - 1 else n for i, n in enumerate(table.notes))
    if files is not None:
        out += ["", "<details><summary>Inputs (sha256)</summary>", "", "```"]
        out += [f"{h}  {p}" for p, h in files]
        out += ["```", "", "</details>"]
    return "\n".join(out) + "\n"


def render_html(table: Table, level: int = 2) -> str:
    """One table as an HTML <section> (cells as in Markdown, escaped; for the Snakemake report)."""
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in table.header)
    body = []
    for row in table.rows:
        cells = [c.replace("\\|", "|") for c in _row_strings(table, row, "md")]
        if row.not_run is not None:
            tds = "".join(f"<td>{esc(c)}</td>" for c in cells[:row.n_label])
            tds += f'<td class="notrun" colspan="{len(table.header) - row.n_label}">{esc(cells[row.n_label])}</td>'
        else:
            tds = "".join(f"<td>{esc(c)}</td>" for c in cells)
        body.append(f"<tr>{tds}</tr>")
    notes = "".join(f"<p class=\"note\">{esc(n)}</p>" for n in table.notes)
    return (f'<section id="{esc(table.key)}"><h{level}>{esc(table.title)}</h{level}>'
            f"<p>{esc(' '.join(table.caption.split()))}</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{notes}</section>\n")


HTML_STYLE = ("body{font-family:sans-serif;font-size:13px;margin:1em;color:#222}"
              "table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #bbb;padding:2px 6px;"
              "text-align:left;white-space:nowrap}th{background:#eee}td.notrun{color:#777;font-style:italic}"
              "p.note{font-size:12px;color:#555;margin:.2em 0}")


def render_all_html(tables: Sequence[Table], inp: Inputs) -> str:
    """Every table on one self-contained HTML page (no scripts, no external resources)."""
    toc = "".join(f'<li><a href="#{html.escape(t.key)}">{html.escape(t.title)}</a></li>' for t in tables)
    files = "\n".join(f"{h}  {html.escape(p)}" for p, h in inp.files)
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Tables</title>"
            f"<style>{HTML_STYLE}</style></head><body><h1>Tables ({html.escape(PROTOCOL)})</h1>"
            "<p>Generated from the result records and training metrics only. † rows are quoted from the paper, "
            f"not recomputed.</p><ul>{toc}</ul>\n" + "".join(render_html(t) for t in tables)
            + f"<details><summary>Inputs (sha256)</summary><pre>{files}</pre></details></body></html>\n")


def render_csv(table: Table, files: Sequence[tuple[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(table.header + table.extra_header)
    for row in table.rows:
        extra = [_csv_extra(v) for v in row.extra] + [""] * (len(table.extra_header) - len(row.extra))
        w.writerow(_row_strings(table, row, "csv") + extra)
    buf.write("\n")
    for n in table.notes:
        buf.write("# " + " ".join(n.split()) + "\n")
    for line in footer_lines(files):
        buf.write("# " + line + "\n")
    return buf.getvalue()


def render_tex(table: Table, files: Sequence[tuple[str, str]]) -> str:
    out = [f"% {tex_escape(table.title)}",
           f"% generated by dreamer4_libero.reporting.tables ({PROTOCOL}); needs only booktabs",
           r"\begin{table}[ht]", r"\centering", r"\scriptsize",
           r"\caption{" + tex_escape(" ".join(table.caption.split())) + "}",
           r"\begin{tabular}{" + table.align + "}", r"\toprule",
           " & ".join(tex_escape(h) for h in table.header) + r" \\", r"\midrule"]
    ncol = len(table.header)
    for row in table.rows:
        if row.not_run is not None:
            cells = [render_cell(c, "tex") for c in row.cells[:row.n_label]]
            msg = tex_escape(f"not run: {row.not_run}")
            cells.append(r"\multicolumn{" + str(ncol - row.n_label) + "}{l}{" + msg + "}")
            out.append(" & ".join(cells) + r" \\")
        else:
            out.append(" & ".join(_row_strings(table, row, "tex")) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if table.notes:
        out.append(r"\par\smallskip")
        out += [tex_escape(" ".join(n.split())) + r"\par" for n in table.notes]
    out.append(r"\end{table}")
    out += ["% " + line for line in footer_lines(files)]
    return "\n".join(out) + "\n"


# ============================================================================ table builders

def _not_run_row(display: str, reason: str, n_cols_label: int, label_cells: list[tuple] | None = None,
                 variant: str | None = None) -> Row:
    """A variant that was not run: label cells, then one "not run: <reason>" cell, never numbers."""
    cells = label_cells or [("text", display)] + [MISSING] * (n_cols_label - 1)
    return Row(cells=cells, not_run=reason, n_label=n_cols_label, variant=variant,
               extra=["not_run", variant or display])


def _model_name(v: dict) -> str:
    return v["name"] + (" ‡" if v.get("stand_in_for") else "")


def run_variants(inp: "Inputs", rows: list) -> Iterator[dict]:
    """The variants that ran, in table order; each one that did not gets its two-label-cell not-run row in `rows`."""
    for v in inp.variants:
        reason = inp.not_run_reason(v["name"])
        if reason is None:
            yield v
        else:
            rows.append(_not_run_row(_model_name(v), reason, 2, [("text", _model_name(v)), MISSING], variant=v["name"]))


def _variant_notes(variants: Sequence[dict]) -> list[str]:
    """Stand-in notes (‡), then which DMControl weights each initialised variant loaded."""
    return ([f"‡ {v['name']} is a stand-in: {v['stand_in_for']}" for v in variants if v.get("stand_in_for")]
            + [f"{v['name']}: {v['init_note']}" for v in variants if v.get("init_note") and v.get("runnable")])


def _n_tasks(recs: Sequence[dict], set_name: str) -> int | None:
    for r in recs:
        n = _dig(r, ("n", set_name, "tasks"))
        if _is_num(n):
            return int(n)
    return None


def build_table1(inp: Inputs, pv: ProbeView) -> Table:
    seeds = inp.seeds
    header = list(HEADER_TABLE1)
    header[3] = f"± std ({len(seeds)} seeds)"
    extra_header = (["status", "variant", "feature", "space_mode", "extraction", "probe_mode", "H", "scoring",
                     "n_seeds"] + [f"heldout_r2_seed{s}" for s in seeds] + ["ci_task_lo", "ci_task_hi"]
                    + [f"seen_r2_seed{s}" for s in seeds] + ["n_params", "archived"])
    rows, all_recs = [], []
    for v in run_variants(inp, rows):
        name = v["name"]
        params = n_params_of(inp, name)
        for feat in WM_FEATURES:
            held = pv.cell(name, feat, "past_actions", "policy", 1, "all_valid", TEST)
            seen = pv.cell(name, feat, "past_actions", "policy", 1, "all_valid", TRAIN, ci=False)
            all_recs += held.records
            std_cell = ("text", "n/a (fixed lists)") if held.fixed_lists else ("std", held.std)
            archived = ARCHIVED_R2.get(name) if feat == "wm_agent" else None
            space = next((r.get("space_mode") for r in held.records if r.get("space_mode")), v.get("space_mode"))
            cells = [("text", _model_name(v)), ("text", feat), ("r2", held.mean), std_cell, ("ci_r2", held.ci),
                     ("r2", seen.mean), ("params", params), ("r2", archived) if archived is not None else MISSING,
                     ("text", flag_text(held.records)) if held.records else MISSING]
            extra = (["ok" if held.records else "missing", name, feat, space, "past_actions", "policy", 1, "all_valid",
                      held.n_seeds] + [held.values.get(s) for s in seeds] + list(held.ci)
                     + [seen.values.get(s) for s in seeds] + [params, archived])
            rows.append(Row(cells, extra, variant=name))
    for model, _label, r2, params in QUOTED_PROBE:
        cells = [("text", model + " " + DAGGER), ("text", "—"), ("r2", r2), MISSING, MISSING, MISSING,
                 ("text", params), MISSING, ("text", "")]
        rows.append(Row(cells, ["quoted", model, None, None, None, None, 1, None, None] + [None] * len(seeds)
                        + [None, None] + [None] * len(seeds) + [None, None]))
    n_t = _n_tasks(all_recs, TEST)
    caption = (f"Action probe on probe-eval-test (task-OOD{f', {n_t} held-out tasks' if n_t else ''}), H = 1, "
               f"policy mode, past_actions extraction, all_valid frames, mean of {len(seeds)} probe seeds. "
               "± std is the spread over probe seeds (ddof = 1): probe/sampling variance, not training variance "
               "(one world-model training run per variant); it is not the uncertainty of a held-out-task number. "
               f"95% CI = task-level cluster bootstrap (ci_task), {len(seeds)} × B = {len(seeds)} × {inp.B} "
               "replicates "
               "pooled over seeds. Held-out-task R² depends on how many tasks are held out (biased low with few "
               "tasks, and so is the bootstrap). Seen-task R² on probe-eval-train (episodes the world model "
               "was trained on, unseen by the probe). Params = tokenizer + dynamics, aux head excluded. "
               "Archived = the published archive's value for the agent-token row (wm_agent). "
               "Flags per evaluation.md §1.9.")
    notes = [QUOTED_NOTE] + _variant_notes(inp.variants)
    return Table("table1_probe", "Table 1 — Action probe (extended)", caption, header, "llrlrrrrl", rows, notes,
                 extra_header)


def _rollout_row(rec: dict | None, row: str, set_name: str = "test_ood") -> dict | None:
    return _dig(rec, ("sets", set_name, "rows", row)) if rec else None


def _tok_psnr(rec: dict | None, key: str = "tok_psnr_frame_mean", set_name: str = "test_ood_rollout_list"):
    return _dig(rec, ("sets", set_name, key)) if rec else None


def _study_tokenizer(inp: Inputs) -> dict | None:
    run = inp.config.get("tokenizer_run")
    if run and run in inp.tokenizer:
        return inp.tokenizer[run]
    if not run and len(inp.tokenizer) == 1:
        return next(iter(inp.tokenizer.values()))
    return None


def _reference_rollout(inp: Inputs) -> tuple[str | None, dict | None]:
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
        bins = _dig(rec, ("sets", set_name, "delta_copy_last_bins")) if rec else None
        if isinstance(bins, list) and bins and all(isinstance(_dig(b, ("frames",)), list) for b in bins):
            return [tuple(int(x) for x in b["frames"]) for b in bins]
        if rec and horizon is None and _is_num(rec.get("horizon")):
            horizon = int(rec["horizon"])
    return horizon_bins(horizon or 24)


def bin_delta(rec: dict | None, key: str, frames: tuple[int, int], set_name: str = "test_ood") -> dict:
    """{"mean", "ci"} of one bin of `delta_copy_last_bins` / `delta_action_bins` ({} if absent: older records)."""
    found = _dig(rec, ("sets", set_name, key)) if rec else None
    for b in found if isinstance(found, list) else []:
        if isinstance(b, dict) and tuple(b.get("frames") or ()) == tuple(frames):
            return b
    return {}


def frames_label(frames: tuple[int, int]) -> str:
    return f"frames {frames[0]}–{frames[1]}" if frames[0] != frames[1] else f"frame {frames[0]}"


def bin_extra_header(bins: Sequence[tuple[int, int]]) -> list[str]:
    return [f"{k}_f{a}_{b}{suf}" for k in ("delta_copy_last", "delta_action") for a, b in bins
            for suf in ("", "_ci_lo", "_ci_hi")]


def bin_extra(rec: dict | None, bins: Sequence[tuple[int, int]]) -> list:
    out = []
    for k in ("delta_copy_last_bins", "delta_action_bins"):
        for fr in bins:
            d = bin_delta(rec, k, fr)
            out += [d.get("mean"), *(d.get("ci") or [None, None])]
    return out


def build_table2(inp: Inputs) -> Table:
    tok = _study_tokenizer(inp)
    bins = study_bins(inp)
    last = bins[-1]
    header = list(HEADER_TABLE2)
    header[5] = f"Δ vs copy-last, {frames_label(last)} (dB)"
    extra_header = ["status", "variant", "psnr_frame_mean_ci_lo", "psnr_frame_mean_ci_hi", "psnr_pooled_h16",
                    "delta_copy_last_ci_lo", "delta_copy_last_ci_hi", "delta_action_ci_lo", "delta_action_ci_hi",
                    "n_windows", "tokenizer_source", "n_params", "archived_rollout"] + bin_extra_header(bins)
    rows = []
    for v in inp.variants:
        name = v["name"]
        reason = inp.not_run_reason(name)
        if reason is not None:
            rows.append(_not_run_row(_model_name(v), reason, 1, variant=name))
            continue
        rec = inp.rollout.get(name)
        own_tok = (rec or {}).get("tokenizer_eval")
        tok_val = _tok_psnr(own_tok) if own_tok else _tok_psnr(tok)
        m = _rollout_row(rec, "model") or {}
        test = _dig(rec, ("sets", "test_ood")) or {}
        dcl, dact = test.get("delta_copy_last") or {}, test.get("delta_action") or {}
        dlast = bin_delta(rec, "delta_copy_last_bins", last)
        params = n_params_of(inp, name)
        archived = ARCHIVED_ROLLOUT.get(name)
        ci = m.get("ci") or [None, None]
        cells = [("text", _model_name(v)), ("psnr", tok_val), ("psnr", m.get("psnr_frame_mean")),
                 ("psnr", m.get("psnr_pooled")), ("dpsnr_ci", dcl.get("mean"), tuple(dcl.get("ci") or (None, None))),
                 ("dpsnr_ci", dlast.get("mean"), tuple(dlast.get("ci") or (None, None))),
                 ("dpsnr_ci", dact.get("mean"), tuple(dact.get("ci") or (None, None))), ("params", params),
                 ("psnr", archived) if archived is not None else MISSING]
        extra = ["ok" if rec else "missing", name, ci[0], ci[1], m.get("psnr_pooled_h16"),
                 *(dcl.get("ci") or [None, None]), *(dact.get("ci") or [None, None]), test.get("n_windows"),
                 "own (rollout record)" if own_tok else "study tokenizer", params, archived, *bin_extra(rec, bins)]
        rows.append(Row(cells, extra, variant=name))
    ref_name, ref = _reference_rollout(inp)
    cl, ceil = _rollout_row(ref, "copy_last_context") or {}, _rollout_row(ref, "tokenizer_ceiling") or {}
    tok_params = next((int(r["n_params"]["tokenizer"]) for r in [ref or {}] + list(inp.probe.values())
                       if _is_num(_dig(r, ("n_params", "tokenizer")))), None)
    rows.append(Row([("text", "copy-last-context frame"), MISSING, ("psnr", cl.get("psnr_frame_mean")),
                     ("psnr", cl.get("psnr_pooled")), MISSING, MISSING, MISSING, MISSING, MISSING],
                    ["reference", "copy_last_context", *(cl.get("ci") or [None, None]), cl.get("psnr_pooled_h16"),
                     None, None, None, None, None, None, None, None]))
    rows.append(Row([("text", "tokenizer reconstruction ceiling"), ("psnr", _tok_psnr(tok)),
                     ("psnr", ceil.get("psnr_frame_mean")), ("psnr", ceil.get("psnr_pooled")), MISSING, MISSING,
                     MISSING, ("params", tok_params), MISSING],
                    ["reference", "tokenizer_ceiling", *(ceil.get("ci") or [None, None]), ceil.get("psnr_pooled_h16"),
                     None, None, None, None, None, "study tokenizer", tok_params, None]))
    # issue 27: the same round trip in independent chunks of the tokenizer's training length ("—" in older records)
    chk = _rollout_row(ref, "tokenizer_ceiling_chunked") or {}
    n_chunk = _dig(ref, ("sets", "test_ood", "ceiling_chunk"))
    rows.append(Row([("text", "tokenizer reconstruction ceiling, chunks of "
                      + (f"{n_chunk} frames (its training length)" if n_chunk else "its training length")),
                     MISSING, ("psnr", chk.get("psnr_frame_mean")), ("psnr", chk.get("psnr_pooled")), MISSING, MISSING,
                     MISSING, ("params", tok_params) if chk else MISSING, MISSING],
                    ["reference", "tokenizer_ceiling_chunked", *(chk.get("ci") or [None, None]),
                     chk.get("psnr_pooled_h16"), None, None, None, None, None, "study tokenizer",
                     tok_params if chk else None, None]))
    masked = _tok_psnr(tok, "tok_psnr_masked_train_style")
    caption = ("World-model quality on the LIBERO test_ood rollout windows: 8 context → 24 predicted frames, "
               "K = 4 shortcut steps, common random numbers across variants. Tokenizer PSNR = tok_psnr_frame_mean "
               "(all frames, no masking). Rollout PSNR = psnr_frame_mean (mean of per-frame PSNR, headline); "
               "Pooled PSNR = psnr_pooled (10·log10 of 1/mean MSE; ≤ frame mean). The Δ columns use "
               f"psnr_frame_mean with paired episode-bootstrap 95% CIs; Δ vs copy-last, {frames_label(last)} is the "
               "same difference over the last third of the predicted frames only (copy-last is strongest at short "
               "horizons; the CSV has every third, the power table too; — for records without per-bin deltas). "
               "Archived rollout values are compared with "
               "Pooled PSNR; the archive's convention is not stated. Reference rows are on the same windows "
               f"(from {ref_name or '—'}'s rollout record); the tokenizer ceiling encodes and decodes the 32-frame "
               "window in one call (as the published world models do), its chunked row in independent chunks "
               "of the tokenizer's training length.")
    notes = [f"Archived tokenizer PSNR: {ARCHIVED_TOKENIZER_PSNR:.2f} dB (convention not stated; possibly the "
             "masked-patch train-style PSNR of §3"
             + (f", which is {masked:.2f} dB for our tokenizer)." if _finite(masked) else ").")]
    notes += _variant_notes(inp.variants)
    return Table("table2_quality", "Table 2 — World-model quality (extended)", caption, header,
                 "lrrrrrrrr", rows, notes, extra_header)


def _paper_order(inp: Inputs) -> list[dict]:
    """The four archive rows (archive order), then our other variants in config order."""
    out = []
    for name in ARCHIVE_VARIANTS:
        out.append(inp.variant(name) or {"name": name, "runnable": False, "not_run_reason": "not in the tables config"})
    out += [v for v in inp.variants if v["name"] not in ARCHIVE_VARIANTS]
    return out


def _reason(inp: Inputs, v: dict) -> str | None:
    if inp.variant(v["name"]) is None:
        return v.get("not_run_reason") or "not in the tables config"
    return inp.not_run_reason(v["name"])


def _variant_row_notes(rows_vs: Sequence[tuple[dict, str]]) -> list[str]:
    return ([f"Row “{label}” is filled by a stand-in: {v['stand_in_for']}" for v, label in rows_vs
             if v.get("stand_in_for")]
            + [f"Row “{label}”: {v['init_note']}" for v, label in rows_vs if v.get("init_note") and v.get("runnable")])


def build_paper_probe(inp: Inputs, pv: ProbeView) -> Table:
    header = list(HEADER_PAPER_PROBE)
    header[2] = f"test R² (action probe, H=1, mean of {len(inp.seeds)} seeds)"
    rows, labelled = [], []
    for v in _paper_order(inp):
        label = variant_label(v, "probe")
        labelled.append((v, label))
        reason = _reason(inp, v)
        if reason is not None:
            rows.append(_not_run_row(label, reason, 1, variant=v["name"]))
            continue
        agg = pv.cell(v["name"], "wm_agent", "past_actions", "policy", 1, "all_valid", TEST, ci=False)
        rows.append(Row([("text", label), ("params", n_params_of(inp, v["name"])), ("r2", agg.mean)],
                        ["ok" if agg.records else "missing", v["name"], agg.n_seeds], variant=v["name"]))
    for _model, label, r2, params in QUOTED_PROBE:
        rows.append(Row([("text", label + " " + DAGGER), ("text", params), ("r2", r2)], ["quoted", None, None]))
    caption = ("Verbatim layout of the published archive's probe table, filled with our numbers: probe-eval-test "
               "(held-out tasks), H = 1, policy mode, past_actions extraction, wm_agent (agent-token) features, "
               f"mean of {len(inp.seeds)} probe seeds. The archive's values for the first four rows are −0.039, "
               "−0.039, −0.040, −0.036 (Table 1, column Archived).")
    notes = [QUOTED_NOTE] + _variant_row_notes(labelled)
    return Table("paper_table_probe", "Paper table — action probe (verbatim layout)", caption, header, "lrr", rows,
                 notes, ["status", "variant", "n_seeds"])


def build_paper_rollout(inp: Inputs) -> Table:
    rows, labelled = [], []
    for v in _paper_order(inp):
        label = variant_label(v, "rollout")
        labelled.append((v, label))
        reason = _reason(inp, v)
        if reason is not None:
            rows.append(_not_run_row(label, reason, 1, variant=v["name"]))
            continue
        m = _rollout_row(inp.rollout.get(v["name"]), "model") or {}
        rows.append(Row([("text", label), ("psnr", m.get("psnr_pooled"))],
                        ["ok" if m else "missing", v["name"], m.get("psnr_frame_mean")], variant=v["name"]))
    caption = ("Verbatim layout of the published archive's rollout table, filled with our numbers: rollout PSNR "
               "on the LIBERO test_ood windows (8 → 24 frames), psnr_pooled (the archive's convention is not "
               "stated; pooled is what the upstream trainer logs). The archive's values for the first four rows "
               "are 13.41, 13.41, 10.28, 13.05 dB (Table 2, column Archived rollout).")
    return Table("paper_table_rollout", "Paper table — rollout PSNR (verbatim layout)", caption,
                 list(HEADER_PAPER_ROLLOUT), "lr", rows, _variant_row_notes(labelled),
                 ["status", "variant", "psnr_frame_mean"])


def _baseline_features(inp: Inputs) -> list[str]:
    present = {k[1] for k in inp.probe if k[0] == BASELINES}
    return [f for f in BASELINE_FEATURES if f in present] + sorted(present - set(BASELINE_FEATURES))


def _wm_features(inp: Inputs, name: str) -> list[str]:
    present = {k[1] for k in inp.probe if k[0] == name}
    return list(WM_FEATURES) + sorted(present - set(WM_FEATURES))


def _extractions(inp: Inputs, name: str) -> list[str]:
    present = {k[2] for k in inp.probe if k[0] == name}
    return list(EXTRACTIONS) + sorted(present - set(EXTRACTIONS))


def _sections(inp: Inputs) -> list[tuple[str, int]]:
    """(probe_mode, H) pairs that have at least one record, in mode then H order."""
    present = {(k[3], k[4]) for k in inp.probe}
    modes = list(PROBE_MODES) + sorted({m for m, _ in present} - set(PROBE_MODES))
    Hs = sorted(set(inp.H_list) | {h for _, h in present})
    return [(m, h) for m in modes for h in Hs if (m, h) in present]


def build_controls(inp: Inputs, pv: ProbeView) -> Table:
    seeds = inp.seeds
    header = ["Model", "Features", "Extraction", "Mode", "H", "Held-out-task R²", f"± std ({len(seeds)} seeds)",
              "95% CI", "Seen-task R²", "Δ vs lagged_actions (paired 95% CI)", "Flag"]
    extra_header = (["status", "row_kind", "variant", "feature", "extraction", "probe_mode", "H", "scoring", "n_seeds"]
                    + [f"heldout_r2_seed{s}" for s in seeds] + ["ci_task_lo", "ci_task_hi", "label_shuffle_r2",
                                                                "delta_lagged", "delta_lagged_ci_lo",
                                                                "delta_lagged_ci_hi"])
    rows = []
    bfeats = _baseline_features(inp)

    def feature_row(model, variant, feat, extraction, mode, H, predictor="probe", kind="feature", delta=False):
        held = pv.cell(variant, feat, extraction, mode, H, "common_Hmax", TEST, predictor)
        seen = pv.cell(variant, feat, extraction, mode, H, "common_Hmax", TRAIN, predictor, ci=False)
        shuf = pv.cell(variant, feat, extraction, mode, H, "common_Hmax", TEST, "label_shuffle", ci=False)
        std_cell = ("text", "n/a (fixed lists)") if held.fixed_lists else ("std", held.std)
        d_cell, d = MISSING, (None, (None, None))
        if delta:
            mean, ci, status = pv.paired_diff((variant, feat, extraction, mode, H),
                                              (BASELINES, "lagged_actions", "none", mode, H), "common_Hmax", TEST)
            d = (mean, ci)
            d_cell = ("r2_ci", mean, ci) if mean is not None else (("text", status) if status else MISSING)
        flags = ("text", flag_text(held.records)) if (held.records and predictor == "probe") else MISSING
        feat_txt = feat if kind != "control" else "—"
        cells = [("text", model), ("text", feat_txt), ("text", extraction), ("text", mode), ("text", str(H)),
                 ("r2", held.mean), std_cell, ("ci_r2", held.ci), ("r2", seen.mean), d_cell, flags]
        extra = (["ok" if held.records else "missing", kind, variant, feat, extraction, mode, H, "common_Hmax",
                  held.n_seeds] + [held.values.get(s) for s in seeds] + list(held.ci)
                 + [shuf.mean if predictor == "probe" else None, d[0], d[1][0], d[1][1]])
        return Row(cells, extra, variant=variant if variant != BASELINES else None)

    for mode, H in _sections(inp):
        # controls of the SETBLOCKs: from the lagged_actions records, else the first record in a fixed order
        src = None
        cands = ([(BASELINES, f, "none") for f in bfeats]
                 + [(v["name"], f, e) for v in inp.variants for f in _wm_features(inp, v["name"])
                    for e in _extractions(inp, v["name"])])
        for c in cands:
            if pv.has(*c, mode, H):
                src = c
                break
        for ctl in CONTROLS:
            if src is None:
                continue
            label = ctl if ctl != "label_shuffle" else f"label_shuffle (on {src[1]} features)"
            rows.append(feature_row(label, src[0], src[1], src[2], mode, H, predictor=ctl, kind="control"))
            rows[-1].cells[2] = ("text", "—" if ctl != "label_shuffle" else src[2])
        for f in bfeats:
            rows.append(feature_row("baseline", BASELINES, f, "none", mode, H))
        for v in inp.variants:
            if inp.not_run_reason(v["name"]) is not None:
                continue
            for f in _wm_features(inp, v["name"]):
                for e in _extractions(inp, v["name"]):
                    if f not in WM_FEATURES and not pv.has(v["name"], f, e, mode, H):
                        continue
                    if e not in EXTRACTIONS and not pv.has(v["name"], f, e, mode, H):
                        continue
                    rows.append(feature_row(_model_name(v), v["name"], f, e, mode, H, delta=True))
    for v in inp.variants:
        reason = inp.not_run_reason(v["name"])
        if reason is not None:
            r = _not_run_row(_model_name(v), reason, 5, [("text", _model_name(v))] + [MISSING] * 4, variant=v["name"])
            r.extra = ["not_run", "variant", v["name"]]
            rows.append(r)
    caption = ("Controls and baselines beside every world-model row, all on the common_Hmax frame set (frames "
               "valid for the largest configured H, so rows and paired resamples compare the same frames); both "
               "probe modes (policy: features from o_≤t, a_<t; idm: also o_t+1) and both extraction modes. "
               "Held-out = probe-eval-test (task-OOD), seen = probe-eval-train. train_mean, label_shuffle and "
               "copy_prev are the controls stored with each record (§1.8). Δ vs lagged_actions = R²(row) − "
               "R²(lagged_actions), paired task-then-episode resamples pooled over seeds: a past_actions result is "
               "evidence of world-model action information only if this CI excludes 0 from above; otherwise "
               "cite video_only. video_only (every action token nulled) is off-distribution for models trained "
               "with actions. ± std = probe-seed spread (probe/sampling variance, not training variance); held-out "
               "R² depends on the number of held-out tasks.")
    return Table("controls", "Controls", caption, header, "lllllrlrrll", rows, _variant_notes(inp.variants),
                 extra_header)


DEGEN_KEYS = ("total_variance", "relative_variation", "n_nonconstant", "effective_rank", "time_explained",
              "episode_specificity", "in_sample_r2", "cv_r2")


def build_degeneracy(inp: Inputs) -> Table:
    header = ["Model", "Features", "Extraction", "Total variance", "Relative variation", "Non-constant columns",
              "Effective rank", "Time-explained variance", "Episode specificity", "In-sample R²", "Grouped-CV R²",
              "Flag", "Reasons"]
    extra_header = ["status", "variant", "feature", "extraction", "probe_mode", "H", "n_seeds"]
    rows = []

    def drow(model, variant, feat, ext):
        recs = [inp.probe.get((variant, feat, ext, "policy", 1, s)) for s in inp.seeds]
        recs = [r for r in recs if r is not None]
        vals = {k: _mean([_dig(r, ("degeneracy", k)) for r in recs]) for k in DEGEN_KEYS}
        # the same criterion fires in several seeds with slightly different numbers: list each once (first seed's text)
        seen, reasons = set(), []
        for r in recs:
            for x in _dig(r, ("degeneracy", "reasons")) or []:
                key = re.sub(r"[-+]?\d[\d.e+-]*", "#", str(x))
                if key not in seen:
                    seen.add(key)
                    reasons.append(f"{x} (seed {r['seed']})" if len(recs) > 1 else str(x))
        cells = [("text", model), ("text", feat), ("text", ext)]
        for k in DEGEN_KEYS:
            cells.append(("r2", vals[k]) if k in ("in_sample_r2", "cv_r2") else ("num", vals[k]))
        cells += [("text", flag_text(recs)) if recs else MISSING, ("text", "; ".join(reasons)) if recs else MISSING]
        return Row(cells, ["ok" if recs else "missing", variant, feat, ext, "policy", 1, len(recs)],
                   variant=variant if variant != BASELINES else None)

    for v in inp.variants:
        reason = inp.not_run_reason(v["name"])
        if reason is not None:
            rows.append(_not_run_row(_model_name(v), reason, 3, [("text", _model_name(v)), MISSING, MISSING],
                                     variant=v["name"]))
            continue
        for f in _wm_features(inp, v["name"]):
            for e in _extractions(inp, v["name"]):
                if (f in WM_FEATURES and e in EXTRACTIONS) or pv_has_any(inp, v["name"], f, e):
                    rows.append(drow(_model_name(v), v["name"], f, e))
    for f in _baseline_features(inp):
        rows.append(drow("baseline", BASELINES, f, "none"))
    caption = ("Feature-degeneracy diagnostic (§1.9) on probe-train, computed on the X given to ridge (after PCA "
               "and standardisation; relative variation on raw X), policy mode, H = 1 records, mean over probe "
               "seeds. DEGENERATE: < 2 non-constant columns, effective rank < 1.5, relative variation < 1e-6, "
               "episode specificity < 1e-3, in-sample R² < 0.02, or time explains > 99 % of the variance. "
               "NO-SIGNAL: held-out R² ≤ train_mean's + 0.02. LEAK?: a leak test failed, idm < policy − 0.02, "
               "or H = 2 beats H = 1 by more than its CI. Flags shown with the number of seeds that set them when "
               "not all did.")
    return Table("degeneracy", "Degeneracy", caption, header, "lllrrrrrrrrll", rows, _variant_notes(inp.variants),
                 extra_header)


def pv_has_any(inp: Inputs, variant: str, feat: str, ext: str) -> bool:
    return any(k[:3] == (variant, feat, ext) for k in inp.probe)


# ---------------------------------------------------------------------------- quality bars

def ema(values: Sequence[float], decay: float = EMA_DECAY) -> list[float]:
    """EMA started at the first value: e_0 = x_0, e_i = decay·e_{i−1} + (1 − decay)·x_i."""
    out, e = [], None
    for x in values:
        e = float(x) if e is None else decay * e + (1.0 - decay) * float(x)
        out.append(e)
    return out


def loss_smoothness(records: Sequence[dict], key: str = "loss") -> dict:
    """The §4 'smooth loss curves' bar (a heuristic).

    Pass iff: no NaN/Inf (a logged null is a non-finite value: metrics.jsonl stores them as null);
    EMA(0.99) at the last point < EMA at the last point of the first 5 % of logged points; and from
    the first point after that 5 % on, the EMA never exceeds 1.5 × its running minimum.
    """
    pts = [r[key] for r in records if key in r]
    if not pts:
        return {"result": None, "value": "no logged loss", "n": 0}
    bad = sum(1 for x in pts if x is None or not _is_num(x) or not math.isfinite(x))
    if bad:
        return {"result": False, "value": f"{bad} NaN/Inf of {len(pts)} logged points", "n": len(pts)}
    if len(pts) < 2:
        return {"result": None, "value": "fewer than 2 logged points", "n": len(pts)}
    e = ema(pts)
    n5 = max(1, math.ceil(0.05 * len(pts)))
    e5, e_end = e[n5 - 1], e[-1]
    run_min, worst = e[0], 0.0
    for i, x in enumerate(e):
        run_min = min(run_min, x)
        if i >= n5 and run_min > 0:
            worst = max(worst, x / run_min)
    ok = (e_end < e5) and worst <= 1.5
    return {"result": bool(ok), "n": len(pts), "ema_end": e_end, "ema_5pct": e5, "max_ratio": worst,
            "value": f"EMA end {e_end:.4g} vs {e5:.4g} at 5%; max EMA/running min {worst:.3f}"}


def aux_mse_drop(records: Sequence[dict], key: str = "train/aux_mse") -> dict:
    """The §4 aux bar: mean of the last 10 % of logged points ≤ 0.8 × mean of the first 5 % (≥ 10 points)."""
    pts = [r[key] for r in records if key in r]
    if any(x is None or not _is_num(x) or not math.isfinite(x) for x in pts):
        return {"result": False, "value": "NaN/Inf in the aux MSE", "n": len(pts)}
    if len(pts) < 10:
        return {"result": None, "value": f"n/a ({len(pts)} logged points, needs ≥ 10)", "n": len(pts)}
    first = float(np.mean(pts[:max(1, math.ceil(0.05 * len(pts)))]))
    last = float(np.mean(pts[-max(1, math.ceil(0.10 * len(pts))):]))
    return {"result": bool(last <= 0.8 * first), "n": len(pts), "first5": first, "last10": last,
            "value": f"last 10% {last:.4g} vs 0.8 × first 5% = {0.8 * first:.4g}"}


def _mark(result: bool | None, na: str = "n/a") -> tuple:
    return ("text", "✓" if result else "✗") if result is not None else ("text", na)


def _smooth_bar(inp: Inputs, name: str) -> dict:
    run = inp.train.get(name)
    sm = loss_smoothness(run.metrics) if run and run.has_metrics else None
    return {"run": name, "bar": "smooth loss curve (heuristic)",
            "threshold": "no NaN/Inf; EMA end < EMA at 5%; EMA ≤ 1.5 × running min",
            "value": sm["value"] if sm else None, "result": sm["result"] if sm else None, "missing": sm is None}


def quality_bars(inp: Inputs) -> list[dict]:
    """Every bar of §4 as {run, bar, threshold, value, result (True/False/None: n/a), missing} or {run, not_run}."""
    out = []
    tok_run = inp.config.get("tokenizer_run")
    tok = _study_tokenizer(inp)
    if tok_run or tok:
        name = tok_run or (tok or {}).get("run")
        v = _tok_psnr(tok)
        out.append({"run": name, "bar": "tokenizer PSNR (tok_psnr_frame_mean, test_ood rollout list)",
                    "threshold": f"≥ {TOK_PSNR_BAR:.0f} dB", "value": f"{v:.2f} dB" if _finite(v) else None,
                    "result": None if not _finite(v) else bool(v >= TOK_PSNR_BAR), "missing": not _finite(v)})
        out.append(_smooth_bar(inp, name))
    for v in inp.variants:
        name = v["name"]
        reason = inp.not_run_reason(name)
        if reason is not None:
            out.append({"run": name, "not_run": reason})
            continue
        m = _rollout_row(inp.rollout.get(name), "model") or {}
        cl = _rollout_row(inp.rollout.get(name), "copy_last_context") or {}
        pooled, fm, clm = m.get("psnr_pooled"), m.get("psnr_frame_mean"), cl.get("psnr_frame_mean")
        out.append({"run": name, "bar": "rollout psnr_pooled", "threshold": f"≥ {ROLLOUT_POOLED_BAR:.0f} dB",
                    "value": f"{pooled:.2f} dB" if _finite(pooled) else None,
                    "result": bool(pooled >= ROLLOUT_POOLED_BAR) if _finite(pooled) else None,
                    "missing": not _finite(pooled)})
        both = _finite(fm) and _finite(clm)
        out.append({"run": name, "bar": "rollout psnr_frame_mean > copy-last-context",
                    "threshold": f"> {clm:.2f} dB" if _finite(clm) else "> copy-last",
                    "value": f"{fm:.2f} dB" if _finite(fm) else None,
                    "result": bool(fm > clm) if both else None, "missing": not both})
        out.append(_smooth_bar(inp, name))
        run = inp.train.get(name)
        if float(v.get("aux_weight") or 0.0) > 0:
            am = aux_mse_drop(run.metrics) if run and run.has_metrics else None
            out.append({"run": name, "bar": "aux head MSE drops", "threshold": "last 10% ≤ 0.8 × first 5%",
                        "value": am["value"] if am else None, "result": am["result"] if am else None,
                        "missing": am is None})
        else:
            out.append({"run": name, "bar": "aux head MSE drops", "threshold": "last 10% ≤ 0.8 × first 5%",
                        "value": "no aux head", "result": None, "missing": False})
    return out


def build_quality_bars(inp: Inputs) -> Table:
    header = ["Run", "Bar", "Threshold", "Value", "Pass"]
    rows = []
    for b in quality_bars(inp):
        if "not_run" in b:
            r = _not_run_row(b["run"], b["not_run"], 1, variant=b["run"])
            r.extra = ["not_run", "not run"]
            rows.append(r)
            continue
        res = MISSING if b.get("missing") else _mark(b["result"])
        rows.append(Row([("text", b["run"]), ("text", b["bar"]), ("text", b["threshold"]),
                         ("text", b["value"]) if b["value"] is not None else MISSING, res],
                        ["ok", {True: "pass", False: "fail", None: "n/a"}[b["result"]] if not b.get("missing")
                         else "missing"], variant=b["run"]))
    caption = ("Quality bars from our numbers (§4): tokenizer tok_psnr_frame_mean ≥ 25 dB; rollout psnr_pooled ≥ "
               "18 dB (the archive's DIFF-baseline bar; convention as in §2) and psnr_frame_mean above "
               "copy-last-context's; smooth loss curves (heuristic: no NaN/Inf, EMA(0.99) of the logged loss at "
               "the end below its value at 5 % of the logged points, and after those 5 % the EMA never above 1.5 × "
               "its running minimum); aux-head MSE (train/aux_mse) mean over the last 10 % of logged points ≤ 0.8 × "
               "mean over the first 5 % (at least 10 points; n/a without an aux head). Training curves read from "
               "results/train/<run>/metrics.jsonl.")
    return Table("quality_bars", "Quality bars", caption, header, "lllll", rows, [], ["status", "outcome"])


# ============================================================================ plots

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | os.PathLike) -> None:
    """Deterministic PNG: fixed dpi, no Software tag (no version string in the file)."""
    plt = _plt()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no data: {what}", ha="center", va="center", transform=ax.transAxes)


def plot_curves(inp: Inputs, key: str, path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    names = [inp.config.get("tokenizer_run")] + [v["name"] for v in inp.variants]
    drawn, all_pos = 0, True
    for name in names:
        run = inp.train.get(name) if name else None
        if run is None or not run.has_metrics:
            continue
        pts = [(r["step"], r[key]) for r in run.metrics if _finite(r.get(key))]
        if not pts:
            continue
        xs, ys = zip(*pts)
        all_pos &= min(ys) > 0
        ax.plot(xs, ys, lw=1.1, label=name)
        drawn += 1
    if drawn:
        if all_pos:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    else:
        _no_data(ax, key)
    ax.set_xlabel("update step")
    ax.set_ylabel(key)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    save_png(fig, path)


def plot_probe_r2(inp: Inputs, pv: ProbeView, path: Path) -> None:
    plt = _plt()
    labels, vals, los, his, colors = [], [], [], [], []
    for v in inp.variants:
        if inp.not_run_reason(v["name"]) is not None:
            continue
        for feat, col in zip(WM_FEATURES, ("tab:blue", "tab:orange")):
            a = pv.cell(v["name"], feat, "past_actions", "policy", 1, "all_valid", TEST)
            labels.append(f"{v['name']}\n{feat}")
            vals.append(np.nan if a.mean is None else a.mean)
            los.append(np.nan if a.ci[0] is None else a.ci[0])
            his.append(np.nan if a.ci[1] is None else a.ci[1])
            colors.append(col)
    for f in _baseline_features(inp):
        a = pv.cell(BASELINES, f, "none", "policy", 1, "all_valid", TEST)
        labels.append(f)
        vals.append(np.nan if a.mean is None else a.mean)
        los.append(np.nan if a.ci[0] is None else a.ci[0])
        his.append(np.nan if a.ci[1] is None else a.ci[1])
        colors.append("0.6")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(labels) + 1.5), 4.2))
    if labels:
        x = np.arange(len(labels))
        v = np.asarray(vals, float)
        err = np.vstack([np.where(np.isfinite(los), v - np.asarray(los, float), 0.0),
                         np.where(np.isfinite(his), np.asarray(his, float) - v, 0.0)])
        err = np.where(np.isfinite(err), err, 0.0)
        ax.bar(x, np.nan_to_num(v), color=colors, yerr=err, capsize=3)
        ax.set_xticks(x, labels, rotation=75, fontsize=6, ha="right")
        ax.axhline(0, color="k", lw=0.8)
    else:
        _no_data(ax, "probe records")
    ax.set_ylabel("held-out-task R² (H=1, policy, past_actions)")
    ax.set_title("Action probe: mean of seeds, task-level 95% CI (pooled over seeds)")
    ax.grid(alpha=0.3, axis="y")
    save_png(fig, path)


def plot_h_curves(inp: Inputs, pv: ProbeView, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    Hs = inp.H_list
    drawn = 0
    series = [(v["name"], f, "past_actions", f"{v['name']} {f}") for v in inp.variants
              if inp.not_run_reason(v["name"]) is None for f in WM_FEATURES]
    series += [(BASELINES, "lagged_actions", "none", "lagged_actions")]
    for variant, feat, ext, lab in series:
        ys = [pv.cell(variant, feat, ext, "policy", h, "common_Hmax", TEST, ci=False).mean for h in Hs]
        if all(y is None for y in ys):
            continue
        ax.plot(Hs, [np.nan if y is None else y for y in ys], marker="o", lw=1.1, label=lab)
        drawn += 1
    src = next(((BASELINES, f, "none") for f in _baseline_features(inp)), None)
    if src is not None:
        ys = [pv.cell(*src, "policy", h, "common_Hmax", TEST, "copy_prev", ci=False).mean for h in Hs]
        if any(y is not None for y in ys):
            ax.plot(Hs, [np.nan if y is None else y for y in ys], "k--", lw=1.0, label="copy_prev")
            drawn += 1
    if drawn:
        ax.legend(fontsize=6)
        ax.set_xscale("log", base=2)
        ax.set_xticks(Hs, [str(h) for h in Hs])
        ax.axhline(0, color="k", lw=0.6)
    else:
        _no_data(ax, "probe records")
    ax.set_xlabel(r"H (target $a_{t+H-1}$)")
    ax.set_ylabel("held-out-task R² (common_Hmax frames)")
    ax.set_title("H-curves: policy mode, past_actions")
    ax.grid(alpha=0.3)
    save_png(fig, path)


def plot_rollout_per_step(inp: Inputs, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    drawn = 0
    for v in inp.variants:
        if inp.not_run_reason(v["name"]) is not None:
            continue
        ys = (_rollout_row(inp.rollout.get(v["name"]), "model") or {}).get("per_step_psnr")
        if ys:
            ax.plot(np.arange(1, len(ys) + 1), [np.nan if y is None else y for y in ys], lw=1.2, label=v["name"])
            drawn += 1
    _, ref = _reference_rollout(inp)
    for row, style in (("copy_last_context", "k--"), ("tokenizer_ceiling", "k:"), ("tokenizer_ceiling_chunked", "k-.")):
        ys = (_rollout_row(ref, row) or {}).get("per_step_psnr")
        if ys:
            ax.plot(np.arange(1, len(ys) + 1), [np.nan if y is None else y for y in ys], style, lw=1.0, label=row)
            drawn += 1
    if drawn:
        ax.legend(fontsize=7)
    else:
        _no_data(ax, "rollout records")
    ax.set_xlabel("predicted step k (after 8 context frames)")
    ax.set_ylabel("PSNR (dB), mean over windows")
    ax.set_title("Rollout per-step PSNR (test_ood)")
    ax.grid(alpha=0.3)
    save_png(fig, path)


# ============================================================================ driver

def build_tables(inp: Inputs) -> list[Table]:
    from .power import build_power           # reporting/power.py builds on this module (issue 27)

    pv = ProbeView(inp)
    return [build_table1(inp, pv), build_table2(inp), build_paper_probe(inp, pv), build_paper_rollout(inp),
            build_controls(inp, pv), build_degeneracy(inp), build_quality_bars(inp), build_power(inp, pv)]


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(text.encode("utf-8"))


def write_tables(inp: Inputs, out_dir: str | os.PathLike, plots: bool = True) -> list[Path]:
    """Write every table (md/csv/tex), tables.md and the plots; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = build_tables(inp)
    written = []
    for t in tables:
        for ext, text in (("md", render_md(t, inp.files)), ("csv", render_csv(t, inp.files)),
                          ("tex", render_tex(t, inp.files))):
            p = out_dir / f"{t.key}.{ext}"
            _write_text(p, text)
            written.append(p)
    if plots:
        written += write_plots(inp, out_dir / "plots")
    _write_text(out_dir / "tables.md", render_all_md(tables, inp, plots))
    _write_text(out_dir / "tables.html", render_all_html(tables, inp))
    written += [out_dir / "tables.md", out_dir / "tables.html"]
    return written


def write_plots(inp: Inputs, plot_dir: str | os.PathLike) -> list[Path]:
    plot_dir = Path(plot_dir)
    pv = ProbeView(inp)
    paths = {n: plot_dir / f"{n}.png" for n in PLOT_NAMES}
    plot_curves(inp, "loss", paths["loss_curves"], "Training loss of every run")
    plot_curves(inp, "train/aux_mse", paths["aux_mse"], "Aux head (inverse dynamics) MSE")
    plot_probe_r2(inp, pv, paths["probe_r2"])
    plot_h_curves(inp, pv, paths["h_curves"])
    plot_rollout_per_step(inp, paths["rollout_per_step"])
    return list(paths.values())


def render_all_md(tables: Sequence[Table], inp: Inputs, plots: bool = True, plot_prefix: str = "plots/") -> str:
    parts = [f"# Tables ({PROTOCOL})", "",
             "Generated by `dreamer4_libero.reporting.tables` from the result records and training metrics only. "
             "† rows are quoted from the paper, not recomputed.", ""]
    for t in tables:
        parts.append(render_md(t, None, level=2))
    if plots:
        parts += ["## Plots", ""]
        for n, cap in (("loss_curves", "Training loss of every run"), ("aux_mse", "Aux head MSE"),
                       ("probe_r2", "Probe R² per variant with task-level 95% CIs"),
                       ("h_curves", "H-curves (common_Hmax frames)"),
                       ("rollout_per_step", "Rollout per-step PSNR")):
            parts += [f"![{cap}]({plot_prefix}{n}.png)", ""]
    parts += ["## Inputs (sha256)", "", "```"] + [f"{h}  {p}" for p, h in inp.files] + ["```", ""]
    return "\n".join(parts)


def make_tables(tables_config: dict, out_dir: str | os.PathLike, probe_summaries: Iterable = (),
                rollout: Iterable = (), tokenizer_eval: Iterable = (), train_dirs: Iterable = (),
                root: str | os.PathLike | None = None, plots: bool = True) -> list[Path]:
    """load_inputs + write_tables (the `tables` stage)."""
    inp = load_inputs(tables_config, probe_summaries, rollout, tokenizer_eval, train_dirs, root=root)
    return write_tables(inp, out_dir, plots=plots)
