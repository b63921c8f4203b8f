#!/usr/bin/env python
"""Write a synthetic LIBERO-format dataset (thin CLI over dreamer4_libero.data.synthetic.generate).

Examples:
  python workflow_scripts/make_synthetic.py --root data/synthetic --tasks demo --demos 12
  python workflow_scripts/make_synthetic.py --root /tmp/syn --tasks 20 --demos 11 --len-min 40 \\
      --len-max 64 --seed 3 --trap actions_nan:libero_90/KITCHEN_SCENE1_turn_on_the_stove:2

--tasks demo = the first 4 tasks of libero_10, libero_goal and libero_spatial (12 tasks);
--tasks N    = N distinct tasks cycling through the 130 real task names.
--trap NAME[:TASK_ID[:K]][:key=value...] may be repeated; TASK_ID defaults to the first task,
K to demo 0 (e.g. too_short:libero_10/<stem>:0:length=3).
"""

from __future__ import annotations

import argparse
import sys


def _parse(argv: list[str] | None) -> argparse.Namespace:
    from dreamer4_libero.data.synthetic_traps import TRAP_NAMES

    p = argparse.ArgumentParser(
        prog="make_synthetic.py",
        description="Generate a synthetic LIBERO-format dataset (one HDF5 file per task).",
        epilog="trap names: " + ", ".join(TRAP_NAMES),
    )
    p.add_argument("--root", required=True, help="output folder (suite folders are created inside)")
    p.add_argument("--tasks", default="demo", help="'demo' (12 tasks) or a number of tasks (1..130)")
    p.add_argument("--per-suite", type=int, default=4, help="with --tasks demo: tasks per suite (default 4)")
    p.add_argument("--demos", type=int, default=12, help="demos per task (default 12)")
    p.add_argument("--len-min", type=int, default=48, help="minimum frames per demo (default 48)")
    p.add_argument("--len-max", type=int, default=80, help="maximum frames per demo (default 80)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--trap", action="append", default=[], metavar="NAME:TASK_ID:K", help="inject a trap (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.demos < 1:
        p.error(f"--demos must be ≥ 1, got {args.demos}")
    if args.len_min < 2 or args.len_max < args.len_min:
        p.error(f"need 2 ≤ --len-min ≤ --len-max, got {args.len_min}, {args.len_max}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from dreamer4_libero.data import synthetic as sy
    from dreamer4_libero.data.synthetic_traps import parse_trap_spec

    try:
        summary = sy.generate(
            args.root,
            sy.task_ids_for(args.tasks, args.per_suite),
            n_demos=args.demos,
            len_range=(args.len_min, args.len_max),
            seed=args.seed,
            traps=[parse_trap_spec(t) for t in args.trap],
            progress=not args.no_progress,
        )
    except ValueError as e:
        print(f"make_synthetic.py: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(sy.summary_lines(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
