#!/usr/bin/env python
"""LIBERO HDF5 demos -> training shards + manifest (rule `preprocess`)."""

import argparse
import json

from dreamer4_libero.cli import run_main
from dreamer4_libero.data.preprocess import preprocess


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--libero-root", required=True, help="folder with suite sub-folders of *_demo.hdf5 files")
    ap.add_argument("--out", required=True, help="output folder (manifest.json, shards/)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--on-bad-demo", choices=["error", "skip"], default="error")
    ap.add_argument("--min-demo-len", type=int, default=2)
    ap.add_argument("--convert-dtype", action="store_true")
    ap.add_argument("--resize", type=int, default=None)
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args()
    m = preprocess(
        a.libero_root,
        a.out,
        workers=a.workers,
        on_bad_demo=a.on_bad_demo,
        min_demo_len=a.min_demo_len,
        convert_dtype=a.convert_dtype,
        resize=a.resize,
        progress=not a.no_progress,
    )
    print(json.dumps(m["totals"]))
    print(f"manifest: {a.out}/manifest.json")
    print(f"shards:   {a.out}/{m['shard_root']}/<suite>/<task>/")


if __name__ == "__main__":
    run_main(main, "preprocess")
