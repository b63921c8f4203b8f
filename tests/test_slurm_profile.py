"""Slurm profiles without a Slurm: the install step never overwrites or shadows a profile, and a site
profile's default-resources (account, partition) reach every job (snakemake_slurm.md §2)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import dry_run_jobs, planned_jobs, snakemake_cmd, venv_env

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "workflow_scripts" / "install_slurm_profile.py"


def _install(xdg_home, xdg_dirs, cwd):
    env = {**os.environ, "XDG_CONFIG_HOME": str(xdg_home), "XDG_CONFIG_DIRS": str(xdg_dirs)}
    return subprocess.run([sys.executable, str(INSTALL)], env=env, cwd=cwd, capture_output=True, text=True)


def test_install_only_when_no_profile_exists(tmp_path):
    home, site = tmp_path / "home", tmp_path / "site"
    r = _install(home, site, tmp_path)
    assert r.returncode == 0, r.stderr
    dest = home / "snakemake" / "slurm" / "config.yaml"
    assert dest.read_text() == (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    dest.write_text("executor: slurm\n# the user's own edits\n")
    r = _install(home, site, tmp_path)  # never overwrites
    assert r.returncode == 0 and "already exists" in r.stdout
    assert dest.read_text().endswith("# the user's own edits\n")
    assert not (tmp_path / "slurm").exists()  # never a ./slurm that shadows profiles


def test_site_profile_wins(tmp_path):
    home, site = tmp_path / "home", tmp_path / "site"
    (site / "snakemake" / "slurm").mkdir(parents=True)
    (site / "snakemake" / "slurm" / "config.yaml").write_text("executor: slurm\n")
    r = _install(home, site, tmp_path)
    assert r.returncode == 0 and str(site) in r.stdout
    assert not (home / "snakemake" / "slurm").exists()


def test_site_default_resources_reach_every_job(tmp_path):
    """The workflow profile (profiles/default) sets no resources, so a site `slurm` profile's account and
    partition survive on every job of `snakemake --profile slurm`."""
    prof = tmp_path / "xdg" / "snakemake" / "slurm"
    prof.mkdir(parents=True)
    prof.joinpath("config.yaml").write_text(
        "executor: slurm\njobs: 10\ndefault-resources:\n  slurm_account: fakeacct\n  slurm_partition: fakepart\n"
    )
    env = {**venv_env(), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    r = subprocess.run(
        snakemake_cmd("--profile", "slurm", "-n", "--forceall", "--configfile", "config/demo.yaml"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip().startswith("resources:")]
    assert len(lines) >= 20
    assert all("slurm_account=fakeacct" in ln and "slurm_partition=fakepart" in ln for ln in lines)


def _planned_resources(out: str) -> dict[str, list[str]]:
    """rule -> the resources text of its planned jobs, from a dry run's output (conftest.dry_run_jobs)."""
    res = {}
    for j in dry_run_jobs(out):
        if j["resources"]:
            res.setdefault(j["rule"], []).append(j["resources"])
    return res


def test_config_slurm_settings_reach_the_jobs(tmp_path):
    """config.yaml's `slurm` section: gpu_partition on GPU jobs only, account / qos / extra on every job, gpu_model
    only where GPUs are asked for; where the config sets no partition, the site profile's stays in force."""
    prof = tmp_path / "xdg" / "snakemake" / "slurm"
    prof.mkdir(parents=True)
    prof.joinpath("config.yaml").write_text(
        "executor: slurm\njobs: 10\ndefault-resources:\n  slurm_account: siteacct\n  slurm_partition: sitepart\n"
    )
    layer = tmp_path / "site.yaml"
    layer.write_text(
        "slurm: {gpu_partition: gpupart, account: myacct, qos: normal, gpu_model: h100, extra: '--exclusive'}\n"
    )
    env = {**venv_env(), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    r = subprocess.run(
        snakemake_cmd(
            "--profile",
            "slurm",
            "-n",
            "--forceall",
            "--configfile",
            "config/demo.yaml",
            "config/ci_slurm.yaml",
            str(layer),
        ),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = _planned_resources(r.stdout + r.stderr)
    gpu_rules = {"train_tokenizer", "train_dynamics"}  # ci_slurm: 2 and 1 (fake) GPUs
    assert gpu_rules <= res.keys() and len(res) >= 10, res.keys()
    res.pop("all")  # the target rule: no job
    for rule, lines in res.items():
        for ln in lines:
            assert "slurm_account=myacct" in ln and "qos=normal" in ln and "slurm_extra=--exclusive" in ln, (rule, ln)
            if rule in gpu_rules:
                assert "slurm_partition=gpupart" in ln and "gpu_model=h100" in ln, (rule, ln)
            else:
                assert "slurm_partition=sitepart" in ln and "gpu_model=h100" not in ln, (rule, ln)
    # the tokenizer's cpus_per_gpu (1) x 2 GPUs
    assert all("cpus_per_task=2" in ln and "gpu=2" in ln for ln in res["train_tokenizer"])


@pytest.mark.parametrize("workers", [None, 3])
def test_every_job_asks_for_the_cpus_its_script_uses(tmp_path, workers):
    """The repo's Slurm profile (default-resources cpus_per_task: 1) on the paper config: every job sends its own
    cpus_per_task; preprocess's --workers equals it (data.workers, 8 or a layer's 3) instead of the profile's 1;
    the one-process jobs (collect_dmcontrol, rollout_eval, tokenizer_eval) ask for 1. (`dmcontrol_init.source:
    pretrain`, so that the DMControl collection is planned; the paper config uses the released files.)"""
    prof = tmp_path / "xdg" / "snakemake" / "slurm"
    prof.mkdir(parents=True)
    prof.joinpath("config.yaml").write_text((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert "cpus_per_task: 1" in prof.joinpath("config.yaml").read_text()
    layer = tmp_path / "layer.yaml"
    layer.write_text("dmcontrol_init: {source: pretrain}\n" + (f"data: {{workers: {workers}}}\n" if workers else ""))
    args = ["--profile", "slurm", "-n", "--forceall", "--configfile", str(layer)]
    env = {**venv_env(), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    r = subprocess.run(snakemake_cmd(*args), cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = [(j["rule"], j["resources"], j["shell"]) for j in dry_run_jobs(r.stdout + r.stderr) if j["resources"]]
    cpus = {}
    for rule, res, _ in jobs:
        m = re.search(r"\bcpus_per_task=(\d+)", res)
        assert m, (rule, res)
        cpus.setdefault(rule, set()).add(int(m.group(1)))
    assert {"preprocess", "collect_dmcontrol", "rollout_eval", "tokenizer_eval", "train_tokenizer"} <= cpus.keys()
    n = workers or 8
    pre = [sh for rule, _, sh in jobs if rule == "preprocess"]
    assert cpus["preprocess"] == {n} and len(pre) == 1 and f"--workers {n} " in pre[0], pre
    assert cpus["collect_dmcontrol"] == cpus["rollout_eval"] == cpus["tokenizer_eval"] == {1}


def test_profile_keeps_going_and_runs_the_widest_level_at_once():
    """profiles/slurm: keep-going (a failed evaluation never stops independent training jobs) and `jobs` at least
    the paper DAG's widest level (every probe, rollout evaluation, probe_baselines and tokenizer_eval at once)."""
    import yaml

    prof = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert prof["keep-going"] is True
    r = subprocess.run(
        snakemake_cmd("-n", "--forceall", "--config", "dmcontrol_init={source: pretrain}"),
        cwd=REPO,
        env=venv_env(),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = planned_jobs(r.stdout + r.stderr)
    widest = jobs["probe"] + jobs["rollout_eval"] + jobs["probe_baselines"] + jobs["tokenizer_eval"]
    assert widest == 16 and jobs["train_dynamics"] == 8, jobs
    assert prof["jobs"] >= widest, (prof["jobs"], widest)


def test_controller_wrapper_runs_snakemake_in_the_submit_dir(tmp_path):
    """profiles/slurm/controller.sh (the controller as a Slurm job): from $SLURM_SUBMIT_DIR, the venv active,
    `snakemake --profile slurm` with the arguments given to sbatch after the script."""
    script = REPO / "profiles" / "slurm" / "controller.sh"
    text = script.read_text()
    assert "#SBATCH --cpus-per-task=1" in text and "#SBATCH --output=snakemake-controller-%j.log" in text
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "snakemake").write_text('#!/bin/sh\necho "cwd=$(pwd) venv=${VIRTUAL_ENV:-none} args=$*"\n')
    (bin_ / "snakemake").chmod(0o755)
    site = tmp_path / "study"
    (site / ".venv" / "bin").mkdir(parents=True)
    (site / ".venv" / "bin" / "activate").write_text(f'export VIRTUAL_ENV="{site}/.venv"\n')
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(PATH=f"{bin_}:/usr/bin:/bin", SLURM_SUBMIT_DIR=str(site))
    r = subprocess.run(
        ["bash", str(script), "--configfile", "my_site.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"cwd={site} venv={site}/.venv args=--profile slurm --configfile my_site.yaml"
