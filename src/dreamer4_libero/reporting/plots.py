"""Every plot of the pipeline (matplotlib, Agg backend; no torch here): the evaluation figures (probe
bars, frame grids, rollout strips, GIF and per-step PSNR) and the tables stage's plots (loss curves,
probe R² with CIs, H-curves, rollout per-step PSNR of every variant).

PNGs are written atomically and byte-stably (no "Software" metadata chunk); the rollout GIF is
written with PIL (a matplotlib dependency).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..fileio import atomic_path  # noqa: E402
from ..training.metrics import metric_groups  # noqa: E402
from .results import (
    BASELINES,
    TEST,
    WM_FEATURES,
    Inputs,
    ProbeView,
    baseline_features,  # noqa: E402
    finite,
    reference_rollout,
    rollout_row,
)


def save_png(fig, path: str | os.PathLike, dpi: int = 100) -> None:
    """Deterministic PNG: fixed dpi, no Software tag (no version string in the file); closes `fig`."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def r2_per_dim_bars(results: dict[str, dict], path: str | Path, title: str) -> None:
    """Grouped bars of per-dim R2, one group per dim, one bar per labelled result."""
    labels = list(results)
    dims = list(next(iter(results.values()))["r2_per_dim"])
    fig, ax = plt.subplots(figsize=(8, 3.6))
    w = 0.8 / max(len(labels), 1)
    for i, lab in enumerate(labels):
        vals = [np.nan if v is None else v for v in results[lab]["r2_per_dim"].values()]
        ax.bar(
            np.arange(len(dims)) + i * w - 0.4 + w / 2,
            vals,
            w,
            label=f"{lab} (uniform {results[lab]['r2_uniform']:+.2f})",
        )
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(dims)), dims)
    ax.set_ylabel("R² (held-out tasks)")
    ax.set_ylim(min(-0.5, ax.get_ylim()[0]), 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left")
    save_png(fig, path, dpi=110)


def frame_grid(rows: dict[str, np.ndarray], path: str | Path, title: str) -> None:
    """One row per label of upright uint8 frames (n, H, W, 3)."""
    n = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(
        len(rows),
        n,
        figsize=(1.2 * n, 1.35 * len(rows) + 0.4),
        squeeze=False,
        gridspec_kw={"wspace": 0.05, "hspace": 0.25},
    )
    for r, (lab, frames) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(frames):
                ax.imshow(frames[c])
        axes[r][0].set_title(lab, fontsize=7, loc="left")
    fig.suptitle(title, fontsize=9, y=1.0)
    save_png(fig, path, dpi=110)


CONTEXT_RGB = (230, 120, 20)  # bar over context frames
PREDICTED_RGB = (40, 150, 60)  # bar over predicted frames


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
        canvas[:bar, x0 : x0 + W] = CONTEXT_RGB if t < context else PREDICTED_RGB
        for r, video in enumerate(rows):
            y0 = bar + gap + r * (H + gap)
            canvas[y0 : y0 + H, x0 : x0 + W] = video[t]
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
    fig, axes = plt.subplots(
        len(canvases),
        1,
        figsize=(width, len(canvases) * (width * h / w + 0.3) + 0.3),
        squeeze=False,
        layout="constrained",
    )
    for ax, c, s in zip(axes[:, 0], canvases, strips):
        ax.imshow(c, interpolation="nearest")
        ax.set_axis_off()
        names = ", ".join(f"{i + 1}: {lab}" for i, (lab, _) in enumerate(s["rows"]))
        ax.set_title(
            f"{s['label']}   rows {names}; orange = {context} context frames, green = predicted", fontsize=7, loc="left"
        )
    fig.suptitle(title, fontsize=9)
    save_png(fig, path, dpi=110)


def rollout_gif(
    clips: list[dict], path: str | Path, context: int = 8, min_side: int = 128, duration_ms: int = 200
) -> None:
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
    styles = {
        "model": ("C0", "-"),
        "action_shuffled": ("C3", "--"),
        "null_actions": ("C4", ":"),
        "copy_last_context": ("0.4", "-."),
        "tokenizer_ceiling": ("C2", "-"),
        "tokenizer_ceiling_chunked": ("C2", ":"),
    }
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
    save_png(fig, path, dpi=110)


# ============================================================================ the tables stage's plots


def no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no data: {what}", ha="center", va="center", transform=ax.transAxes)


def plot_curves(inp: Inputs, key: str, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    names = [inp.config.get("tokenizer_run")] + [v["name"] for v in inp.variants]
    drawn, all_pos = 0, True
    for name in names:
        run = inp.train.get(name) if name else None
        if run is None or not run.has_metrics:
            continue
        pts = [(r["step"], r[key]) for r in run.metrics if finite(r.get(key))]
        if not pts:
            continue
        xs, ys = zip(*pts)
        all_pos &= min(ys) > 0
        ax.plot(xs, ys, lw=1.1, label=name)
        drawn += 1
    if drawn:
        if all_pos:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    else:
        no_data(ax, key)
    ax.set_xlabel("update step")
    ax.set_ylabel(key)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    save_png(fig, path)


def plot_probe_r2(inp: Inputs, pv: ProbeView, path: Path) -> None:
    labels, vals, los, his, colors = [], [], [], [], []
    for v in inp.variants:
        if inp.not_run_reason(v["name"]) is not None:
            continue
        for feat, col in zip(WM_FEATURES, ("tab:blue", "tab:orange")):
            a = pv.cell(v["name"], feat, "past_actions", "policy", 1, "all_valid", TEST)
            labels.append(f"{v['name']}\n{feat}")
            vals.append(np.nan if a.mean is None else a.mean)
            los.append(np.nan if a.ci[0] is None else a.ci[0])
            his.append(np.nan if a.ci[1] is None else a.ci[1])
            colors.append(col)
    for f in baseline_features(inp):
        a = pv.cell(BASELINES, f, "none", "policy", 1, "all_valid", TEST)
        labels.append(f)
        vals.append(np.nan if a.mean is None else a.mean)
        los.append(np.nan if a.ci[0] is None else a.ci[0])
        his.append(np.nan if a.ci[1] is None else a.ci[1])
        colors.append("0.6")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(labels) + 1.5), 4.2))
    if labels:
        x = np.arange(len(labels))
        v = np.asarray(vals, float)
        err = np.vstack(
            [
                np.where(np.isfinite(los), v - np.asarray(los, float), 0.0),
                np.where(np.isfinite(his), np.asarray(his, float) - v, 0.0),
            ]
        )
        err = np.where(np.isfinite(err), err, 0.0)
        ax.bar(x, np.nan_to_num(v), color=colors, yerr=err, capsize=3)
        ax.set_xticks(x, labels, rotation=75, fontsize=6, ha="right")
        ax.axhline(0, color="k", lw=0.8)
    else:
        no_data(ax, "probe records")
    ax.set_ylabel("held-out-task R² (H=1, policy, past_actions)")
    ax.set_title("Action probe: mean of seeds, task-level 95% CI (pooled over seeds)")
    ax.grid(alpha=0.3, axis="y")
    save_png(fig, path)


def plot_h_curves(inp: Inputs, pv: ProbeView, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    Hs = inp.H_list
    drawn = 0
    series = [
        (v["name"], f, "past_actions", f"{v['name']} {f}")
        for v in inp.variants
        if inp.not_run_reason(v["name"]) is None
        for f in WM_FEATURES
    ]
    series += [(BASELINES, "lagged_actions", "none", "lagged_actions")]
    for variant, feat, ext, lab in series:
        ys = [pv.cell(variant, feat, ext, "policy", h, "common_Hmax", TEST, ci=False).mean for h in Hs]
        if all(y is None for y in ys):
            continue
        ax.plot(Hs, [np.nan if y is None else y for y in ys], marker="o", lw=1.1, label=lab)
        drawn += 1
    src = next(((BASELINES, f, "none") for f in baseline_features(inp)), None)
    if src is not None:
        ys = [pv.cell(*src, "policy", h, "common_Hmax", TEST, "copy_prev", ci=False).mean for h in Hs]
        if any(y is not None for y in ys):
            ax.plot(Hs, [np.nan if y is None else y for y in ys], "k--", lw=1.0, label="copy_prev")
            drawn += 1
    if drawn:
        ax.legend(fontsize=6)
        ax.set_xscale("log", base=2)
        ax.set_xticks(Hs, [str(h) for h in Hs])
        ax.axhline(0, color="k", lw=0.6)
    else:
        no_data(ax, "probe records")
    ax.set_xlabel(r"H (target $a_{t+H-1}$)")
    ax.set_ylabel("held-out-task R² (common_Hmax frames)")
    ax.set_title("H-curves: policy mode, past_actions")
    ax.grid(alpha=0.3)
    save_png(fig, path)


def plot_rollout_per_step(inp: Inputs, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    drawn = 0
    for v in inp.variants:
        if inp.not_run_reason(v["name"]) is not None:
            continue
        ys = (rollout_row(inp.rollout.get(v["name"]), "model") or {}).get("per_step_psnr")
        if ys:
            ax.plot(np.arange(1, len(ys) + 1), [np.nan if y is None else y for y in ys], lw=1.2, label=v["name"])
            drawn += 1
    _, ref = reference_rollout(inp)
    for row, style in (("copy_last_context", "k--"), ("tokenizer_ceiling", "k:"), ("tokenizer_ceiling_chunked", "k-.")):
        ys = (rollout_row(ref, row) or {}).get("per_step_psnr")
        if ys:
            ax.plot(np.arange(1, len(ys) + 1), [np.nan if y is None else y for y in ys], style, lw=1.0, label=row)
            drawn += 1
    if drawn:
        ax.legend(fontsize=7)
    else:
        no_data(ax, "rollout records")
    ax.set_xlabel("predicted step k (after 8 context frames)")
    ax.set_ylabel("PSNR (dB), mean over windows")
    ax.set_title("Rollout per-step PSNR (test_ood)")
    ax.grid(alpha=0.3)
    save_png(fig, path)


# ============================================================================ report and model-card plots

#: endpoints of the published runs' curves (first logged value -> final value), drawn on our curves
PUBLISHED_ENDPOINTS = {
    "loss": {"kind": "dynamics", "start": 0.20, "end": 0.005, "label": "published shortcut loss"},
    "train/aux_mse": {"kind": "dynamics", "start": 0.22, "end": 0.0004, "label": "published aux MSE"},
}
#: logged keys that are counters or schedule values, not losses
NOT_LOSS = {"train/b_self", "train/sigma_mean", "train/keep_prob", "train/mae_p"}


def _series(records: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in records if finite(r.get(key)) and finite(r.get("step"))]
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else ([], [])


def training_curves_png(run: str, kind: str, records: Sequence[dict], path: str | os.PathLike) -> list[str]:
    """Loss (+ published endpoints), aux MSE (+ endpoints), the loss terms and the learning rate of one run.

    Returns the panel titles drawn (the tests read them)."""
    keys = sorted({k for r in records for k in r if k.startswith("train/")} - NOT_LOSS - {"train/aux_mse"})
    panels = [("loss", "training loss")]
    if any(finite(r.get("train/aux_mse")) for r in records):
        panels.append(("train/aux_mse", "aux head (inverse dynamics) MSE"))
    panels += [("terms", "loss terms"), ("lr", "learning rate")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.2))
    for ax, (key, title) in zip(np.atleast_1d(axes), panels):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("update step", fontsize=8)
        ax.grid(alpha=0.3)
        if key == "terms":
            series = [(k, *_series(records, k)) for k in keys]
        else:
            series = [(key, *_series(records, key))]
        series = [s for s in series if s[1]]
        if not series:
            no_data(ax, key)
            continue
        for name, xs, ys in series:
            ax.plot(xs, ys, lw=1.0, label=name.replace("train/", ""))
        pub = PUBLISHED_ENDPOINTS.get(key)
        if pub and pub["kind"] == kind:
            x_end = max(series[0][1])
            ax.scatter(
                [series[0][1][0], x_end],
                [pub["start"], pub["end"]],
                marker="*",
                s=90,
                color="crimson",
                zorder=5,
                label=f"{pub['label']} {pub['start']:g} → {pub['end']:g} (start, end)",
            )
            ax.axhline(pub["end"], color="crimson", lw=0.8, ls="--")
        if all(min(s[2]) > 0 for s in series) and key != "lr":
            ax.set_yscale("log")
        ax.legend(fontsize=6)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{run} ({kind})", fontsize=10)
    fig.tight_layout()
    save_png(fig, path)
    return [t for _, t in panels]


def probe_per_dim_png(entries: Sequence[dict], path: str | os.PathLike, clip: float = -1.0) -> int:
    """Grouped bars: one group per action dimension, one bar per model/feature (controls hatched),
    error bars = seed std. R² below `clip` is drawn at `clip` (the value is printed). Returns bars drawn."""
    fig, ax = plt.subplots(figsize=(10.0, 4.2))
    if not entries:
        no_data(ax, "probe records")
        save_png(fig, path)
        return 0
    n_dims = max(len(e["mean"]) for e in entries)
    width = 0.8 / len(entries)
    cmap = plt.get_cmap("tab20")
    drawn = 0
    for i, e in enumerate(entries):
        xs = np.arange(len(e["mean"])) + (i - (len(entries) - 1) / 2) * width
        m = np.array(e["mean"])
        shown = np.where(np.isfinite(m), np.maximum(m, clip), 0.0)
        err = np.nan_to_num(np.array(e["std"]), nan=0.0)
        ax.bar(
            xs,
            shown,
            width,
            yerr=err,
            capsize=1.5,
            color=cmap(i % 20),
            label=e["label"],
            hatch="//" if e["control"] else None,
            edgecolor="black" if e["control"] else None,
            linewidth=0.3,
        )
        drawn += len(xs)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(range(n_dims))
    ax.set_xticklabels([f"a[{d}]" for d in range(n_dims)])
    ax.set_ylabel(f"held-out-task R² (clipped at {clip:g})")
    ax.set_title(
        "Probe R² per action dimension (H = 1, policy, past_actions; controls hatched; bars: seed std)", fontsize=9
    )
    ax.legend(fontsize=6, ncol=3, loc="lower left")
    ax.grid(alpha=0.3, axis="y")
    save_png(fig, path)
    return drawn


def runtime_png(rows: Sequence[dict], path: str | os.PathLike) -> int:
    rows = [r for r in rows if r["s"] >= 0.5] or list(rows)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11.0, max(3.0, 0.22 * len(rows) + 1.0)))
    labels = [f"{r['rule']}/{r['job']}" for r in rows]
    y = np.arange(len(rows))
    a1.barh(y, [r["s"] for r in rows], color="steelblue")
    a1.set_yticks(y)
    a1.set_yticklabels(labels, fontsize=6)
    a1.invert_yaxis()
    a1.set_xlabel("wall seconds")
    a2.barh(y, [r["max_rss_mb"] or 0.0 for r in rows], color="darkorange")
    a2.set_yticks(y)
    a2.set_yticklabels([])
    a2.invert_yaxis()
    a2.set_xlabel("max RSS (MB)")
    for a in (a1, a2):
        a.grid(alpha=0.3, axis="x")
    fig.suptitle("Runtime and peak memory per job", fontsize=10)
    fig.tight_layout()
    save_png(fig, path)
    return len(rows)


def aux_mse_png(records: list[dict], path: Path, title: str) -> bool:
    pts = [(r["step"], r["train/aux_mse"]) for r in records if finite(r.get("train/aux_mse"))]
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    xs, ys = zip(*pts)
    ax.plot(xs, ys, lw=1.2)
    if min(ys) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("update step")
    ax.set_ylabel("train/aux_mse")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    save_png(fig, path)
    return True


# ============================================================================ training curves


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "metric"


def plot_metrics(
    records: list[dict], out_dir: str | os.PathLike, prefix: str = "curve_", title: str = ""
) -> list[Path]:
    """A training run's curves (training/metrics.py records): one PNG per metric group,
    ``<out_dir>/<prefix><group>.png``; returns the paths written."""
    out_dir = Path(out_dir)
    paths = []
    for group, keys in metric_groups(records).items():
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        all_pos = True
        for k in keys:
            pts = [
                (r["step"], r[k])
                for r in records
                if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
            ]
            if not pts:
                continue
            xs, ys = zip(*pts)
            all_pos &= min(ys) > 0
            ax.plot(xs, ys, label=k, lw=1.2, marker="." if len(xs) < 30 else None)
        if all_pos:
            ax.set_yscale("log")
        ax.set_xlabel("update step")
        ax.set_ylabel(group + (" (log)" if all_pos else ""))
        ax.set_title(f"{title} {group}".strip())
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
        path = out_dir / f"{prefix}{_safe_name(group)}.png"
        save_png(fig, path, dpi=100)
        paths.append(path)
    return paths
