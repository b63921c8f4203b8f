#!/usr/bin/env python
"""Write a small status JSON (e.g. why a variant is not run) atomically, and print it."""

import argparse
import json

from dreamer4_libero.cli import run_main
from dreamer4_libero.fileio import write_json


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    info = json.loads(a.json)
    write_json(a.out, info)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    run_main(main, "write_status")
