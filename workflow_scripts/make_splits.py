#!/usr/bin/env python
"""Manifest -> train/val/test_ood split files and per-seed probe lists (rule `splits`)."""

import argparse

from dreamer4_libero.cli import run_main
from dreamer4_libero.config import parse_section
from dreamer4_libero.data.splits import build_and_write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--out", required=True, help="splits folder")
    ap.add_argument("--split", required=True, help="JSON of the config's `split` section")
    ap.add_argument("--probe", required=True, help="JSON of the config's `probe` section")
    a = ap.parse_args()
    summary = build_and_write(
        a.manifest,
        a.out,
        split_cfg=parse_section(a.split, "split", "--split"),
        probe_cfg=parse_section(a.probe, "probe", "--probe"),
    )
    for name, s in summary["sets"].items():
        print(f"{name:10s} {s['episodes']:6d} episodes from {s['tasks']:4d} tasks")
    for seed, lists in summary["probe"].items():
        print(seed, " ".join(f"{k}={v['episodes']}ep/{v['tasks']}tasks" for k, v in lists.items()))
    print(f"splits: {a.out}/")


if __name__ == "__main__":
    run_main(main, "splits")
