#!/usr/bin/env python
"""The report's own pages and figures (rule `report_assets`): training curves per run, probe R² per action
dimension, data summary, runtime and memory per job, provenance. CPU only, seconds, from finished results;
`snakemake --report` (make report) packs them with the stages' files into one HTML file.
"""

import argparse

from dreamer4_libero.cli import run_main
from dreamer4_libero.config import parse_section
from dreamer4_libero.reporting.results import add_result_args


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    add_result_args(ap)
    ap.add_argument("--runs", nargs="+", required=True, help="trained runs (results/train/<run>/)")
    ap.add_argument("--manifest", required=True, help="results/preprocess/manifest.json")
    ap.add_argument("--splits-summary", required=True, help="results/preprocess/splits/summary.json")
    ap.add_argument("--dmcontrol-manifest", default=None, help="results/dmcontrol/collect/manifest.json")
    ap.add_argument("--benchmarks", default="benchmarks", help="Snakemake's benchmark folder")
    ap.add_argument("--train-root", default="results/train")
    ap.add_argument("--out-dir", required=True, help="e.g. results/report")
    a = ap.parse_args()

    from dreamer4_libero.reporting.report import build_assets

    written = build_assets(
        tables_config=parse_section(a.tables_config, "$defs.tables_config", "--tables-config"),
        out_dir=a.out_dir,
        runs=a.runs,
        manifest=a.manifest,
        splits_summary=a.splits_summary,
        bench_dir=a.benchmarks,
        probe_summaries=a.probe_summaries,
        rollout=a.rollout,
        tokenizer_eval=a.tokenizer_eval,
        train_root=a.train_root,
        dmcontrol_manifest=a.dmcontrol_manifest,
    )
    for k, v in written.items():
        print(f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}")


if __name__ == "__main__":
    run_main(main, "report_assets")
