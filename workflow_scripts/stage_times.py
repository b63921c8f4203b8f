#!/usr/bin/env python
"""Print the wall time of every stage from Snakemake's benchmark files, and where the outputs are
(reporting/run_summary.py)."""

import argparse

from dreamer4_libero.reporting.run_summary import output_lines, stage_time_lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--benchmarks", default="benchmarks")
    ap.add_argument("--results", default="results")
    a = ap.parse_args()
    print("\n".join(stage_time_lines(a.benchmarks) + output_lines(a.results)))


if __name__ == "__main__":
    main()
