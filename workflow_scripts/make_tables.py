#!/usr/bin/env python
"""Tables and plots from the result records and training metrics (rule `tables`, evaluation.md §4).

CPU only, seconds, no torch: reads probe summaries (and the records they list), rollout records,
the tokenizer record and results/train/<run>/ folders; writes md/csv/tex per table, tables.md and
plots/*.png under --out-dir, byte-identical on a rerun. A malformed input exits 2 naming the file.
"""

import argparse
import json

from dreamer4_libero.cli import run_main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tables-config", required=True,
                    help="JSON: {variants: [{name, label, runnable, not_run_reason, stand_in_for, aux_weight, "
                         "aux_input, space_mode, init_from}, ...] in config order, H_list, seeds, bootstrap_B, "
                         "tokenizer_run}")
    ap.add_argument("--probe-summaries", nargs="*", default=[],
                    help="results/probe/<variant>/summary.json (+ baselines)")
    ap.add_argument("--rollout", nargs="*", default=[], help="results/rollout/<variant>/rollout.json")
    ap.add_argument("--tokenizer-eval", nargs="*", default=[], help="results/tokenizer_eval/<run>/psnr.json")
    ap.add_argument("--train-dirs", nargs="*", default=[], help="results/train/<run> folders")
    ap.add_argument("--out-dir", required=True, help="e.g. results/tables")
    ap.add_argument("--no-plots", action="store_true", help="tables only")
    a = ap.parse_args()
    try:
        cfg = json.loads(a.tables_config)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--tables-config is not valid JSON: {exc}") from None

    from dreamer4_libero.reporting.tables import make_tables

    paths = make_tables(cfg, a.out_dir, probe_summaries=a.probe_summaries, rollout=a.rollout,
                        tokenizer_eval=a.tokenizer_eval, train_dirs=a.train_dirs, plots=not a.no_plots)
    print(f"wrote {len(paths)} files under {a.out_dir}")


if __name__ == "__main__":
    run_main(main, "tables")
