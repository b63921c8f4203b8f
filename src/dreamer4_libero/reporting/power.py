"""The method-power table (issue 27): does the pipeline find action information where it exists?

One row per (world-model variant, feature) for `wm_spatial` and `wm_agent`, then the model-free
baselines `tok_latent` and `frame_diff`: held-out (probe_eval_test) probe R² in idm and policy mode
(video_only extraction for the world models, H = 1, all_valid frames, mean over probe seeds with
the task-level CI pooled over seeds, as Table 1), beside the rollout Δ vs copy-last (whole horizon
and the last third of the predicted frames) and Δ(true − shuffled actions), paired episode-bootstrap
CIs from the rollout record (test_ood).

The case of a variant (`classify`, stated in the caption):

- it USES its actions when the 95% CI of Δ(true − shuffled actions) has its lower bound > 0;
- a feature EXPOSES them when the task-level 95% CI of its idm-mode R² has a lower bound > 0 and
  > `tok_latent`'s idm-mode R² (mean over seeds: the tokenizer's own latents, so the world model must
  add to them; without a tok_latent record only the bound > 0 applies), and no seed flags it DEGENERATE;
- "uses its actions and its features expose them": uses, and at least one feature exposes;
  "uses its actions but its features do not expose them linearly": uses, and every feature with
  records fails the test; "does not use its actions": the Δ CI includes 0 or lies below it.
  Missing inputs leave the case undetermined ("—"), never a crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .builders import bin_extra, bin_extra_header, frames_label, run_variants, variant_notes
from .labels import model_name
from .reference import caption as caption_text
from .render import MISSING, Row, Table, fmt_num, render_cell
from .results import BASELINES, TEST, WM_FEATURES, Agg, Inputs, ProbeView, bin_delta, dig, finite, flag_text, study_bins

POWER_EXTRACTION = "video_only"
POWER_H = 1
POWER_SCORING = "all_valid"
POWER_MODES = ("idm", "policy")
POWER_BASELINES = ("tok_latent", "frame_diff")
BAR_BASELINE = "tok_latent"

CASE_EXPOSED = "uses its actions and its features expose them"
CASE_HIDDEN = "uses its actions but its features do not expose them linearly"
CASE_UNUSED = "does not use its actions"

HEADER_POWER = [
    "Model",
    "Features",
    "idm R² held-out [95% CI]",
    "policy R² held-out [95% CI]",
    "Δ vs copy-last (dB)",
    "Δ vs copy-last, frames 17–24 (dB)",
    "Δ true − shuffled actions (dB)",
    "Exposes actions (idm)",
    "Case",
    "Flag",
]


@dataclass
class Evidence:
    """One feature's idm-mode probe result, as the rule reads it."""

    feature: str
    mean: float | None
    ci_lo: float | None
    ci_hi: float | None = None
    degenerate: bool = False


def exposes(ev: Evidence, bar: float | None) -> bool | None:
    """True / False by the rule of the module docstring; None when the feature has no R² or CI."""
    if not (finite(ev.mean) and finite(ev.ci_lo)):
        return None
    return (not ev.degenerate) and ev.ci_lo > 0 and (bar is None or ev.ci_lo > bar)


def classify(delta_action: dict | None, evidence: Sequence[Evidence], bar: float | None) -> str | None:
    """The variant's case (one of the three CASE_ sentences), or None when the inputs do not decide it."""
    lo = dig(delta_action, ("ci",))
    lo = lo[0] if isinstance(lo, (list, tuple)) and lo else None
    if not finite(lo):
        return None
    if lo <= 0:
        return CASE_UNUSED
    verdicts = [exposes(e, bar) for e in evidence]
    if any(v is True for v in verdicts):
        return CASE_EXPOSED
    if any(v is False for v in verdicts):
        return CASE_HIDDEN
    return None


def _signed(x: float | None, nd: int) -> str:
    return fmt_num(x, nd, True, "md")


def _with_ci(x, ci, nd: int) -> str:
    """`x [lo, hi]` as the tables' Markdown cells write it (render_cell)."""
    return render_cell(("r2_ci" if nd == 3 else "dpsnr_ci", x, tuple(ci or (None, None))), "md")


def _flags(idm: Agg, pol: Agg) -> tuple:
    a = flag_text(idm.records) if idm.records else None
    b = flag_text(pol.records) if pol.records else None
    if a is None and b is None:
        return MISSING
    if a == b or b is None:
        return ("text", a)
    if a is None:
        return ("text", b)
    parts = [f"idm: {a}" if a else "", f"policy: {b}" if b else ""]
    return ("text", "; ".join(p for p in parts if p))


def _probe_extra(ok: bool, variant: str, feat: str, extraction: str, idm: Agg, pol: Agg) -> list:
    """The CSV columns of one power row from status to the policy-mode seeds."""
    status = "ok" if ok else "missing"
    idm_cols = [idm.mean, *idm.ci, idm.n_seeds]
    return [status, variant, feat, extraction, POWER_H, POWER_SCORING, *idm_cols, pol.mean, *pol.ci, pol.n_seeds]


def _is_degenerate(agg: Agg) -> bool:
    return any((r.get("flags") or {}).get("DEGENERATE") for r in agg.records)


def _yes_no(v: bool | None) -> tuple:
    return MISSING if v is None else ("text", "yes" if v else "no")


def _sentence(
    name: str, case: str | None, dact: dict, evidence: Sequence[Evidence], bar: float | None, reason_missing: str
) -> str:
    """The generated note of one variant: its case and the numbers that decide it."""
    head = f"{name}: " + (case if case else f"case undetermined ({reason_missing})")
    probes = "; ".join(
        f"{e.feature} {_with_ci(e.mean, (e.ci_lo, e.ci_hi), 3)}{' DEGENERATE' if e.degenerate else ''}"
        for e in evidence
    )
    bar_txt = (
        f"CI lower bound > 0 and > {BAR_BASELINE}'s {_signed(bar, 3)}"
        if finite(bar)
        else f"CI lower bound > 0 ({BAR_BASELINE} missing)"
    )
    return (
        f"{head} — Δ true − shuffled {_with_ci(dact.get('mean'), dact.get('ci'), 2)} dB; idm-mode "
        f"{POWER_EXTRACTION} held-out R²: {probes or '—'}; bar: {bar_txt}."
    )


def build_power(inp: Inputs, pv: ProbeView) -> Table:
    bins = study_bins(inp)
    last = bins[-1]
    header = list(HEADER_POWER)
    header[5] = f"Δ vs copy-last, {frames_label(last)} (dB)"
    extra_header = [
        "status",
        "variant",
        "feature",
        "extraction",
        "H",
        "scoring",
        "idm_r2",
        "idm_ci_lo",
        "idm_ci_hi",
        "idm_n_seeds",
        "policy_r2",
        "policy_ci_lo",
        "policy_ci_hi",
        "policy_n_seeds",
        "delta_copy_last",
        "delta_copy_last_ci_lo",
        "delta_copy_last_ci_hi",
        "delta_action",
        "delta_action_ci_lo",
        "delta_action_ci_hi",
        "exposes",
        "case",
        "bar_tok_latent_idm_r2",
    ] + bin_extra_header(bins)

    def probe(variant: str, feat: str, ext: str) -> tuple[Agg, Agg]:
        return tuple(pv.cell(variant, feat, ext, mode, POWER_H, POWER_SCORING, TEST) for mode in POWER_MODES)

    bar_agg = pv.cell(BASELINES, BAR_BASELINE, "none", "idm", POWER_H, POWER_SCORING, TEST, ci=False)
    bar = bar_agg.mean if finite(bar_agg.mean) else None
    rows, notes = [], []
    for v in run_variants(inp, rows):
        name = v["name"]
        rec = inp.rollout.get(name)
        test = dig(rec, ("sets", "test_ood")) or {}
        dcl, dact = test.get("delta_copy_last") or {}, test.get("delta_action") or {}
        dlast = bin_delta(rec, "delta_copy_last_bins", last)
        per_feat = []
        for feat in WM_FEATURES:
            idm, pol = probe(name, feat, POWER_EXTRACTION)
            ev = Evidence(feat, idm.mean, idm.ci[0], idm.ci[1], _is_degenerate(idm))
            per_feat.append((feat, idm, pol, ev))
        evidence = [ev for _, idm, _, ev in per_feat if idm.records]
        case = classify(dact, evidence, bar)
        missing = (
            "no rollout record"
            if rec is None
            else ("no Δ true − shuffled CI" if not finite((dact.get("ci") or [None])[0]) else "no idm probe records")
        )
        notes.append(_sentence(name, case, dact, evidence, bar, missing))
        for feat, idm, pol, ev in per_feat:
            ex = exposes(ev, bar) if idm.records else None
            cells = [
                ("text", model_name(v)),
                ("text", feat),
                ("r2_ci", idm.mean, idm.ci),
                ("r2_ci", pol.mean, pol.ci),
                ("dpsnr_ci", dcl.get("mean"), tuple(dcl.get("ci") or (None, None))),
                ("dpsnr_ci", dlast.get("mean"), tuple(dlast.get("ci") or (None, None))),
                ("dpsnr_ci", dact.get("mean"), tuple(dact.get("ci") or (None, None))),
                _yes_no(ex),
                ("text", case) if case else MISSING,
                _flags(idm, pol),
            ]
            extra = [
                *_probe_extra(bool(idm.records and rec), name, feat, POWER_EXTRACTION, idm, pol),
                dcl.get("mean"),
                *(dcl.get("ci") or [None, None]),
                dact.get("mean"),
                *(dact.get("ci") or [None, None]),
                ex,
                case,
                bar,
            ] + bin_extra(rec, bins)
            rows.append(Row(cells, extra, variant=name))
    for feat in POWER_BASELINES:
        idm, pol = probe(BASELINES, feat, "none")
        cells = [
            ("text", "baseline"),
            ("text", feat),
            ("r2_ci", idm.mean, idm.ci),
            ("r2_ci", pol.mean, pol.ci),
            MISSING,
            MISSING,
            MISSING,
            MISSING,
            ("text", "model-free baseline"),
            _flags(idm, pol),
        ]
        extra = (
            _probe_extra(bool(idm.records), BASELINES, feat, "none", idm, pol)
            + [None] * 9
            + [bar if feat == BAR_BASELINE else None]
        )
        rows.append(Row(cells, extra))
    caption = caption_text(
        "power",
        H=POWER_H,
        scoring=POWER_SCORING,
        last_frames=frames_label(last),
        case_exposed=CASE_EXPOSED,
        case_hidden=CASE_HIDDEN,
        case_unused=CASE_UNUSED,
    )
    return Table(
        "power", "Method power", caption, header, "llllllllll", rows, notes + variant_notes(inp.variants), extra_header
    )
