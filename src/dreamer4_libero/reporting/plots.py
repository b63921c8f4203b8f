"""Plots written next to results (matplotlib, Agg backend; no torch here).

PNGs are written atomically and byte-stably (no "Software" metadata chunk); the rollout GIF is
written with PIL (a matplotlib dependency).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..fileio import atomic_path  # noqa: E402


def _save(fig, path: str | Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
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


CONTEXT_RGB = (230, 120, 20)     # bar over context frames
PREDICTED_RGB = (40, 150, 60)    # bar over predicted frames


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames (..., 3, H, W) in [0, 1] -> uint8 (..., H, W, 3) for pictures only (metrics never quantise)."""
    x = np.clip(np.asarray(frames, dtype=np.float64), 0.0, 1.0)
    return np.moveaxis((x * 255.0).round().astype(np.uint8), -3, -1)


def copy_last_frames(gt: np.ndarray, context: int) -> np.ndarray:
    """The copy-last-frame reference as a video: the context frames, then frame `context - 1` repeated."""
    out = np.array(gt, copy=True)
    out[context:] = gt[context - 1]
    return out


def _strip_canvas(rows: list[np.ndarray], context: int, gap: int = 2, bar: int = 3) -> np.ndarray:
    """One canvas: a colour bar (context / predicted), then one row of frames per video (T, H, W, 3)."""
    T, H, W, _ = rows[0].shape
    canvas = np.full((bar + len(rows) * (H + gap), T * (W + gap) - gap, 3), 255, np.uint8)
    for t in range(T):
        x0 = t * (W + gap)
        canvas[:bar, x0:x0 + W] = CONTEXT_RGB if t < context else PREDICTED_RGB
        for r, video in enumerate(rows):
            y0 = bar + gap + r * (H + gap)
            canvas[y0:y0 + H, x0:x0 + W] = video[t]
    return canvas


def rollout_strips(strips: list[dict], path: str | Path, title: str, context: int = 8) -> None:
    """Per window one canvas of labelled rows: strips = [{"label": str, "rows": [(row label, uint8 (T,H,W,3))]}]
    (ground truth first, then the rollout and its references); the first `context` columns (orange bar)
    are the context frames (decoded)."""
    if not strips:
        raise ValueError("rollout_strips: nothing to draw")
    canvases = [_strip_canvas([v for _, v in s["rows"]], context) for s in strips]
    h, w = canvases[0].shape[:2]
    width = min(24.0, max(8.0, w / 60))
    fig, axes = plt.subplots(len(canvases), 1, figsize=(width, len(canvases) * (width * h / w + 0.3) + 0.3),
                             squeeze=False, layout="constrained")
    for ax, c, s in zip(axes[:, 0], canvases, strips):
        ax.imshow(c, interpolation="nearest")
        ax.set_axis_off()
        names = ", ".join(f"{i + 1}: {lab}" for i, (lab, _) in enumerate(s["rows"]))
        ax.set_title(f"{s['label']}   rows {names}; orange = {context} context frames, green = predicted",
                     fontsize=7, loc="left")
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def rollout_gif(clips: list[dict], path: str | Path, context: int = 8, min_side: int = 128,
                duration_ms: int = 200) -> None:
    """Animated GIF: per time step, every clip's videos side by side (clips stacked vertically) under a
    header bar (orange while the frame is context, green once predicted) that names the frame and the
    columns. clips: [{"rows": [(label, uint8 (T,H,W,3)), ...]}], the same labels in every clip."""
    from PIL import Image, ImageDraw

    if not clips:
        raise ValueError("rollout_gif: nothing to draw")
    T, H, W, _ = clips[0]["rows"][0][1].shape
    s = max(1, -(-min_side // H))
    gap, bar = 2 * s, 14
    labels = " | ".join(lab for lab, _ in clips[0]["rows"])
    images = []
    for t in range(T):
        rows = []
        for c in clips:
            cols = []
            for _, video in c["rows"]:
                cols += [np.kron(video[t], np.ones((s, s, 1), np.uint8)), np.full((H * s, gap, 3), 255, np.uint8)]
            rows.append(np.concatenate(cols[:-1], axis=1))
            rows.append(np.full((gap, rows[-1].shape[1], 3), 255, np.uint8))
        body = np.concatenate(rows[:-1], axis=0)
        top = np.empty((bar, body.shape[1], 3), np.uint8)
        top[:] = CONTEXT_RGB if t < context else PREDICTED_RGB
        img = Image.fromarray(np.concatenate([top, body], axis=0))
        label = f"{labels}  t={t} " + ("context" if t < context else f"pred {t - context + 1}")
        ImageDraw.Draw(img).text((2, 1), label, fill=(255, 255, 255))
        images.append(img)
    with atomic_path(path, suffix=".gif") as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)


def per_step_psnr(curves: dict[str, dict[str, list[float]]], path: str | Path, title: str) -> None:
    """PSNR per predicted step, one panel per set, one line per row ({set: {row: [values]}})."""
    styles = {"model": ("C0", "-"), "action_shuffled": ("C3", "--"), "null_actions": ("C4", ":"),
              "copy_last_context": ("0.4", "-."), "tokenizer_ceiling": ("C2", "-"),
              "tokenizer_ceiling_chunked": ("C2", ":")}
    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 3.4), squeeze=False)
    for ax, (name, rows) in zip(axes[0], curves.items()):
        for row, vals in rows.items():
            color, ls = styles.get(row, (None, "-"))
            ax.plot(np.arange(1, len(vals) + 1), vals, color=color, ls=ls, marker=".", ms=3, label=row)
        ax.set_xlabel("predicted step k")
        ax.set_ylabel("PSNR (dB, mean over windows)")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)
