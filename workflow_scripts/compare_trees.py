#!/usr/bin/env python
"""Compare two results/ trees file by file; exit 1 when any selected output differs or is missing
(reporting/compare.py; `make compare-trees A=old/results B=results`)."""

import argparse
import sys

from dreamer4_libero.reporting.compare import DEFAULT_PATTERNS, compare_trees, report_lines

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("a", help="the first results/ folder")
    ap.add_argument("b", help="the second results/ folder")
    ap.add_argument(
        "--pattern",
        action="append",
        default=None,
        help=f"glob relative to the folders (repeatable); default: {' '.join(DEFAULT_PATTERNS)}",
    )
    args = ap.parse_args()
    res = compare_trees(args.a, args.b, tuple(args.pattern) if args.pattern else DEFAULT_PATTERNS)
    print("\n".join(report_lines(res)))
    sys.exit(1 if res["differs"] or res["only_a"] or res["only_b"] else 0)
