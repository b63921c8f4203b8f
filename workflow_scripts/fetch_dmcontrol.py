#!/usr/bin/env python
"""Fetch the released DMControl checkpoints of nicklashansen/dreamer4 (`make fetch-dmcontrol`).

Downloads tokenizer_ckpt.pt and dynamics_ckpt.pt from its Hugging Face model page into
`dmcontrol_init.released_dir` (default assets/dmcontrol/), verifies their sha256 (against the record of
the first fetch: the release publishes none) and records url, size, sha256 and time in fetch_record.json
next to them. Run it where there is internet (a cluster's login node); files already there and verified
are skipped. Offline: copy the two files to some folder and pass --from DIR.
"""

import argparse
import json

from dreamer4_libero.cli import run_main
from dreamer4_libero.data import dmcontrol_release as rel
from dreamer4_libero.data.fetch import fetch_files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--dest",
        default=None,
        help=f"folder for the files (default: dmcontrol_init.released_dir of the config, {rel.DEFAULT_DIR})",
    )
    ap.add_argument(
        "--configfile",
        nargs="*",
        default=[],
        help="config files layered on config.yaml, to read dmcontrol_init.released_dir from",
    )
    src = ap.add_mutually_exclusive_group()
    src.add_argument(
        "--base-url",
        default=None,
        help=f"serve the files from here (default: ${rel.BASE_URL_ENV}, else {rel.BASE_URL})",
    )
    src.add_argument(
        "--from",
        dest="from_dir",
        default=None,
        help="copy the two files from this local folder instead of downloading them",
    )
    ap.add_argument("--progress", choices=["true", "false"], default="true", help="progress bars on stderr")
    a = ap.parse_args()
    dest = a.dest
    if dest is None:
        from dreamer4_libero.config import load_config

        dest = load_config(a.configfile)["dmcontrol_init"]["released_dir"]
    record = fetch_files(
        rel.release_files(),
        dest,
        base_url=None if a.from_dir else rel.base_url(a.base_url),
        from_dir=a.from_dir,
        record_name=rel.RECORD_FILE,
        source_label=f"{rel.HF_REPO} (Hugging Face model page)",
        progress=a.progress == "true",
    )
    print(
        json.dumps(
            {
                "dest": str(dest),
                "files": {n: {"size": e["size"], "sha256": e["sha256"]} for n, e in record["files"].items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    run_main(main, "fetch_dmcontrol")
