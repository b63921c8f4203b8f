"""Per-job runtime and memory from Snakemake's `benchmark:` files (benchmarks/<rule>/<job>.tsv).

One place maps rules to the stages of the demo's time-per-stage table (docs/tests.md); `make demo`
(workflow_scripts/stage_times.py) prints the per-stage sums and the report shows the same numbers as a table
and a chart.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

STAGES = {  # rule -> stage, in DAG order
    "make_synthetic": "data",
    "preprocess": "data",
    "splits": "data",
    "data_sanity": "data",
    "train_tokenizer": "tokenizer",
    "tokenizer_eval": "evaluation",
    "train_dynamics": "dynamics",
    "dynamics_not_run": "dynamics",
    "probe": "evaluation",
    "probe_baselines": "evaluation",
    "rollout_eval": "evaluation",
    "tables": "tables and archive",
    "archive": "tables and archive",
    "report_assets": "report",
    "collect_dmcontrol": "DMControl collection and pretraining",
    "pretrain_dmcontrol": "DMControl collection and pretraining",
}
#: jobs of a shared rule that belong to the DMControl pretraining (benchmark file stem = the default run names)
DMCONTROL_RUNS = {"tokenizer_dmcontrol", "dynamics_dmcontrol", "tokenizer_dmcontrol_libero"}
ORDER = [
    "data",
    "tokenizer",
    "DMControl collection and pretraining",
    "dynamics",
    "evaluation",
    "tables and archive",
    "report",
]


def stage_of(rule: str, job: str) -> str:
    """The stage (docs/tests.md) of one benchmark file (rule folder, file stem)."""
    return "DMControl collection and pretraining" if job in DMCONTROL_RUNS else STAGES.get(rule, rule)


def _num(v: str | None) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None  # Snakemake writes NA where it could not measure


def read_benchmarks(bench_dir: str | os.PathLike, exclude_rules: tuple[str, ...] = ()) -> list[dict]:
    """One row per benchmark file: rule, job, stage, seconds (sum over repeats), max RSS (MB), CPU seconds."""
    rows = []
    for tsv in sorted(Path(bench_dir).rglob("*.tsv")):
        rule, job = tsv.parent.name, tsv.stem
        if rule in exclude_rules:
            continue
        with open(tsv, newline="") as fh:
            recs = list(csv.DictReader(fh, delimiter="\t"))
        if not recs:
            continue
        secs = sum(_num(r.get("s")) or 0.0 for r in recs)
        rss = [x for x in (_num(r.get("max_rss")) for r in recs) if x is not None]
        cpu = [x for x in (_num(r.get("cpu_time")) for r in recs) if x is not None]
        rows.append(
            {
                "rule": rule,
                "job": job,
                "stage": stage_of(rule, job),
                "s": secs,
                "max_rss_mb": max(rss) if rss else None,
                "cpu_s": sum(cpu) if cpu else None,
            }
        )
    return rows


def stage_totals(rows: list[dict]) -> list[tuple[str, float]]:
    """(stage, summed seconds) in DAG order."""
    tot: dict[str, float] = {}
    for r in rows:
        tot[r["stage"]] = tot.get(r["stage"], 0.0) + r["s"]
    return sorted(tot.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER))
