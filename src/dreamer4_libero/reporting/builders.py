"""The table builders (evaluation.md §4): Table 1 (probe), Table 2 (world-model quality), the two
verbatim paper tables, controls and degeneracy. Each builder reads `Inputs` (reporting/results.py)
and returns a `Table` (reporting/render.py); the quality bars are in reporting/quality.py and the
method-power table in reporting/power.py. Reference numbers and captions come from reference.yaml.

Row order is fixed: the config order of the variants, then the reference rows; a variant that was
not run gets one "not run: <reason>" row, never numbers.
"""

from __future__ import annotations

import re
from typing import Iterator, Sequence

from .labels import model_name, variant_label
from .reference import (
    ARCHIVE_VARIANTS,
    ARCHIVED_R2,
    ARCHIVED_ROLLOUT,
    ARCHIVED_TOKENIZER_PSNR,
    DAGGER,
    QUOTED_NOTE,
    QUOTED_PROBE,
)
from .reference import caption as caption_text
from .render import MISSING, Row, Table
from .results import (
    BASELINES,
    CONTROLS,
    EXTRACTIONS,
    PROBE_MODES,
    TEST,
    TRAIN,
    WM_FEATURES,
    Inputs,
    ProbeView,
    baseline_features,
    bin_delta,
    dig,
    finite,
    flag_text,
    is_num,
    mean_finite,
    n_params_of,
    reference_rollout,
    rollout_row,
    study_bins,
    study_tokenizer,
    tok_psnr,
)

HEADER_TABLE1 = [
    "Model",
    "Features",
    "Held-out-task R² (H=1)",
    "± std (3 seeds)",
    "95% CI",
    "Seen-task R²",
    "Params",
    "Archived",
    "Flag",
]
HEADER_TABLE2 = [
    "Model",
    "Tokenizer PSNR (dB)",
    "Rollout PSNR (dB, 8→24)",
    "Pooled PSNR (dB)",
    "Δ vs copy-last (dB)",
    "Δ vs copy-last, frames 17–24 (dB)",
    "Δ true − shuffled actions (dB)",
    "Params",
    "Archived rollout",
]
HEADER_PAPER_PROBE = ["Variant", "params", "test R² (action probe, H=1, mean of 3 seeds)"]
HEADER_PAPER_ROLLOUT = ["Variant", "rollout PSNR (LIBERO test_ood)"]


def not_run_row(
    display: str, reason: str, n_cols_label: int, label_cells: list[tuple] | None = None, variant: str | None = None
) -> Row:
    """A variant that was not run: label cells, then one "not run: <reason>" cell, never numbers."""
    cells = label_cells or [("text", display)] + [MISSING] * (n_cols_label - 1)
    return Row(
        cells=cells, not_run=reason, n_label=n_cols_label, variant=variant, extra=["not_run", variant or display]
    )


def run_variants(inp: "Inputs", rows: list) -> Iterator[dict]:
    """The variants that ran, in table order; each one that did not gets its two-label-cell not-run row in `rows`."""
    for v in inp.variants:
        reason = inp.not_run_reason(v["name"])
        if reason is None:
            yield v
        else:
            rows.append(not_run_row(model_name(v), reason, 2, [("text", model_name(v)), MISSING], variant=v["name"]))


def variant_notes(variants: Sequence[dict]) -> list[str]:
    """Stand-in notes (‡), then which DMControl weights each initialised variant loaded."""
    return [f"‡ {v['name']} is a stand-in: {v['stand_in_for']}" for v in variants if v.get("stand_in_for")] + [
        f"{v['name']}: {v['init_note']}" for v in variants if v.get("init_note") and v.get("runnable")
    ]


def _n_tasks(recs: Sequence[dict], set_name: str) -> int | None:
    for r in recs:
        n = dig(r, ("n", set_name, "tasks"))
        if is_num(n):
            return int(n)
    return None


def build_table1(inp: Inputs, pv: ProbeView) -> Table:
    seeds = inp.seeds
    header = list(HEADER_TABLE1)
    header[3] = f"± std ({len(seeds)} seeds)"
    extra_header = (
        ["status", "variant", "feature", "space_mode", "extraction", "probe_mode", "H", "scoring", "n_seeds"]
        + [f"heldout_r2_seed{s}" for s in seeds]
        + ["ci_task_lo", "ci_task_hi"]
        + [f"seen_r2_seed{s}" for s in seeds]
        + ["n_params", "archived"]
    )
    rows, all_recs = [], []
    for v in run_variants(inp, rows):
        name = v["name"]
        params = n_params_of(inp, name)
        for feat in WM_FEATURES:
            held = pv.cell(name, feat, "past_actions", "policy", 1, "all_valid", TEST)
            seen = pv.cell(name, feat, "past_actions", "policy", 1, "all_valid", TRAIN, ci=False)
            all_recs += held.records
            std_cell = ("text", "n/a (fixed lists)") if held.fixed_lists else ("std", held.std)
            archived = ARCHIVED_R2.get(name) if feat == "wm_agent" else None
            space = next((r.get("space_mode") for r in held.records if r.get("space_mode")), v.get("space_mode"))
            cells = [
                ("text", model_name(v)),
                ("text", feat),
                ("r2", held.mean),
                std_cell,
                ("ci_r2", held.ci),
                ("r2", seen.mean),
                ("params", params),
                ("r2", archived) if archived is not None else MISSING,
                ("text", flag_text(held.records)) if held.records else MISSING,
            ]
            extra = (
                [
                    "ok" if held.records else "missing",
                    name,
                    feat,
                    space,
                    "past_actions",
                    "policy",
                    1,
                    "all_valid",
                    held.n_seeds,
                ]
                + [held.values.get(s) for s in seeds]
                + list(held.ci)
                + [seen.values.get(s) for s in seeds]
                + [params, archived]
            )
            rows.append(Row(cells, extra, variant=name))
    for model, _label, r2, params in QUOTED_PROBE:
        cells = [
            ("text", model + " " + DAGGER),
            ("text", "—"),
            ("r2", r2),
            MISSING,
            MISSING,
            MISSING,
            ("text", params),
            MISSING,
            ("text", ""),
        ]
        rows.append(
            Row(
                cells,
                ["quoted", model, None, None, None, None, 1, None, None]
                + [None] * len(seeds)
                + [None, None]
                + [None] * len(seeds)
                + [None, None],
            )
        )
    n_t = _n_tasks(all_recs, TEST)
    caption = caption_text(
        "table1_probe", held_out_tasks=f", {n_t} held-out tasks" if n_t else "", n_seeds=len(seeds), B=inp.B
    )
    notes = [QUOTED_NOTE] + variant_notes(inp.variants)
    return Table(
        "table1_probe", "Table 1 — Action probe (extended)", caption, header, "llrlrrrrl", rows, notes, extra_header
    )


def frames_label(frames: tuple[int, int]) -> str:
    return f"frames {frames[0]}–{frames[1]}" if frames[0] != frames[1] else f"frame {frames[0]}"


def bin_extra_header(bins: Sequence[tuple[int, int]]) -> list[str]:
    return [
        f"{k}_f{a}_{b}{suf}"
        for k in ("delta_copy_last", "delta_action")
        for a, b in bins
        for suf in ("", "_ci_lo", "_ci_hi")
    ]


def bin_extra(rec: dict | None, bins: Sequence[tuple[int, int]]) -> list:
    out = []
    for k in ("delta_copy_last_bins", "delta_action_bins"):
        for fr in bins:
            d = bin_delta(rec, k, fr)
            out += [d.get("mean"), *(d.get("ci") or [None, None])]
    return out


def build_table2(inp: Inputs) -> Table:
    tok = study_tokenizer(inp)
    bins = study_bins(inp)
    last = bins[-1]
    header = list(HEADER_TABLE2)
    header[5] = f"Δ vs copy-last, {frames_label(last)} (dB)"
    extra_header = [
        "status",
        "variant",
        "psnr_frame_mean_ci_lo",
        "psnr_frame_mean_ci_hi",
        "psnr_pooled_h16",
        "delta_copy_last_ci_lo",
        "delta_copy_last_ci_hi",
        "delta_action_ci_lo",
        "delta_action_ci_hi",
        "n_windows",
        "tokenizer_source",
        "n_params",
        "archived_rollout",
    ] + bin_extra_header(bins)
    rows = []
    for v in inp.variants:
        name = v["name"]
        reason = inp.not_run_reason(name)
        if reason is not None:
            rows.append(not_run_row(model_name(v), reason, 1, variant=name))
            continue
        rec = inp.rollout.get(name)
        own_tok = (rec or {}).get("tokenizer_eval")
        tok_val = tok_psnr(own_tok) if own_tok else tok_psnr(tok)
        m = rollout_row(rec, "model") or {}
        test = dig(rec, ("sets", "test_ood")) or {}
        dcl, dact = test.get("delta_copy_last") or {}, test.get("delta_action") or {}
        dlast = bin_delta(rec, "delta_copy_last_bins", last)
        params = n_params_of(inp, name)
        archived = ARCHIVED_ROLLOUT.get(name)
        ci = m.get("ci") or [None, None]
        cells = [
            ("text", model_name(v)),
            ("psnr", tok_val),
            ("psnr", m.get("psnr_frame_mean")),
            ("psnr", m.get("psnr_pooled")),
            ("dpsnr_ci", dcl.get("mean"), tuple(dcl.get("ci") or (None, None))),
            ("dpsnr_ci", dlast.get("mean"), tuple(dlast.get("ci") or (None, None))),
            ("dpsnr_ci", dact.get("mean"), tuple(dact.get("ci") or (None, None))),
            ("params", params),
            ("psnr", archived) if archived is not None else MISSING,
        ]
        extra = [
            "ok" if rec else "missing",
            name,
            ci[0],
            ci[1],
            m.get("psnr_pooled_h16"),
            *(dcl.get("ci") or [None, None]),
            *(dact.get("ci") or [None, None]),
            test.get("n_windows"),
            "own (rollout record)" if own_tok else "study tokenizer",
            params,
            archived,
            *bin_extra(rec, bins),
        ]
        rows.append(Row(cells, extra, variant=name))
    ref_name, ref = reference_rollout(inp)
    cl, ceil = rollout_row(ref, "copy_last_context") or {}, rollout_row(ref, "tokenizer_ceiling") or {}
    tok_params = next(
        (
            int(r["n_params"]["tokenizer"])
            for r in [ref or {}] + list(inp.probe.values())
            if is_num(dig(r, ("n_params", "tokenizer")))
        ),
        None,
    )
    rows.append(
        Row(
            [
                ("text", "copy-last-context frame"),
                MISSING,
                ("psnr", cl.get("psnr_frame_mean")),
                ("psnr", cl.get("psnr_pooled")),
                MISSING,
                MISSING,
                MISSING,
                MISSING,
                MISSING,
            ],
            [
                "reference",
                "copy_last_context",
                *(cl.get("ci") or [None, None]),
                cl.get("psnr_pooled_h16"),
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
            ],
        )
    )
    rows.append(
        Row(
            [
                ("text", "tokenizer reconstruction ceiling"),
                ("psnr", tok_psnr(tok)),
                ("psnr", ceil.get("psnr_frame_mean")),
                ("psnr", ceil.get("psnr_pooled")),
                MISSING,
                MISSING,
                MISSING,
                ("params", tok_params),
                MISSING,
            ],
            [
                "reference",
                "tokenizer_ceiling",
                *(ceil.get("ci") or [None, None]),
                ceil.get("psnr_pooled_h16"),
                None,
                None,
                None,
                None,
                None,
                "study tokenizer",
                tok_params,
                None,
            ],
        )
    )
    # issue 27: the same round trip in independent chunks of the tokenizer's training length ("—" in older records)
    chk = rollout_row(ref, "tokenizer_ceiling_chunked") or {}
    n_chunk = dig(ref, ("sets", "test_ood", "ceiling_chunk"))
    rows.append(
        Row(
            [
                (
                    "text",
                    "tokenizer reconstruction ceiling, chunks of "
                    + (f"{n_chunk} frames (its training length)" if n_chunk else "its training length"),
                ),
                MISSING,
                ("psnr", chk.get("psnr_frame_mean")),
                ("psnr", chk.get("psnr_pooled")),
                MISSING,
                MISSING,
                MISSING,
                ("params", tok_params) if chk else MISSING,
                MISSING,
            ],
            [
                "reference",
                "tokenizer_ceiling_chunked",
                *(chk.get("ci") or [None, None]),
                chk.get("psnr_pooled_h16"),
                None,
                None,
                None,
                None,
                None,
                "study tokenizer",
                tok_params if chk else None,
                None,
            ],
        )
    )
    masked = tok_psnr(tok, "tok_psnr_masked_train_style")
    caption = caption_text("table2_quality", last_frames=frames_label(last), reference=ref_name or "—")
    notes = [
        caption_text(
            "archived_tokenizer_note",
            psnr=f"{ARCHIVED_TOKENIZER_PSNR:.2f}",
            ours=f", which is {masked:.2f} dB for our tokenizer)." if finite(masked) else ").",
        )
    ]
    notes += variant_notes(inp.variants)
    return Table(
        "table2_quality",
        "Table 2 — World-model quality (extended)",
        caption,
        header,
        "lrrrrrrrr",
        rows,
        notes,
        extra_header,
    )


def _paper_order(inp: Inputs) -> list[dict]:
    """The four archive rows (archive order), then our other variants in config order."""
    out = []
    for name in ARCHIVE_VARIANTS:
        out.append(inp.variant(name) or {"name": name, "runnable": False, "not_run_reason": "not in the tables config"})
    out += [v for v in inp.variants if v["name"] not in ARCHIVE_VARIANTS]
    return out


def _reason(inp: Inputs, v: dict) -> str | None:
    if inp.variant(v["name"]) is None:
        return v.get("not_run_reason") or "not in the tables config"
    return inp.not_run_reason(v["name"])


def _variant_row_notes(rows_vs: Sequence[tuple[dict, str]]) -> list[str]:
    return [
        f"Row “{label}” is filled by a stand-in: {v['stand_in_for']}" for v, label in rows_vs if v.get("stand_in_for")
    ] + [f"Row “{label}”: {v['init_note']}" for v, label in rows_vs if v.get("init_note") and v.get("runnable")]


def _paper_rows(inp: Inputs, table: str, rows: list, labelled: list) -> Iterator[tuple[dict, str]]:
    """(variant, label) of the paper table's variants that ran, in paper order; every variant's (variant,
    label) goes to `labelled` and each one that did not run gets its not-run row in `rows`."""
    for v in _paper_order(inp):
        label = variant_label(v, table)
        labelled.append((v, label))
        reason = _reason(inp, v)
        if reason is None:
            yield v, label
        else:
            rows.append(not_run_row(label, reason, 1, variant=v["name"]))


def build_paper_probe(inp: Inputs, pv: ProbeView) -> Table:
    header = list(HEADER_PAPER_PROBE)
    header[2] = f"test R² (action probe, H=1, mean of {len(inp.seeds)} seeds)"
    rows, labelled = [], []
    for v, label in _paper_rows(inp, "probe", rows, labelled):
        agg = pv.cell(v["name"], "wm_agent", "past_actions", "policy", 1, "all_valid", TEST, ci=False)
        rows.append(
            Row(
                [("text", label), ("params", n_params_of(inp, v["name"])), ("r2", agg.mean)],
                ["ok" if agg.records else "missing", v["name"], agg.n_seeds],
                variant=v["name"],
            )
        )
    for _model, label, r2, params in QUOTED_PROBE:
        rows.append(Row([("text", label + " " + DAGGER), ("text", params), ("r2", r2)], ["quoted", None, None]))
    caption = caption_text("paper_table_probe", n_seeds=len(inp.seeds))
    notes = [QUOTED_NOTE] + _variant_row_notes(labelled)
    return Table(
        "paper_table_probe",
        "Paper table — action probe (verbatim layout)",
        caption,
        header,
        "lrr",
        rows,
        notes,
        ["status", "variant", "n_seeds"],
    )


def build_paper_rollout(inp: Inputs) -> Table:
    rows, labelled = [], []
    for v, label in _paper_rows(inp, "rollout", rows, labelled):
        m = rollout_row(inp.rollout.get(v["name"]), "model") or {}
        rows.append(
            Row(
                [("text", label), ("psnr", m.get("psnr_pooled"))],
                ["ok" if m else "missing", v["name"], m.get("psnr_frame_mean")],
                variant=v["name"],
            )
        )
    caption = caption_text("paper_table_rollout")
    return Table(
        "paper_table_rollout",
        "Paper table — rollout PSNR (verbatim layout)",
        caption,
        list(HEADER_PAPER_ROLLOUT),
        "lr",
        rows,
        _variant_row_notes(labelled),
        ["status", "variant", "psnr_frame_mean"],
    )


def _wm_features(inp: Inputs, name: str) -> list[str]:
    present = {k[1] for k in inp.probe if k[0] == name}
    return list(WM_FEATURES) + sorted(present - set(WM_FEATURES))


def _extractions(inp: Inputs, name: str) -> list[str]:
    present = {k[2] for k in inp.probe if k[0] == name}
    return list(EXTRACTIONS) + sorted(present - set(EXTRACTIONS))


def _sections(inp: Inputs) -> list[tuple[str, int]]:
    """(probe_mode, H) pairs that have at least one record, in mode then H order."""
    present = {(k[3], k[4]) for k in inp.probe}
    modes = list(PROBE_MODES) + sorted({m for m, _ in present} - set(PROBE_MODES))
    Hs = sorted(set(inp.H_list) | {h for _, h in present})
    return [(m, h) for m in modes for h in Hs if (m, h) in present]


def build_controls(inp: Inputs, pv: ProbeView) -> Table:
    seeds = inp.seeds
    header = [
        "Model",
        "Features",
        "Extraction",
        "Mode",
        "H",
        "Held-out-task R²",
        f"± std ({len(seeds)} seeds)",
        "95% CI",
        "Seen-task R²",
        "Δ vs lagged_actions (paired 95% CI)",
        "Flag",
    ]
    extra_header = (
        ["status", "row_kind", "variant", "feature", "extraction", "probe_mode", "H", "scoring", "n_seeds"]
        + [f"heldout_r2_seed{s}" for s in seeds]
        + ["ci_task_lo", "ci_task_hi", "label_shuffle_r2", "delta_lagged", "delta_lagged_ci_lo", "delta_lagged_ci_hi"]
    )
    rows = []
    bfeats = baseline_features(inp)

    def feature_row(model, variant, feat, extraction, mode, H, predictor="probe", kind="feature", delta=False):
        held = pv.cell(variant, feat, extraction, mode, H, "common_Hmax", TEST, predictor)
        seen = pv.cell(variant, feat, extraction, mode, H, "common_Hmax", TRAIN, predictor, ci=False)
        shuf = pv.cell(variant, feat, extraction, mode, H, "common_Hmax", TEST, "label_shuffle", ci=False)
        std_cell = ("text", "n/a (fixed lists)") if held.fixed_lists else ("std", held.std)
        d_cell, d = MISSING, (None, (None, None))
        if delta:
            mean, ci, status = pv.paired_diff(
                (variant, feat, extraction, mode, H),
                (BASELINES, "lagged_actions", "none", mode, H),
                "common_Hmax",
                TEST,
            )
            d = (mean, ci)
            d_cell = ("r2_ci", mean, ci) if mean is not None else (("text", status) if status else MISSING)
        flags = ("text", flag_text(held.records)) if (held.records and predictor == "probe") else MISSING
        feat_txt = feat if kind != "control" else "—"
        cells = [
            ("text", model),
            ("text", feat_txt),
            ("text", extraction),
            ("text", mode),
            ("text", str(H)),
            ("r2", held.mean),
            std_cell,
            ("ci_r2", held.ci),
            ("r2", seen.mean),
            d_cell,
            flags,
        ]
        extra = (
            ["ok" if held.records else "missing", kind, variant, feat, extraction, mode, H, "common_Hmax", held.n_seeds]
            + [held.values.get(s) for s in seeds]
            + list(held.ci)
            + [shuf.mean if predictor == "probe" else None, d[0], d[1][0], d[1][1]]
        )
        return Row(cells, extra, variant=variant if variant != BASELINES else None)

    for mode, H in _sections(inp):
        # controls of the SETBLOCKs: from the lagged_actions records, else the first record in a fixed order
        src = None
        cands = [(BASELINES, f, "none") for f in bfeats] + [
            (v["name"], f, e)
            for v in inp.variants
            for f in _wm_features(inp, v["name"])
            for e in _extractions(inp, v["name"])
        ]
        for c in cands:
            if pv.has(*c, mode, H):
                src = c
                break
        for ctl in CONTROLS:
            if src is None:
                continue
            label = ctl if ctl != "label_shuffle" else f"label_shuffle (on {src[1]} features)"
            rows.append(feature_row(label, src[0], src[1], src[2], mode, H, predictor=ctl, kind="control"))
            rows[-1].cells[2] = ("text", "—" if ctl != "label_shuffle" else src[2])
        for f in bfeats:
            rows.append(feature_row("baseline", BASELINES, f, "none", mode, H))
        for v in inp.variants:
            if inp.not_run_reason(v["name"]) is not None:
                continue
            for f in _wm_features(inp, v["name"]):
                for e in _extractions(inp, v["name"]):
                    if f not in WM_FEATURES and not pv.has(v["name"], f, e, mode, H):
                        continue
                    if e not in EXTRACTIONS and not pv.has(v["name"], f, e, mode, H):
                        continue
                    rows.append(feature_row(model_name(v), v["name"], f, e, mode, H, delta=True))
    for v in inp.variants:
        reason = inp.not_run_reason(v["name"])
        if reason is not None:
            r = not_run_row(model_name(v), reason, 5, [("text", model_name(v))] + [MISSING] * 4, variant=v["name"])
            r.extra = ["not_run", "variant", v["name"]]
            rows.append(r)
    caption = caption_text("controls")
    return Table(
        "controls", "Controls", caption, header, "lllllrlrrll", rows, variant_notes(inp.variants), extra_header
    )


DEGEN_KEYS = (
    "total_variance",
    "relative_variation",
    "n_nonconstant",
    "effective_rank",
    "time_explained",
    "episode_specificity",
    "in_sample_r2",
    "cv_r2",
)


def build_degeneracy(inp: Inputs) -> Table:
    header = [
        "Model",
        "Features",
        "Extraction",
        "Total variance",
        "Relative variation",
        "Non-constant columns",
        "Effective rank",
        "Time-explained variance",
        "Episode specificity",
        "In-sample R²",
        "Grouped-CV R²",
        "Flag",
        "Reasons",
    ]
    extra_header = ["status", "variant", "feature", "extraction", "probe_mode", "H", "n_seeds"]
    rows = []

    def drow(model, variant, feat, ext):
        recs = [inp.probe.get((variant, feat, ext, "policy", 1, s)) for s in inp.seeds]
        recs = [r for r in recs if r is not None]
        vals = {k: mean_finite([dig(r, ("degeneracy", k)) for r in recs]) for k in DEGEN_KEYS}
        # the same criterion fires in several seeds with slightly different numbers: list each once (first seed's text)
        seen, reasons = set(), []
        for r in recs:
            for x in dig(r, ("degeneracy", "reasons")) or []:
                key = re.sub(r"[-+]?\d[\d.e+-]*", "#", str(x))
                if key not in seen:
                    seen.add(key)
                    reasons.append(f"{x} (seed {r['seed']})" if len(recs) > 1 else str(x))
        cells = [("text", model), ("text", feat), ("text", ext)]
        for k in DEGEN_KEYS:
            cells.append(("r2", vals[k]) if k in ("in_sample_r2", "cv_r2") else ("num", vals[k]))
        cells += [("text", flag_text(recs)) if recs else MISSING, ("text", "; ".join(reasons)) if recs else MISSING]
        return Row(
            cells,
            ["ok" if recs else "missing", variant, feat, ext, "policy", 1, len(recs)],
            variant=variant if variant != BASELINES else None,
        )

    for v in inp.variants:
        reason = inp.not_run_reason(v["name"])
        if reason is not None:
            rows.append(
                not_run_row(model_name(v), reason, 3, [("text", model_name(v)), MISSING, MISSING], variant=v["name"])
            )
            continue
        for f in _wm_features(inp, v["name"]):
            for e in _extractions(inp, v["name"]):
                if (f in WM_FEATURES and e in EXTRACTIONS) or pv_has_any(inp, v["name"], f, e):
                    rows.append(drow(model_name(v), v["name"], f, e))
    for f in baseline_features(inp):
        rows.append(drow("baseline", BASELINES, f, "none"))
    caption = caption_text("degeneracy")
    return Table(
        "degeneracy", "Degeneracy", caption, header, "lllrrrrrrrrll", rows, variant_notes(inp.variants), extra_header
    )


def pv_has_any(inp: Inputs, variant: str, feat: str, ext: str) -> bool:
    return any(k[:3] == (variant, feat, ext) for k in inp.probe)
