"""The Snakemake report of the demo study: built from existing results (`make report`'s command), every
table, one training curve per trained run and one rollout strip per evaluated variant listed in it, and
the HTML opened in a real headless Chromium without a console error (issue: one report to read the study).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, snakemake_cmd, venv_env
from headless import Browser, find_browser

from dreamer4_libero.reporting.tables import TABLE_KEYS


def report_entries(html_text: str) -> dict[str, dict]:
    """The report's entries (file path -> record with caption, mime type, ... plus its category and
    subcategory), read from the `var results = {...}` and `var categories = {...}` the report embeds."""
    blocks = {}
    for name in ("results", "categories"):
        m = re.search(rf"var {name} = (\{{.*?\}});\s*</script>", html_text, re.S)
        assert m, f"no `var {name} = ...` in the report"
        blocks[name] = json.loads(m.group(1))
    entries = {p: dict(rec) for p, rec in blocks["results"].items()}
    for cat, subs in blocks["categories"].items():
        for sub, paths in subs.items():
            for p in paths:
                entries[p].update(category=cat, subcategory=sub)
    assert all("category" in r for r in entries.values())
    return entries


def _makefile_report_command() -> list[str]:
    """The snakemake arguments of the Makefile's `report` target (so the test runs what `make report` runs)."""
    text = (REPO / "Makefile").read_text()
    assert re.search(r"^report: setup$", text, re.M), "Makefile has no `report` target"
    assert "snakemake $(REPORT_CONFIG) --report $(REPORT)" in text
    cfg = re.search(r"^REPORT_CONFIG \?= (.*)$", text, re.M).group(1).split()
    return cfg


@pytest.fixture(scope="module")
def demo_report(demo_study):
    out = demo_study / "results" / "report.html"
    if out.exists():
        out.unlink()
    t0 = time.time()
    r = subprocess.run(
        snakemake_cmd(*_makefile_report_command(), "--report", str(out)),
        cwd=demo_study,
        env=venv_env(),
        capture_output=True,
        text=True,
    )
    took = time.time() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(f"\n[report] built {out} ({out.stat().st_size / 1e6:.1f} MB) from existing results in {took:.1f} s")
    return out


def test_report_lists_every_table_training_curve_and_rollout_strip(demo_study, demo_report):
    entries = report_entries(demo_report.read_text())
    paths = {Path(p).as_posix(): rec for p, rec in entries.items()}
    by_cat: dict[str, int] = {}
    for rec in paths.values():
        by_cat[rec["category"]] = by_cat.get(rec["category"], 0) + 1
    print("[report] entries per category: " + ", ".join(f"{k} {v}" for k, v in sorted(by_cat.items())))

    # every table: the rendered page and each table's CSV
    assert "results/tables/tables.html" in paths
    assert paths["results/tables/tables.html"]["category"] == "Tables"
    html_tables = (demo_study / "results/tables/tables.html").read_text()
    for key in TABLE_KEYS:
        assert f"results/tables/{key}.csv" in paths, key
        assert f'<section id="{key}">' in html_tables, key

    # one training curve per trained run (every results/train/<run>/ with a checkpoint)
    trained = sorted(p.parent.name for p in (demo_study / "results/train").glob("*/checkpoint.json"))
    assert len(trained) >= 8, trained  # study tokenizer, DMControl tokenizer + world model, 5+ variants
    curves = sorted(Path(p).stem for p in paths if p.startswith("results/report/training/"))
    assert curves == trained
    cats = {paths[f"results/report/training/{r}.png"]["category"] for r in trained}
    assert cats == {"Tokenizer", "Dynamics variants"}

    # one rollout strip (and GIF, per-frame PSNR plot) per evaluated variant
    evaluated = sorted(p.parent.name for p in (demo_study / "results/rollout").glob("*/rollout.json"))
    assert len(evaluated) == 7, evaluated
    for v in evaluated:
        for f in ("strips.png", "rollout.gif", "per_step_psnr.png"):
            rec = paths[f"results/rollout/{v}/{f}"]
            assert rec["category"] == "Rollout" and rec["subcategory"] == v
    # captions are rendered (wildcards filled in)
    assert evaluated[0] in paths[f"results/rollout/{evaluated[0]}/strips.png"]["caption"]

    # data, probe, runtime, provenance
    for p, cat in (
        ("results/report/data_summary.html", "Data"),
        ("results/report/probe_per_dim.png", "Probe"),
        ("results/report/runtime.html", "Runtime"),
        ("results/report/provenance.html", "Provenance"),
        ("results/preprocess/sanity/sample_frames.png", "Data"),
        ("results/tokenizer_eval/tokenizer_demo/reconstructions.png", "Tokenizer"),
    ):
        assert paths[p]["category"] == cat, p
    prov = (demo_study / "results/report/provenance.html").read_text()
    for r in trained:
        assert f"<td>{r}</td>" in prov, r
    assert re.search(r"[0-9a-f]{12}", prov), "no git commit in the provenance page"
    runtime = (demo_study / "results/report/runtime.html").read_text()
    for rule in ("train_tokenizer", "train_dynamics", "probe", "rollout_eval", "tables"):
        assert f"<td>{rule}</td>" in runtime, rule
    data = (demo_study / "results/report/data_summary.html").read_text()
    assert "test_ood" in data and "DMControl pretraining data" in data
    assert set(by_cat) == {
        "Data",
        "Tokenizer",
        "Dynamics variants",
        "Probe",
        "Rollout",
        "Tables",
        "Runtime",
        "Provenance",
    }


@pytest.fixture(scope="module")
def browser_binary():
    path = find_browser()
    if path is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "chromium-headless-shell"],
            capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        path = find_browser()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("no headless Chromium (apt-get install chromium-headless-shell failed)")
        pytest.skip("no headless Chromium on this machine (apt-get install chromium-headless-shell)")
    return path


def test_report_opens_in_a_headless_browser_without_console_errors(demo_report, browser_binary, tmp_path):
    with Browser(browser_binary, width=1280, height=900) as b:
        b.open(demo_report.resolve().as_uri(), settle_s=3.0)
        assert b.errors() == [], b.console_messages()
        # open the Tables category, then its rendered tables page, the way a reader clicks through
        clicked = b.evaluate("""(() => {
            const hit = t => [...document.querySelectorAll('a')].filter(e => e.textContent.trim() === t);
            const c = hit('Tables'); if (!c.length) return 'no Tables entry';
            c[0].click(); return 'ok'; })()""")
        assert clicked == "ok", clicked
        b.pump(1.5)
        clicked = b.evaluate("""(() => {
            const c = [...document.querySelectorAll('a')].filter(e => e.textContent.trim() === 'Other');
            if (!c.length) return 'no Other subcategory'; c[0].click(); return 'ok'; })()""")
        assert clicked == "ok", clicked
        b.pump(1.5)
        # then the rendered tables page, if the category view lists it by name
        b.evaluate("""(() => {
            const e = [...document.querySelectorAll('a')].filter(e => e.textContent.includes('tables.html'))
                .sort((a, b) => a.textContent.length - b.textContent.length);
            if (e.length) e[0].click(); return e.length; })()""")
        b.pump(2.0)
        assert "tables.html" in b.evaluate("document.body.innerText")
        shot = b.screenshot(tmp_path / "report_tables.png")
        assert b.errors() == [], b.console_messages()
        infos = [t for level, t in b.console_messages()]
        print(
            f"\n[report] browser {browser_binary}: {len(infos)} console message(s), 0 errors; "
            f"screenshot {shot} ({shot.stat().st_size} bytes)"
        )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("REPORT_SCREENSHOT"):
        shutil.copy(shot, os.environ["REPORT_SCREENSHOT"])
