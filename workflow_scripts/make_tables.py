#!/usr/bin/env python
"""Tables and plots from the result records and training metrics (rule `tables`, evaluation.md §4).

CPU only, seconds, no torch: reads probe summaries (and the records they list), rollout records,
the tokenizer record and results/train/<run>/ folders; writes md/csv/tex per table, tables.md and
plots/*.png under --out-dir, byte-identical on a rerun. A malformed input exits 2 naming the file.
"""

import argparse

from dreamer4_libero.cli import run_main
from dreamer4_libero.reporting.results import add_result_args, result_args


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    add_result_args(ap)
    ap.add_argument("--out-dir", required=True, help="e.g. results/tables")
    ap.add_argument("--no-plots", action="store_true", help="tables only")
    a = ap.parse_args()
    cfg, inputs = result_args(a)

    from dreamer4_libero.reporting.tables import make_tables

    paths = make_tables(
        cfg,
        a.out_dir,
        **inputs,
        plots=not a.no_plots,
    )
    print(f"wrote {len(paths)} files under {a.out_dir}")


if __name__ == "__main__":
    run_main(main, "tables")
