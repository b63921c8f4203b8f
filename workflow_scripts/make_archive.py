#!/usr/bin/env python
"""Model-card archive (rule `archive`, evaluation.md §5): one folder per trained run + the study README.

Writes results/archive/<run>/ (upstream-format weights, aux_head.pt, config.json, metrics.json,
curves, rollout strips, README.md model card with sha256 file list) for the tokenizer and every
dynamics variant that was run, and results/archive/README.md with the tables and plots.
"""

import argparse

from dreamer4_libero.cli import run_main
from dreamer4_libero.reporting.results import add_result_args, result_args


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    add_result_args(ap)
    ap.add_argument("--tables-dir", default=None, help="results/tables (tables.md and plots/ are copied)")
    ap.add_argument(
        "--rollout-dirs",
        nargs="*",
        default=[],
        help="results/rollout/<variant> folders; their *.png / *.gif strips are copied when present",
    )
    ap.add_argument("--splits-dir", default=None, help="results/preprocess/splits (split files + sha256)")
    ap.add_argument("--manifest", default=None, help="results/preprocess/manifest.json (frame counts; optional)")
    ap.add_argument("--out-dir", required=True, help="e.g. results/archive")
    ap.add_argument("--no-verify", action="store_true", help="skip the strict reload of each written checkpoint")
    a = ap.parse_args()
    cfg, inputs = result_args(a)

    from dreamer4_libero.reporting.archive import make_archive

    paths = make_archive(
        cfg,
        a.out_dir,
        **inputs,
        tables_dir=a.tables_dir,
        rollout_dirs=a.rollout_dirs,
        splits_dir=a.splits_dir,
        manifest=a.manifest,
        verify=not a.no_verify,
    )
    for p in paths:
        print(p)


if __name__ == "__main__":
    run_main(main, "archive")
