"""GPU jobs never fall back to the CPU silently: a trainer given GPUs that torch cannot use stops at once,
before loading data, naming the build and the fix, unless the config opts in (allow_cpu_fallback, the CI
Slurm's fake GPUs only); `make check-gpu` says on this CPU-only machine that a GPU job would fail."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import venv_env
from dreamer4_libero.config import demo_config, load_config
from dreamer4_libero.training.devices import (
    ALLOW_CPU_FALLBACK_ENV,
    GPUUnavailableError,
    _smoke_test,
    require_gpus,
)

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "tests" / "engine_toy.py"

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="these tests need a machine where CUDA is missing")


def _env(**extra) -> dict:
    env = {k: v for k, v in venv_env().items() if k != ALLOW_CPU_FALLBACK_ENV}
    return {**env, "PYTHONPATH": str(REPO / "src"), **extra}


def _assert_names_build_and_fix(msg: str, expected: int) -> None:
    assert f"given {expected} GPU(s) but torch sees 0" in msg, msg
    assert f"torch {torch.__version__}" in msg and f"torch.version.cuda={torch.version.cuda}" in msg, msg
    assert "CUDA_VISIBLE_DEVICES=" in msg, msg
    assert "torch==2.13.0" in msg and "allow_cpu_fallback: true" in msg, msg


def test_require_gpus_unit(capsys):
    assert require_gpus(0, allow_cpu_fallback=False) is True  # a CPU job: nothing to check
    with pytest.raises(GPUUnavailableError) as e:
        require_gpus(3, allow_cpu_fallback=False, who="job x")
    _assert_names_build_and_fix(str(e.value), 3)
    assert str(e.value).startswith("job x was given 3 GPU(s)")
    assert require_gpus(3, allow_cpu_fallback=True) is False
    err = capsys.readouterr().err
    assert "WARNING" in err and "allow_cpu_fallback is set: running on the CPU" in err


def test_require_gpus_reads_the_workflow_env(monkeypatch):
    monkeypatch.setenv(ALLOW_CPU_FALLBACK_ENV, "0")
    with pytest.raises(GPUUnavailableError):
        require_gpus(1)
    monkeypatch.setenv(ALLOW_CPU_FALLBACK_ENV, "1")
    assert require_gpus(1) is False


def test_smoke_test_checks_bf16_matmul_and_sdpa():
    _smoke_test(torch.device("cpu"))  # the same numerics check check-gpu runs on each GPU


def test_make_check_gpu_prints_the_cpu_build_and_fails():
    r = subprocess.run(
        ["make", "-s", "check-gpu", f"PY={sys.executable}", "CHECK_GPU_ARGS=--gpus 2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=_env(CUDA_VISIBLE_DEVICES="0,1"),
        timeout=120,
    )
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert f"torch: {torch.__version__}" in out and "cuda: None" in out and "CPU-only torch build" in out, out
    assert "CUDA_VISIBLE_DEVICES: 0,1" in out, out
    assert "FAILED: a GPU job was given 2 GPU(s) but torch sees 0" in out and "OK:" not in out, out


def test_allow_cpu_fallback_is_set_only_by_the_ci_slurm_config():
    assert load_config()["allow_cpu_fallback"] is False
    assert demo_config()["allow_cpu_fallback"] is False and demo_config(test=True)["allow_cpu_fallback"] is False
    assert load_config([REPO / "config/demo.yaml", REPO / "config/ci_slurm.yaml"])["allow_cpu_fallback"] is True
    setters = [
        p.name
        for p in [REPO / "config.yaml", *sorted((REPO / "config").glob("*.yaml"))]
        if p.name != "schema.yaml" and "allow_cpu_fallback" in (yaml.safe_load(p.read_text()) or {})
    ]
    assert setters == ["ci_slurm.yaml"]


def test_training_jobs_pass_their_gpus_and_the_opt_in(tmp_path):
    """The dry-run shell commands of the CI Slurm study's trainers: --expect-gpus = the job's GPUs; the
    shell prefix exports the config's allow_cpu_fallback."""
    cmd = [
        str(Path(sys.executable).parent / "snakemake"),
        "-n",
        "-p",
        "--forceall",
        "--cores",
        "1",
        "--directory",
        str(REPO),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        str(REPO / "config/demo.yaml"),
        str(REPO / "config/ci_slurm.yaml"),
        "--until",
        "train_dynamics",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=_env())
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    trainers = [ln for ln in out.splitlines() if "--ckpt-root" in ln]  # the two trainers' command lines
    tok = [ln for ln in trainers if "--tokenizer " in ln]
    dyn = [ln for ln in trainers if "--variant " in ln]
    assert tok and all("--expect-gpus 2" in ln for ln in tok), tok
    assert dyn and all("--expect-gpus 1" in ln for ln in dyn), dyn
    # every job's shell (local or Slurm) starts with the export of the config's opt-in
    assert (
        "export D4L_ALLOW_CPU_FALLBACK={int(config['allow_cpu_fallback'])}; " in (REPO / "rules/common.smk").read_text()
    )


@pytest.mark.fault(
    fault="a trainer given 1 GPU on a machine whose torch is a CPU build",
    guarantee="exit 2 within 10 s before loading data, naming the build, CUDA_VISIBLE_DEVICES, the "
    "GPUs expected and seen, and the fix",
)
@pytest.mark.parametrize("script", ["train_tokenizer", "train_dynamics"])
def test_trainer_given_gpus_without_cuda_stops_at_once(trainer_cli, tmp_path, script):
    missing = tmp_path / "no_such_manifest.json"  # loading data first would fail on this file instead
    argv = {"train_tokenizer": ["--tokenizer", "{}", "--resolution", "32"], "train_dynamics": ["--variant", "{}"]}[
        script
    ]
    t0 = time.time()
    r = trainer_cli.run(
        [
            sys.executable,
            str(REPO / "workflow_scripts" / f"{script}.py"),
            *argv,
            "--manifest",
            str(missing),
            "--train-split",
            str(missing),
            "--ckpt-dir",
            str(tmp_path / "ck"),
            "--expect-gpus",
            "1",
        ],
        cwd=tmp_path,
        env=_env(CUDA_VISIBLE_DEVICES="0"),
    )
    elapsed = time.time() - t0
    err = r.stderr
    assert r.returncode == 2, err
    assert elapsed < 10, f"took {elapsed:.1f} s"
    _assert_names_build_and_fix(err, 1)
    assert f"{script} was given 1 GPU(s)" in err and "CUDA_VISIBLE_DEVICES='0'" in err, err
    assert "stopped before loading any data" in err and str(missing) not in err, err
    assert not (tmp_path / "ck").exists(), "nothing may be written"


def test_trainer_runs_on_the_cpu_only_when_allowed(trainer_cli, tmp_path):
    """The opt-in (config allow_cpu_fallback -> $D4L_ALLOW_CPU_FALLBACK) lets a 2-GPU toy trainer finish on
    the CPU with a loud warning; an explicit --allow-cpu-fallback false wins over the environment."""
    base = [sys.executable, str(TOY), "--max-steps", "3", "--expect-gpus", "2"]
    ok = trainer_cli.run(
        base + ["--ckpt-dir", str(tmp_path / "a")], cwd=REPO, env=_env(**{ALLOW_CPU_FALLBACK_ENV: "1"})
    )
    assert ok.returncode == 0, ok.stderr
    assert "allow_cpu_fallback is set: running on the CPU" in ok.stderr and "WARNING" in ok.stderr
    assert (tmp_path / "a" / "step_0000003.pt").exists()
    no = trainer_cli.run(
        base + ["--ckpt-dir", str(tmp_path / "b"), "--allow-cpu-fallback", "false"],
        cwd=REPO,
        env=_env(**{ALLOW_CPU_FALLBACK_ENV: "1"}),
    )
    assert no.returncode != 0 and "given 2 GPU(s) but torch sees 0" in no.stderr, no.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "script,argv",
    [
        (
            "probe",
            [
                "--checkpoint-json",
                "MISSING",
                "--manifest",
                "MISSING",
                "--probe-root",
                "MISSING",
                "--seeds",
                "0",
                "--resolution",
                "32",
                "--eval",
                "{}",
                "--out-dir",
                "OUT",
            ],
        ),
        (
            "rollout_eval",
            [
                "--checkpoint-json",
                "MISSING",
                "--manifest",
                "MISSING",
                "--test-ood",
                "MISSING",
                "--val",
                "MISSING",
                "--resolution",
                "32",
                "--eval",
                "{}",
                "--out-dir",
                "OUT",
            ],
        ),
    ],
)
def test_evaluation_jobs_given_gpus_without_cuda_stop_at_once(tmp_path, script, argv):
    """The GPU evaluation jobs (probe, rollout_eval: --expect-gpus from the rule's resources) stop like the
    trainers, before reading any input (every path here is missing)."""
    argv = [str(tmp_path / a) if a in ("MISSING", "OUT") else a for a in argv]
    t0 = time.time()
    r = subprocess.run(
        [sys.executable, str(REPO / "workflow_scripts" / f"{script}.py"), *argv, "--expect-gpus", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
        timeout=120,
    )
    assert r.returncode == 2 and time.time() - t0 < 10, r.stderr
    _assert_names_build_and_fix(r.stderr, 1)
    assert f"{script} was given 1 GPU(s)" in r.stderr and "MISSING" not in r.stderr, r.stderr
    assert not (tmp_path / "OUT").exists()
