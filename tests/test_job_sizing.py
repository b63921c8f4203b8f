"""Job sizing (job_sizing.py): retries from a run's steps and speed, loader workers from the job's CPUs, the
scheduling keys kept out of rule params and run identities, and a training job's time and memory that
never grow with the attempt (issue 26 items 2, 7, 8)."""

import json
import shlex
import subprocess

import pytest

from conftest import REPO, snakemake_cmd, venv_env
from dreamer4_libero.config import load_config
from dreamer4_libero.job_sizing import (
    SCHEDULING_KEYS,
    STARTUP_S,
    SizingError,
    attempts_needed,
    check_workers,
    loader_workers,
    retries_of,
    science,
)
from dreamer4_libero.training.identity import run_identity

RUN = {
    "run_name": "r",
    "max_steps": 30000,
    "runtime_min": 1440,
    "deadline_margin_s": 300,
    "retries": 3,
    "steps_per_s": None,
    "gpus": 5,
    "cpus_per_task": 40,
    "cpus_per_gpu": None,
    "num_workers": None,
}


def test_attempts_follow_from_steps_and_speed():
    # 1440 min - 300 s margin - 300 s start-up = 85,800 s per attempt; at 0.1 steps/s: 8,580 steps
    run = {**RUN, "steps_per_s": 0.1}
    assert 1440 * 60 - 300 - STARTUP_S == 85800
    assert attempts_needed(run) == 4  # ceil(30000 / 8580)
    assert retries_of({**run, "retries": "auto"}, "dynamics.defaults") == 4  # 3 + one spare
    assert retries_of({**run, "retries": 3}, "dynamics.defaults") == 3
    with pytest.raises(
        SizingError, match=r"'dynamics.defaults.retries' = 2 gives 3 attempts .* need 4 .* retries >= 3"
    ):
        retries_of({**run, "retries": 2}, "dynamics.defaults")
    assert attempts_needed(RUN) is None and retries_of(RUN, "tokenizer") == 3  # speed unknown: as configured
    with pytest.raises(SizingError, match=r"'tokenizer.retries' is auto but 'tokenizer.steps_per_s' is not set"):
        retries_of({**RUN, "retries": "auto"}, "tokenizer")
    with pytest.raises(SizingError, match="raise runtime_min"):
        attempts_needed({**RUN, "runtime_min": 5, "steps_per_s": 1.0})


def test_loader_workers_follow_the_job_cpus():
    assert loader_workers(None, local_ranks=4, cpus=32, on_gpu=True) == 7  # 4 x (7 + 1) = 32 processes
    assert loader_workers(None, local_ranks=5, cpus=40, on_gpu=True) == 7
    assert loader_workers(None, local_ranks=1, cpus=1, on_gpu=True) == 0
    assert loader_workers(None, local_ranks=2, cpus=32, on_gpu=False) == 0  # CPU: torch threads use the cores
    assert loader_workers(3, local_ranks=4, cpus=32, on_gpu=True) == 3  # an explicit number as given
    check_workers({**RUN, "num_workers": 7}, "dynamics.defaults")  # 5 x 8 = 40 CPUs: fits
    with pytest.raises(
        SizingError,
        match=r"'dynamics.defaults.num_workers' = 8: 5 ranks x \(8 workers \+ 1\) = 45 "
        r"processes on a job of 40 CPUs",
    ):
        check_workers({**RUN, "num_workers": 8}, "dynamics.defaults")


def test_scheduling_keys_leave_params_and_identity_alone():
    run = {**RUN, "batch_size": 4, "lr": 1e-4, "seq_len": 32}
    sci = science(run)
    assert SCHEDULING_KEYS.isdisjoint(sci) and sci["lr"] == 1e-4 and sci["max_steps"] == 30000

    def ident(r):
        return run_identity(r, world_size=5, data_fingerprint="x")[0]

    assert ident(sci) == ident(run) == ident({**run, "runtime_min": 60, "mem_mb": 1, "cpus_per_task": 2})
    assert ident(run) != ident({**run, "lr": 2e-4})


def _dry(*args):
    """A dry run of the paper config with the DMControl pretraining in the DAG (its runs are trained too)."""
    r = subprocess.run(
        snakemake_cmd("-n", "--forceall", "-p", "--config", "dmcontrol_init={source: pretrain}", *args),
        cwd=REPO,
        env=venv_env(),
        capture_output=True,
        text=True,
    )
    return r.returncode, r.stdout + r.stderr


def test_paper_training_jobs_get_constant_limits_and_no_resource_in_params(tmp_path):
    """The paper config's training jobs: the configured runtime and memory (attempt-independent lambdas), the
    scheduling values on the command line as flags, and none of them in the JSON params."""
    rc, out = _dry()
    assert rc == 0, out[-3000:]
    cmds = [ln for ln in out.splitlines() if "workflow_scripts/train_" in ln]
    assert len(cmds) >= 10, len(cmds)
    for cmd in cmds:
        argv = shlex.split(cmd.split("Shell command:")[-1].split(">")[0])
        flag = "--tokenizer" if "--tokenizer" in argv else "--variant"
        blob = json.loads(argv[argv.index(flag) + 1])
        assert SCHEDULING_KEYS.isdisjoint(blob), sorted(SCHEDULING_KEYS & set(blob))
        assert "--deadline-margin-s 300 --num-workers auto" in cmd and "--time-limit-min 1440" in cmd
    cfg = load_config()
    res = [ln for ln in out.splitlines() if "loader_workers=" in ln]
    assert res and all("runtime=1440" in ln for ln in res)
    assert any(f"mem_mb={cfg['tokenizer']['mem_mb']}" in ln for ln in res)


def test_retries_that_cannot_finish_stop_the_dry_run(tmp_path):
    layer = tmp_path / "slow.yaml"
    layer.write_text("tokenizer: {steps_per_s: 0.2, retries: 2}\n")  # 85k steps at 17k per attempt: 5 attempts
    rc, out = _dry("--configfile", str(layer))
    assert rc != 0 and "'tokenizer.retries' = 2 gives 3 attempts" in out and "need 5" in out, out[-3000:]
    layer.write_text("tokenizer: {steps_per_s: 0.2, retries: auto}\n")
    rc, out = _dry("--configfile", str(layer))
    assert rc == 0, out[-3000:]
