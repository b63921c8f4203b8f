"""Plots written next to results (matplotlib, Agg backend; no torch here)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..fileio import atomic_path  # noqa: E402


def _save(fig, path: str | Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def r2_per_dim_bars(results: dict[str, dict], path: str | Path, title: str) -> None:
    """Grouped bars of per-dim R2, one group per dim, one bar per labelled result."""
    labels = list(results)
    dims = list(next(iter(results.values()))["r2_per_dim"])
    fig, ax = plt.subplots(figsize=(8, 3.6))
    w = 0.8 / max(len(labels), 1)
    for i, lab in enumerate(labels):
        vals = [np.nan if v is None else v for v in results[lab]["r2_per_dim"].values()]
        ax.bar(np.arange(len(dims)) + i * w - 0.4 + w / 2, vals, w, label=f"{lab} (uniform {results[lab]['r2_uniform']:+.2f})")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(dims)), dims)
    ax.set_ylabel("R² (held-out tasks)")
    ax.set_ylim(min(-0.5, ax.get_ylim()[0]), 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left")
    _save(fig, path)


def frame_grid(rows: dict[str, np.ndarray], path: str | Path, title: str) -> None:
    """One row per label of upright uint8 frames (n, H, W, 3)."""
    n = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n, 1.35 * len(rows) + 0.4), squeeze=False,
                             gridspec_kw={"wspace": 0.05, "hspace": 0.25})
    for r, (lab, frames) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(frames):
                ax.imshow(frames[c])
        axes[r][0].set_title(lab, fontsize=7, loc="left")
    fig.suptitle(title, fontsize=9, y=1.0)
    _save(fig, path)
