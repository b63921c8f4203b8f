"""The quality bars of evaluation.md §4, from our numbers: tokenizer PSNR, rollout PSNR against the
archive's bar and against copy-last, smooth loss curves (a heuristic) and the aux head's MSE drop.
Thresholds are in reference.yaml.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .builders import not_run_row
from .reference import EMA_DECAY, ROLLOUT_POOLED_BAR, TOK_PSNR_BAR
from .reference import caption as caption_text
from .render import MISSING, Row, Table
from .results import Inputs, finite, is_num, rollout_row, study_tokenizer, tok_psnr


def ema(values: Sequence[float], decay: float = EMA_DECAY) -> list[float]:
    """EMA started at the first value: e_0 = x_0, e_i = decay·e_{i−1} + (1 − decay)·x_i."""
    out, e = [], None
    for x in values:
        e = float(x) if e is None else decay * e + (1.0 - decay) * float(x)
        out.append(e)
    return out


def loss_smoothness(records: Sequence[dict], key: str = "loss") -> dict:
    """The §4 'smooth loss curves' bar (a heuristic).

    Pass iff: no NaN/Inf (a logged null is a non-finite value: metrics.jsonl stores them as null);
    EMA(0.99) at the last point < EMA at the last point of the first 5 % of logged points; and from
    the first point after that 5 % on, the EMA never exceeds 1.5 × its running minimum.
    """
    pts = [r[key] for r in records if key in r]
    if not pts:
        return {"result": None, "value": "no logged loss", "n": 0}
    bad = sum(1 for x in pts if x is None or not is_num(x) or not math.isfinite(x))
    if bad:
        return {"result": False, "value": f"{bad} NaN/Inf of {len(pts)} logged points", "n": len(pts)}
    if len(pts) < 2:
        return {"result": None, "value": "fewer than 2 logged points", "n": len(pts)}
    e = ema(pts)
    n5 = max(1, math.ceil(0.05 * len(pts)))
    e5, e_end = e[n5 - 1], e[-1]
    run_min, worst = e[0], 0.0
    for i, x in enumerate(e):
        run_min = min(run_min, x)
        if i >= n5 and run_min > 0:
            worst = max(worst, x / run_min)
    ok = (e_end < e5) and worst <= 1.5
    return {
        "result": bool(ok),
        "n": len(pts),
        "ema_end": e_end,
        "ema_5pct": e5,
        "max_ratio": worst,
        "value": f"EMA end {e_end:.4g} vs {e5:.4g} at 5%; max EMA/running min {worst:.3f}",
    }


def aux_mse_drop(records: Sequence[dict], key: str = "train/aux_mse") -> dict:
    """The §4 aux bar: mean of the last 10 % of logged points ≤ 0.8 × mean of the first 5 % (≥ 10 points)."""
    pts = [r[key] for r in records if key in r]
    if any(x is None or not is_num(x) or not math.isfinite(x) for x in pts):
        return {"result": False, "value": "NaN/Inf in the aux MSE", "n": len(pts)}
    if len(pts) < 10:
        return {"result": None, "value": f"n/a ({len(pts)} logged points, needs ≥ 10)", "n": len(pts)}
    first = float(np.mean(pts[: max(1, math.ceil(0.05 * len(pts)))]))
    last = float(np.mean(pts[-max(1, math.ceil(0.10 * len(pts))) :]))
    return {
        "result": bool(last <= 0.8 * first),
        "n": len(pts),
        "first5": first,
        "last10": last,
        "value": f"last 10% {last:.4g} vs 0.8 × first 5% = {0.8 * first:.4g}",
    }


def _mark(result: bool | None, na: str = "n/a") -> tuple:
    return ("text", "✓" if result else "✗") if result is not None else ("text", na)


def _smooth_bar(inp: Inputs, name: str) -> dict:
    run = inp.train.get(name)
    sm = loss_smoothness(run.metrics) if run and run.has_metrics else None
    return {
        "run": name,
        "bar": "smooth loss curve (heuristic)",
        "threshold": "no NaN/Inf; EMA end < EMA at 5%; EMA ≤ 1.5 × running min",
        "value": sm["value"] if sm else None,
        "result": sm["result"] if sm else None,
        "missing": sm is None,
    }


def quality_bars(inp: Inputs) -> list[dict]:
    """Every bar of §4 as {run, bar, threshold, value, result (True/False/None: n/a), missing} or {run, not_run}."""
    out = []
    tok_run = inp.config.get("tokenizer_run")
    tok = study_tokenizer(inp)
    if tok_run or tok:
        name = tok_run or (tok or {}).get("run")
        v = tok_psnr(tok)
        out.append(
            {
                "run": name,
                "bar": "tokenizer PSNR (tok_psnr_frame_mean, test_ood rollout list)",
                "threshold": f"≥ {TOK_PSNR_BAR:.0f} dB",
                "value": f"{v:.2f} dB" if finite(v) else None,
                "result": None if not finite(v) else bool(v >= TOK_PSNR_BAR),
                "missing": not finite(v),
            }
        )
        out.append(_smooth_bar(inp, name))
    for v in inp.variants:
        name = v["name"]
        reason = inp.not_run_reason(name)
        if reason is not None:
            out.append({"run": name, "not_run": reason})
            continue
        m = rollout_row(inp.rollout.get(name), "model") or {}
        cl = rollout_row(inp.rollout.get(name), "copy_last_context") or {}
        pooled, fm, clm = m.get("psnr_pooled"), m.get("psnr_frame_mean"), cl.get("psnr_frame_mean")
        out.append(
            {
                "run": name,
                "bar": "rollout psnr_pooled",
                "threshold": f"≥ {ROLLOUT_POOLED_BAR:.0f} dB",
                "value": f"{pooled:.2f} dB" if finite(pooled) else None,
                "result": bool(pooled >= ROLLOUT_POOLED_BAR) if finite(pooled) else None,
                "missing": not finite(pooled),
            }
        )
        both = finite(fm) and finite(clm)
        out.append(
            {
                "run": name,
                "bar": "rollout psnr_frame_mean > copy-last-context",
                "threshold": f"> {clm:.2f} dB" if finite(clm) else "> copy-last",
                "value": f"{fm:.2f} dB" if finite(fm) else None,
                "result": bool(fm > clm) if both else None,
                "missing": not both,
            }
        )
        out.append(_smooth_bar(inp, name))
        run = inp.train.get(name)
        if float(v.get("aux_weight") or 0.0) > 0:
            am = aux_mse_drop(run.metrics) if run and run.has_metrics else None
            out.append(
                {
                    "run": name,
                    "bar": "aux head MSE drops",
                    "threshold": "last 10% ≤ 0.8 × first 5%",
                    "value": am["value"] if am else None,
                    "result": am["result"] if am else None,
                    "missing": am is None,
                }
            )
        else:
            out.append(
                {
                    "run": name,
                    "bar": "aux head MSE drops",
                    "threshold": "last 10% ≤ 0.8 × first 5%",
                    "value": "no aux head",
                    "result": None,
                    "missing": False,
                }
            )
    return out


def build_quality_bars(inp: Inputs) -> Table:
    header = ["Run", "Bar", "Threshold", "Value", "Pass"]
    rows = []
    for b in quality_bars(inp):
        if "not_run" in b:
            r = not_run_row(b["run"], b["not_run"], 1, variant=b["run"])
            r.extra = ["not_run", "not run"]
            rows.append(r)
            continue
        res = MISSING if b.get("missing") else _mark(b["result"])
        rows.append(
            Row(
                [
                    ("text", b["run"]),
                    ("text", b["bar"]),
                    ("text", b["threshold"]),
                    ("text", b["value"]) if b["value"] is not None else MISSING,
                    res,
                ],
                ["ok", {True: "pass", False: "fail", None: "n/a"}[b["result"]] if not b.get("missing") else "missing"],
                variant=b["run"],
            )
        )
    caption = caption_text("quality_bars")
    return Table("quality_bars", "Quality bars", caption, header, "lllll", rows, [], ["status", "outcome"])
