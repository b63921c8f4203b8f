"""Interpreting values stored in a LIBERO file: demo names, attributes, images (libero_data.md §3.3, §5).

Pure functions on values already read from HDF5, used by the reader (``libero.py``):
demo group names (§5 row 12: ``demo_01`` is demo 1; gaps), attribute decoding (§5 row 13: attributes
stored as bytes, size-1 arrays, text that is not UTF-8) and the explicit ``resize: 128`` of images
of another resolution (§5 row 7).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

try:  # h5py is a hard dependency of the reader; only its Empty type is needed here
    import h5py
except ImportError:  # pragma: no cover
    h5py = None  # type: ignore[assignment]

_DEMO_RE = re.compile(r"^demo_(\d+)$")

# --------------------------------------------------------------------------------------
# Demo names (§5 row 12)
# --------------------------------------------------------------------------------------


def canonical_demo_name(name: str) -> tuple[str, int] | None:
    """``demo_01`` → (``demo_1``, 1); None if the name does not match ``^demo_\\d+$``."""
    m = _DEMO_RE.match(name)
    if not m:
        return None
    k = int(m.group(1))
    return f"demo_{k}", k


def missing_ids(ids: Sequence[int], limit: int) -> tuple[int, list[int]]:
    """(how many of 0..max(ids) are absent, the first `limit` of them) for sorted unique ids >= 0.

    Walks the gaps between consecutive ids, so a huge id (demo_999...9) costs nothing."""
    n, shown, prev = 0, [], -1
    for k in ids:
        gap = k - prev - 1
        if gap > 0:
            n += gap
            shown.extend(range(prev + 1, min(k, prev + 1 + limit - len(shown))))
        prev = k
    return n, shown


# --------------------------------------------------------------------------------------
# Attributes (§5 row 13)
# --------------------------------------------------------------------------------------


def is_clean_text(v: str) -> bool:
    """False if `v` holds lone surrogates (h5py's surrogateescape for bytes that are not UTF-8) or U+FFFD."""
    return "\ufffd" not in v and not any("\ud800" <= c <= "\udfff" for c in v)


def clean_text(v: str) -> str:
    """`v` with lone surrogates (undecodable bytes) replaced by U+FFFD: safe for any UTF-8 writer."""
    return v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def decode_attr(v: Any) -> Any:
    """Decode an HDF5 attribute: bytes/np.bytes_ → str, size-1 arrays → scalar."""
    if h5py is not None and isinstance(v, h5py.Empty):
        return None
    if isinstance(v, np.ndarray):
        if v.size == 1:
            v = v.reshape(-1)[0]
        else:
            return v
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).decode("utf-8", errors="replace")
    if isinstance(v, np.str_):
        return str(v)
    return v


def attr_as_int(v: Any) -> int | None:
    v = decode_attr(v)
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    if isinstance(v, str) and v.strip().lstrip("+-").isdigit():
        return int(v.strip())
    return None


# --------------------------------------------------------------------------------------
# Images (§5 row 7: resize only when asked)
# --------------------------------------------------------------------------------------


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights: area averaging when shrinking, bilinear (half-pixel) when growing."""
    w = np.zeros((n_out, n_in), dtype=np.float64)
    if n_in == n_out:
        np.fill_diagonal(w, 1.0)
    elif n_in > n_out:
        scale = n_in / n_out
        for i in range(n_out):
            lo, hi = i * scale, (i + 1) * scale
            for j in range(int(np.floor(lo)), min(n_in, int(np.ceil(hi)))):
                w[i, j] = min(hi, j + 1) - max(lo, j)
        w /= scale
    else:
        src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        j0 = np.floor(src).astype(int)
        j1 = np.minimum(j0 + 1, n_in - 1)
        f = src - j0
        np.add.at(w, (np.arange(n_out), j0), 1 - f)
        np.add.at(w, (np.arange(n_out), j1), f)
    return w


def resize_hwc(frames: np.ndarray, size: int) -> np.ndarray:
    """Resize (T, H, W, 3) frames to (T, size, size, 3) uint8 (area down / bilinear up)."""
    T, H, W, C = frames.shape
    wh = _resize_matrix(H, size).astype(np.float32)
    ww = _resize_matrix(W, size).astype(np.float32)
    x = frames.astype(np.float32, copy=False)
    y = np.einsum("oh,thwc->towc", wh, x, optimize=True)
    z = np.einsum("pw,towc->topc", ww, y, optimize=True)
    return np.clip(np.rint(z), 0, 255).astype(np.uint8)
