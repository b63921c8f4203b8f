"""Slurm profiles without a Slurm: the install step never overwrites or shadows a profile, and a site
profile's default-resources (account, partition) reach every job (snakemake_slurm.md §2)."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import snakemake_cmd, venv_env

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
    r = _install(home, site, tmp_path)                                   # never overwrites
    assert r.returncode == 0 and "already exists" in r.stdout
    assert dest.read_text().endswith("# the user's own edits\n")
    assert not (tmp_path / "slurm").exists()                             # never a ./slurm that shadows profiles


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
        "executor: slurm\njobs: 10\ndefault-resources:\n  slurm_account: fakeacct\n  slurm_partition: fakepart\n")
    env = {**venv_env(), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    r = subprocess.run(snakemake_cmd("--profile", "slurm", "-n", "--forceall", "--configfile", "config/demo.yaml"),
                       cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip().startswith("resources:")]
    assert len(lines) >= 20
    assert all("slurm_account=fakeacct" in ln and "slurm_partition=fakepart" in ln for ln in lines)
