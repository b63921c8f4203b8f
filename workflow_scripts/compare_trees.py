#!/usr/bin/env python
"""Compare two results/ trees file by file; exit 1 when any selected output differs in content or is missing
(reporting/compare.py; `make compare-trees A=old/results B=results`). Files that differ only in
provenance keys (default versions.code) are counted apart and do not fail."""

import argparse
import sys

from dreamer4_libero.reporting.compare import DEFAULT_PATTERNS, DEFAULT_PROVENANCE, compare_trees, report_lines

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
    ap.add_argument(
        "--provenance",
        action="append",
        default=None,
        help=f"JSON key-path glob that may differ (repeatable); default: {' '.join(DEFAULT_PROVENANCE)}",
    )
    args = ap.parse_args()
    res = compare_trees(
        args.a,
        args.b,
        tuple(args.pattern) if args.pattern else DEFAULT_PATTERNS,
        provenance=tuple(args.provenance) if args.provenance else DEFAULT_PROVENANCE,
    )
    print("\n".join(report_lines(res)))
    sys.exit(1 if res["differs"] or res["only_a"] or res["only_b"] else 0)
