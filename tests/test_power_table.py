"""The method-power table (issue 27, reporting/power.py) and Table 2's per-horizon column.

The case rule on hand-made evidence, then the table on schema-true synthetic records
(test_tables.write_synthetic_results) edited so that each of the three cases, a missing rollout
record, a not-run variant and missing baselines occur."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

import test_tables as TT
from dreamer4_libero.fileio import sha256_file, write_json
from dreamer4_libero.reporting import power as P
from dreamer4_libero.reporting import render as RD
from dreamer4_libero.reporting import results as RS
from dreamer4_libero.reporting import tables as T
from test_tables import _md_rows, _row, load, write_synthetic_results


# ---------------------------------------------------------------------------- the rule


def _ev(mean, lo, hi=None, feat="wm_spatial", degenerate=False):
    return P.Evidence(feat, mean, lo, hi if hi is not None else (mean + 0.1 if mean is not None else None), degenerate)


@pytest.mark.parametrize(
    "delta_ci, evidence, bar, want",
    [
        ([0.1, 0.5], [_ev(0.30, 0.10)], 0.02, P.CASE_EXPOSED),
        (
            [0.1, 0.5],
            [_ev(0.05, 0.01), _ev(0.30, 0.10, feat="wm_agent")],
            0.02,
            P.CASE_EXPOSED,
        ),  # one feature is enough
        ([0.1, 0.5], [_ev(0.30, 0.01)], 0.02, P.CASE_HIDDEN),  # CI bound above 0 but not above tok_latent
        ([0.1, 0.5], [_ev(0.30, 0.10)], 0.20, P.CASE_HIDDEN),  # mean above the bar is not enough
        ([0.1, 0.5], [_ev(0.30, -0.05)], None, P.CASE_HIDDEN),  # no tok_latent: bound > 0 still needed
        ([0.1, 0.5], [_ev(0.30, 0.10)], None, P.CASE_EXPOSED),
        ([0.1, 0.5], [_ev(0.90, 0.80, degenerate=True)], 0.02, P.CASE_HIDDEN),  # DEGENERATE never counts
        ([0.1, 0.5], [_ev(None, None), _ev(0.05, 0.00)], 0.02, P.CASE_HIDDEN),  # a missing feature is skipped
        ([0.0, 0.5], [_ev(0.30, 0.10)], 0.02, P.CASE_UNUSED),  # CI touching 0 includes it
        ([-0.2, 0.5], [_ev(0.30, 0.10)], 0.02, P.CASE_UNUSED),
        ([-0.5, -0.1], [], 0.02, P.CASE_UNUSED),
        ([0.1, 0.5], [], 0.02, None),  # uses, but no probe records
        ([0.1, 0.5], [_ev(None, None)], 0.02, None),
        ([None, None], [_ev(0.30, 0.10)], 0.02, None),  # no rollout delta
    ],
)
def test_classify(delta_ci, evidence, bar, want):
    assert P.classify({"mean": 0.3, "ci": delta_ci}, evidence, bar) == want


def test_classify_without_delta_and_exposes():
    assert P.classify(None, [_ev(0.3, 0.1)], 0.02) is None
    assert P.classify({}, [_ev(0.3, 0.1)], 0.02) is None
    assert P.exposes(_ev(0.3, 0.1), 0.02) is True and P.exposes(_ev(0.3, 0.1), 0.1) is False
    assert P.exposes(_ev(None, None), 0.02) is None


# ---------------------------------------------------------------------------- the table


def _rewrite_probe(summary: Path, pred, mutate) -> int:
    """Edit the records of a summary matching pred(entry) in place; keeps the listed sha256 right."""
    data = json.loads(summary.read_text())
    n = 0
    for ent in data["records"]:
        if pred(ent):
            p = summary.parent / ent["path"]
            rec = json.loads(p.read_text())
            mutate(rec)
            write_json(p, rec)
            ent["sha256"] = sha256_file(p)
            n += 1
    write_json(summary, data)
    return n


def _rewrite_rollout(path: Path, mutate) -> None:
    rec = json.loads(path.read_text())
    mutate(rec)
    write_json(path, rec)


def _add_baselines(res: dict, feats) -> None:
    """Probe records of extra model-free baselines (tok_latent, frame_diff) in the baselines summary."""
    summ = next(p for p in res["probe_summaries"] if p.parent.name == RS.BASELINES)
    data = json.loads(summ.read_text())
    for f in feats:
        for mode, H in TT.MODES:
            for s in TT.SEEDS:
                name = f"{f}__none__{mode}__H{H}__seed{s}.json"
                write_json(summ.parent / name, TT.probe_record(RS.BASELINES, f, "none", mode, H, s))
                data["records"].append(
                    {
                        "path": name,
                        "sha256": sha256_file(summ.parent / name),
                        "feature": f,
                        "extraction": "none",
                        "probe_mode": mode,
                        "H": H,
                        "seed": s,
                    }
                )
    write_json(summ, data)


def _cases(root: Path) -> dict:
    """phase3: uses + exposes; phase6: does not use (Δ CI includes 0); 276M: uses, wm_spatial DEGENERATE
    (not exposed); agent_reads_leakfree: no rollout record; dmcontrol: not run; no tok_latent/frame_diff."""
    res = write_synthetic_results(root)
    roll = {p.parent.name: p for p in res["rollout"]}

    def unused(rec):
        for s in rec["sets"].values():
            s["delta_action"] = {"mean": 0.1, "ci": [-0.2, 0.4]}

    _rewrite_rollout(roll["dynamics_aux_phase6"], unused)
    summ = next(p for p in res["probe_summaries"] if p.parent.name == "dynamics_aux_param_matched_276M")
    assert (
        _rewrite_probe(summ, lambda e: e["feature"] == "wm_spatial", lambda r: r["flags"].update({"DEGENERATE": True}))
        > 0
    )
    res["rollout"] = [p for p in res["rollout"] if p.parent.name != "dynamics_aux_agent_reads_leakfree"]
    return res


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict:
    res = _cases(tmp_path_factory.mktemp("power"))
    out = res["root"] / "tables"
    T.write_tables(load(res), out, plots=False)
    return {"res": res, "out": out, "md": (out / "power.md").read_text()}


def test_power_files_and_the_three_cases(cases):
    out, md = cases["out"], cases["md"]
    for ext in ("md", "csv", "tex"):
        assert (out / f"power.{ext}").stat().st_size > 0
    assert "## Method power" in (out / "tables.md").read_text()
    assert '<section id="power">' in (out / "tables.html").read_text()
    rows = _md_rows(md)
    assert rows[0] == [
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
    want = {
        "dynamics_phase3": P.CASE_EXPOSED,
        "dynamics_aux_phase6": P.CASE_UNUSED,
        "dynamics_aux_param_matched_276M ‡": P.CASE_HIDDEN,
    }
    for name, case in want.items():
        for feat in ("wm_spatial", "wm_agent"):
            assert _row(rows, name, feat)[8] == case, (name, feat)
    # exposes: wm_spatial of phase3 yes; every agent-token row of the synthetic records is DEGENERATE: no
    assert _row(rows, "dynamics_phase3", "wm_spatial")[7] == "yes"
    assert _row(rows, "dynamics_phase3", "wm_agent")[7] == "no"
    assert _row(rows, "dynamics_phase3", "wm_agent")[9].startswith("DEGENERATE")
    assert _row(rows, "dynamics_aux_param_matched_276M ‡", "wm_spatial")[7] == "no"
    assert "DEGENERATE" in _row(rows, "dynamics_aux_param_matched_276M ‡", "wm_spatial")[9]
    # rollout numbers come from the record: Δ vs copy-last 14 − 12, last third 2 − 1.5 + 3.0, Δ action
    r = _row(rows, "dynamics_phase3", "wm_spatial")
    assert r[4:7] == ["+2.00 [+1.60, +2.40]", "+3.50 [+3.10, +3.90]", "+0.70 [+0.20, +1.20]"]
    assert _row(rows, "dynamics_aux_phase6", "wm_agent")[6] == "+0.10 [−0.20, +0.40]"
    # the generated sentences, one per run variant, with the deciding numbers
    assert f"dynamics_phase3: {P.CASE_EXPOSED} — Δ true − shuffled +0.70 [+0.20, +1.20] dB" in md
    assert f"dynamics_aux_phase6: {P.CASE_UNUSED} — Δ true − shuffled +0.10 [−0.20, +0.40] dB" in md
    assert f"dynamics_aux_param_matched_276M: {P.CASE_HIDDEN}" in md
    assert "CI lower bound > 0 (tok_latent missing)" in md


def test_power_missing_inputs_give_dashes(cases):
    rows = _md_rows(cases["md"])
    # no rollout record: rollout cells and the case are dashes, the probe cells are there
    r = _row(rows, "dynamics_aux_agent_reads_leakfree", "wm_spatial")
    assert r[4:7] == ["—", "—", "—"] and r[8] == "—" and r[2] != "—"
    assert "dynamics_aux_agent_reads_leakfree: case undetermined (no rollout record)" in cases["md"]
    # not run: one message, no numbers
    nr = _row(rows, "dynamics_aux_dmcontrol_pretrained")
    assert nr[2] == f"not run: {TT.NOT_RUN_REASON}"
    # model-free baselines without records: dashes, still listed
    for feat in ("tok_latent", "frame_diff"):
        b = _row(rows, "baseline", feat)
        assert b[2:8] == ["—"] * 6 and b[8] == "model-free baseline"


def test_power_csv_and_tex(cases):
    out = cases["out"]
    rows = list(csv.reader(io.StringIO((out / "power.csv").read_text())))
    head = rows[0]
    assert head[:10] == P.HEADER_POWER
    r = next(
        x for x in rows if x[head.index("variant")] == "dynamics_phase3" and x[head.index("feature")] == "wm_spatial"
    )
    assert r[head.index("case")] == P.CASE_EXPOSED and r[head.index("exposes")] == "true"
    assert float(r[head.index("delta_action_ci_lo")]) == 0.2
    assert float(r[head.index("delta_copy_last_f17_24")]) == 3.5 and float(r[head.index("delta_action_f1_8")]) == 0.3
    idm = float(r[head.index("idm_r2")])
    assert float(r[head.index("idm_ci_lo")]) <= idm <= float(r[head.index("idm_ci_hi")])
    tex = (out / "power.tex").read_text()
    assert all(ord(c) < 128 for c in tex) and r"\begin{tabular}{llllllllll}" in tex
    assert "uses its actions and its features expose them" in tex


def test_power_probe_numbers_match_table_mean_and_ci(cases):
    """The R² cells are ProbeView.cell of (video_only, H = 1, all_valid, held-out) as Table 1 aggregates."""
    inp = load(cases["res"])
    pv = RS.ProbeView(inp)
    rows = _md_rows(cases["md"])
    for mode, col in (("idm", 2), ("policy", 3)):
        agg = pv.cell("dynamics_phase3", "wm_spatial", "video_only", mode, 1, "all_valid", RS.TEST)
        assert _row(rows, "dynamics_phase3", "wm_spatial")[col] == RD.render_cell(("r2_ci", agg.mean, agg.ci), "md")


def test_power_baselines_set_the_bar(tmp_path, monkeypatch):
    """With tok_latent and frame_diff records the baselines get numbers, and a tok_latent better than the world
    model's features turns 'expose them' into 'do not expose them linearly'."""
    res = _cases(tmp_path / "weak")
    _add_baselines(res, ("tok_latent", "frame_diff"))
    T.write_tables(load(res), tmp_path / "out_weak", plots=False)
    rows = _md_rows((tmp_path / "out_weak" / "power.md").read_text())
    pv = RS.ProbeView(load(res))
    bar = pv.cell(RS.BASELINES, "tok_latent", "none", "idm", 1, "all_valid", RS.TEST).mean
    sp = pv.cell("dynamics_phase3", "wm_spatial", "video_only", "idm", 1, "all_valid", RS.TEST)
    assert sp.ci[0] > bar > 0  # the constructed weak tok_latent
    assert _row(rows, "baseline", "tok_latent")[2] != "—" and _row(rows, "baseline", "frame_diff")[3] != "—"
    assert _row(rows, "dynamics_phase3", "wm_spatial")[8] == P.CASE_EXPOSED
    monkeypatch.setitem(TT.QUALITY, "tok_latent", 0.95)  # idm quality 1.05: near-perfect latents
    res = _cases(tmp_path / "strong")
    _add_baselines(res, ("tok_latent", "frame_diff"))
    T.write_tables(load(res), tmp_path / "out_strong", plots=False)
    md = (tmp_path / "out_strong" / "power.md").read_text()
    rows = _md_rows(md)
    bar = RS.ProbeView(load(res)).cell(RS.BASELINES, "tok_latent", "none", "idm", 1, "all_valid", RS.TEST).mean
    assert bar > sp.ci[0]
    assert _row(rows, "dynamics_phase3", "wm_spatial")[7] == "no"
    assert _row(rows, "dynamics_phase3", "wm_spatial")[8] == P.CASE_HIDDEN
    assert f"and > tok_latent's {P._signed(bar, 3)}" in md


# ---------------------------------------------------------------------------- Table 2's per-horizon column


def test_table2_last_third_column_and_older_records(cases, tmp_path):
    t2 = _md_rows((cases["out"] / "table2_quality.md").read_text())
    assert t2[0][5] == "Δ vs copy-last, frames 17–24 (dB)"
    assert _row(t2, "dynamics_phase3")[4:7] == ["+2.00 [+1.60, +2.40]", "+3.50 [+3.10, +3.90]", "+0.70 [+0.20, +1.20]"]
    assert _row(t2, "copy-last-context frame")[5] == "—"
    rows = list(csv.reader(io.StringIO((cases["out"] / "table2_quality.csv").read_text())))
    head = rows[0]
    r = next(x for x in rows if "dynamics_phase3" in x)
    thirds = [float(r[head.index(f"delta_copy_last_f{a}_{b}")]) for a, b in ((1, 8), (9, 16), (17, 24))]
    assert thirds == [0.5, 2.0, 3.5]
    assert float(r[head.index("delta_action_f9_16_ci_hi")]) == pytest.approx(1.1)
    # records written before issue 27 (no *_bins): the columns stay, with dashes, in Table 2 and the power table
    res = write_synthetic_results(tmp_path / "old")
    for p in res["rollout"]:
        _rewrite_rollout(
            p,
            lambda rec: [s.pop(k) for s in rec["sets"].values() for k in ("delta_copy_last_bins", "delta_action_bins")],
        )
    T.write_tables(load(res), tmp_path / "out", plots=False)
    t2 = _md_rows((tmp_path / "out" / "table2_quality.md").read_text())
    assert t2[0][5] == "Δ vs copy-last, frames 17–24 (dB)"
    assert _row(t2, "dynamics_phase3")[5] == "—" and _row(t2, "dynamics_phase3")[4] == "+2.00 [+1.60, +2.40]"
    pw = _md_rows((tmp_path / "out" / "power.md").read_text())
    assert _row(pw, "dynamics_phase3", "wm_spatial")[5] == "—"
    assert _row(pw, "dynamics_phase3", "wm_spatial")[8] == P.CASE_EXPOSED


# ---------------------------------------------------------------------------- the workflow declares the files


def test_tables_rule_outputs_the_power_table(tmp_path):
    """A dry run asked for results/tables/power.md plans the `tables` job, whose outputs list power.{md,csv,tex}."""
    import shutil
    import subprocess
    import sys

    from conftest import dry_run_jobs, venv_env

    repo = Path(__file__).resolve().parents[1]
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"
    r = subprocess.run(
        [
            snakemake,
            "results/tables/power.md",
            "-n",
            "-p",
            "--forceall",
            "--cores",
            "1",
            "--directory",
            str(repo),
            "--snakefile",
            str(repo / "Snakefile"),
            "--configfile",
            str(repo / "config/demo.yaml"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=venv_env(),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = [j for j in dry_run_jobs(r.stdout + r.stderr) if j["rule"] == "tables"]
    assert len(jobs) == 1
    for ext in ("md", "csv", "tex"):
        assert f"results/tables/power.{ext}" in jobs[0]["output"]
    assert "results/tables/tables.md" in jobs[0]["output"] and "results/tables/tables.html" in jobs[0]["output"]
