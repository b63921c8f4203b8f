"""The test tiers (tests/conftest.py): assigned from fixtures, checked statically on the unit tier's
collection, and enforced at run time by the guard (a mis-tiered test fails)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, TIER_FIXTURES, UNIT_MAX_STEPS, heavy_command, tier_of

UNIT_ONLY = "not e2e and not integration"


def _pytest(*args, cwd=REPO, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_tier_follows_the_heaviest_fixture():
    assert tier_of(["tmp_path", "preprocessed"]) == "unit"
    assert tier_of(["tmp_path", "trainer_cli"]) == "integration"
    assert tier_of(["snakemake_repo", "long_training"]) == "integration"
    assert tier_of(["trainer_cli", "demo_study"]) == "e2e"
    assert tier_of(["slurm_cluster"]) == tier_of(["dag_repo"]) == "e2e"
    assert set(TIER_FIXTURES.values()) == {"integration", "e2e"}


@pytest.mark.parametrize(
    "argv,what",
    [
        ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "x.py"], "torchrun"),
        (["torchrun", "--standalone", "x.py"], "torchrun"),
        ([sys.executable, "/r/workflow_scripts/train_tokenizer.py", "--tokenizer", "{}"], "a trainer script"),
        ([sys.executable, "workflow_scripts/train_dynamics.py"], "a trainer script"),
        ([sys.executable, str(REPO / "tests" / "engine_toy.py"), "--max-steps", "3"], "a trainer script"),
        (["sbatch", "--wrap", "true"], "a Slurm job"),
        (["/venv/bin/snakemake", "--cores", "2", "--configfile", "config/demo.yaml"], "a real (not dry) Snakemake run"),
        (["snakemake", "--profile", "slurm", "results/tables/tables.md"], "a real (not dry) Snakemake run"),
        ([sys.executable, "-m", "snakemake", "--cores", "1"], "a real (not dry) Snakemake run"),
        (["snakemake", "-n", "--cores", "1"], None),
        (["snakemake", "--dry-run", "--forceall"], None),
        (["snakemake", "-np", "--forceall"], None),
        (["snakemake", "--lint"], None),
        (["snakemake", "--report", "r.html"], None),
        ([sys.executable, "workflow_scripts/probe.py", "--baselines"], None),
        ([sys.executable, "workflow_scripts/preprocess.py", "--workers", "2"], None),
        (["git", "ls-files"], None),
        ("echo torchrun is mentioned in a shell string", "torchrun"),
    ],
)
def test_heavy_commands(argv, what):
    hit = heavy_command(argv)
    assert (hit[0] if hit else None) == what


def test_unit_tier_collection_uses_nothing_of_a_higher_tier(tmp_path):
    """`pytest --collect-only -m "not e2e and not integration"` (what `make test-fast` runs): no test in it uses
    a tier fixture (demo study, Slurm, a DAG, trainer subprocesses, torchrun, real Snakemake), and none names
    torchrun, a trainer script or a Slurm command in its code, its fixtures or its tests/ helpers."""
    audit = tmp_path / "audit.json"
    r = _pytest("--collect-only", "-m", UNIT_ONLY, env={"D4L_TIER_AUDIT": str(audit)})
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    report = json.loads(audit.read_text())
    unit, n_all = report["items"], len(report["items"]) + report["deselected"]
    assert f"{len(unit)}/{n_all} tests collected" in r.stdout, r.stdout[-500:]
    assert len(unit) >= 0.6 * n_all, f"unit tier: {len(unit)} of {n_all} tests"
    wrong = {k: v for k, v in unit.items() if v["tier"] != "unit" or v["tier_fixtures"] or v["heavy"]}
    assert wrong == {}, json.dumps(wrong, indent=1)
    assert "tests/test_tiers.py::test_unit_tier_collection_uses_nothing_of_a_higher_tier" in unit
    # and the other way: what the suite knows to be heavy is not in the unit tier
    for heavy in (
        "tests/test_demo_study.py",
        "tests/test_slurm.py",
        "tests/test_workflow_resume.py",
        "tests/test_tokenizer_train.py",
        "tests/test_dynamics_train.py",
        "tests/test_engine.py::test_torchrun_two_processes_exit_ddp_gradients_and_nan_on_one_rank",
    ):
        assert not [k for k in unit if k.startswith(heavy)], heavy


MISTIERED = '''
import subprocess, sys
import torch


def test_starts_a_trainer_script():
    subprocess.run([sys.executable, "-c", "pass", "workflow_scripts/train_tokenizer.py"], check=True)


def test_starts_torchrun():
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--help"], capture_output=True)


def test_real_snakemake_run():
    subprocess.run(["snakemake", "--cores", "1", "--configfile", "nope.yaml"], capture_output=True)


def test_swallows_the_refusal():
    try:
        subprocess.run([sys.executable, "-c", "pass", "tests/engine_toy.py"])
    except Exception:
        pass


def _train(n):
    w = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([w], lr=0.1)
    for _ in range(n):
        opt.zero_grad()
        (w - 1).pow(2).sum().backward()
        opt.step()


def test_trains_too_long():
    _train({steps})


def test_trains_within_the_budget():
    _train({ok_steps})


def test_dry_run_and_plain_scripts_are_fine():
    subprocess.run(["true", "snakemake", "--dry-run"], check=True)  # `true` stands in for a dry run
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_asks_for_the_fixture(trainer_cli):
    assert trainer_cli.run([sys.executable, "-c", "pass", "workflow_scripts/train_tokenizer.py"]).returncode == 0


def test_long_training_asks_for_the_fixture(long_training):
    _train({steps})
'''


def test_guard_fails_mis_tiered_tests(tmp_path):
    """A new test that starts a trainer, torchrun or a real Snakemake run, or trains longer than the unit budget,
    without asking for the fixture of its tier, fails (even if it catches the refusal); with the fixture it passes."""
    (tmp_path / "test_mistiered.py").write_text(MISTIERED.format(steps=UNIT_MAX_STEPS + 10, ok_steps=UNIT_MAX_STEPS))
    r = _pytest(
        "-p",
        "conftest",
        "-rA",
        "-W",
        "ignore::pytest.PytestUnknownMarkWarning",
        "--rootdir",
        str(tmp_path),
        str(tmp_path / "test_mistiered.py"),
        cwd=tmp_path,
        env={"PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])},
    )
    out = r.stdout + r.stderr
    outcome = {
        ln.split("::")[1].split()[0]: ln.split()[0]
        for ln in out.splitlines()
        if ln.startswith(("PASSED", "FAILED", "ERROR")) and "::" in ln
    }
    assert outcome == {
        "test_starts_a_trainer_script": "FAILED",
        "test_starts_torchrun": "FAILED",
        "test_real_snakemake_run": "FAILED",
        "test_swallows_the_refusal": "FAILED",
        "test_trains_too_long": "FAILED",
        "test_trains_within_the_budget": "PASSED",
        "test_dry_run_and_plain_scripts_are_fine": "PASSED",
        "test_asks_for_the_fixture": "PASSED",
        "test_long_training_asks_for_the_fixture": "PASSED",
    }, out[-5000:]
    assert "is in the unit tier but starts a trainer script" in out and "`trainer_cli` fixture" in out
    assert "starts torchrun" in out and "starts a real (not dry) Snakemake run" in out
    assert f"took {UNIT_MAX_STEPS + 10} optimizer steps" in out and "`long_training` fixture" in out
