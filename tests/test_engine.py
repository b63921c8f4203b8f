"""Training engine: resume determinism (SIGKILL, deadline, SIGTERM), clean exit (1 and 2 processes),
DDP gradient sync, checkpoint fallback/format, the checkpoint-dir lock, non-finite loss (stop/skip),
a failed checkpoint write (disk full). Fault-injection tests carry `@pytest.mark.fault`.

The toy task lives in tests/engine_toy.py (importable here, runnable as a trainer script).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # engine_toy, whatever pytest's import mode

import engine_toy  # noqa: E402
from engine_toy import ToyTask, make_batch, make_model, toy_config, toy_loss  # noqa: E402
from dreamer4_libero.training.checkpoints import (
    CheckpointLock,
    CheckpointLockError,
    CheckpointWarning,
    list_checkpoints,
    load_latest_valid,
    save_checkpoint,
    step_path,
)
from dreamer4_libero.training.engine import EXIT_OK, EXIT_RESUME, NonFiniteLossWarning, train
from dreamer4_libero.training.engine_config import EngineConfig, add_engine_args, engine_config_from_args
from dreamer4_libero.training.resume import read_attempts
from dreamer4_libero.training.metrics import MetricsLog, read_metrics

TOY = Path(engine_toy.__file__).resolve()
REPO = TOY.parents[1]
N = 30  # steps of the determinism runs


def cfg(ckpt_dir, **kw) -> EngineConfig:
    return toy_config(ckpt_dir, **{"max_steps": N, **kw})


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: dict, b: dict, key: str = "model") -> None:
    assert a["step"] == b["step"]
    assert a[key].keys() == b[key].keys()
    for k in a[key]:
        assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs"
    sa, sb = a["opt"]["state"], b["opt"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), f"opt.state[{i}].{k} differs"


def spawn(trainer_cli, args: list[str], log: Path, torchrun: bool = False) -> subprocess.Popen:
    """The toy trainer in the background (2 torchrun ranks or one process)."""
    pre = trainer_cli.torchrun(2) if torchrun else [sys.executable]
    return trainer_cli.start(pre + [str(TOY)] + args, log, cwd=REPO, PYTHONPATH=str(REPO / "src"))


def wait_for_ckpt(proc: subprocess.Popen, ckpt_dir: Path, min_step: int, log: Path, timeout: float = 60) -> int:
    t0 = time.time()
    while time.time() - t0 < timeout:
        cks = list_checkpoints(ckpt_dir)
        if cks and cks[-1][0] >= min_step:
            return cks[-1][0]
        if proc.poll() is not None:
            pytest.fail(f"trainer exited ({proc.returncode}) before step {min_step}:\n{log.read_text()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no checkpoint >= {min_step} after {timeout}s:\n{log.read_text()}")


def metric_steps(ckpt_dir) -> list[int]:
    return [r["step"] for r in read_metrics(Path(ckpt_dir) / "metrics.jsonl")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """Uninterrupted in-process run of N steps, every 5th checkpoint kept."""
    d = tmp_path_factory.mktemp("ref")
    assert train(ToyTask(), cfg(d)) == EXIT_OK
    return d


def test_reference_run_layout(reference):
    assert [s for s, _ in list_checkpoints(reference)] == list(range(5, N + 1, 5))
    ck = load(step_path(reference, N))
    assert ck["step"] == N and ck["data"] == {"next_step": N, "grad_accum": 1}
    assert metric_steps(reference) == list(range(1, N + 1))
    assert (reference / "config.json").exists()
    assert [a["event"] for a in read_attempts(reference)] == ["start", "end"]


@pytest.fixture(scope="module")
def sigkilled_run(trainer_cli, tmp_path_factory) -> SimpleNamespace:
    """One toy trainer subprocess: while it runs, a second trainer tries its checkpoint dir (the lock);
    then SIGKILL once it has saved a checkpoint at or after a random step."""
    tmp = tmp_path_factory.mktemp("sigkilled")
    d, log = tmp / "ck", tmp / "a1.log"
    k = random.Random(20240611).randint(3, 24)
    print(f"[fault] SIGKILL after the checkpoint of step >= {k} (save_every 3)")
    p = spawn(trainer_cli, ["--ckpt-dir", str(d), "--max-steps", str(N), "--save-every", "3", "--sleep", "0.15"], log)
    try:
        wait_for_ckpt(p, d, 1, log)
        t0 = time.time()
        try:
            train(ToyTask(), cfg(d))
            lock_error = None
        except CheckpointLockError as e:
            lock_error = str(e)
        lock_s = time.time() - t0
        reached = wait_for_ckpt(p, d, k, log)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    return SimpleNamespace(dir=d, pid=p.pid, rc=p.returncode, reached=reached, lock_error=lock_error, lock_s=lock_s)


@pytest.mark.fault(
    fault="two trainers pointed at one checkpoint dir",
    guarantee="the second fails within seconds, naming the holder's pid (OS advisory lock)",
)
def test_second_trainer_on_a_locked_dir_fails_at_once_naming_the_holder(sigkilled_run):
    r = sigkilled_run
    assert r.lock_error is not None, "the second trainer was not refused"
    assert re.search(rf"locked by pid {r.pid}\b", r.lock_error), r.lock_error
    assert "another trainer is using it" in r.lock_error and r.lock_s < 5


@pytest.mark.fault(
    fault="SIGKILL of the toy trainer (holding the dir lock) at a random step",
    guarantee="the dead lock never blocks the retry; it resumes bitwise equal to an uninterrupted run",
)
def test_sigkill_at_random_step_resumes_bitwise_and_dead_lock_never_blocks(reference, sigkilled_run):
    d = sigkilled_run.dir
    assert sigkilled_run.rc == -signal.SIGKILL
    last = list_checkpoints(d)[-1][0]
    assert sigkilled_run.reached <= last < N, "the first attempt must be killed mid-run"
    # a retry after SIGKILL is not blocked by the dead process's lock, and resumes at last + 1
    task = ToyTask()
    assert train(task, cfg(d)) == EXIT_OK
    assert task.seen[0] == (last, last) and task.seen[-1] == (N - 1, N - 1)
    assert_same_state(load(step_path(d, N)), load(step_path(reference, N)))
    assert metric_steps(d) == list(range(1, N + 1)), "every step logged exactly once across attempts"
    starts = [a for a in read_attempts(d) if a["event"] == "start"]
    assert [a["start_step"] for a in starts] == [0, last]


def test_deadline_stop_and_resume(reference, tmp_path, capsys):
    d = tmp_path / "ck"
    task = ToyTask(sleep=0.05)
    rc = train(task, cfg(d, time_limit_min=1.2 / 60, deadline_margin_s=0.2, start_time=time.time()))
    out = capsys.readouterr().out
    assert rc == EXIT_RESUME
    m = re.search(r"deadline reached, saved step (\d+)", out)
    assert m, out
    stopped = int(m.group(1))
    assert 0 < stopped < N and list_checkpoints(d)[-1][0] == stopped
    assert load(step_path(d, stopped))["step"] == stopped
    # the retry (time limit grows per attempt) finishes identically to an uninterrupted run
    task2 = ToyTask()
    assert train(task2, cfg(d, time_limit_min=10.0, deadline_margin_s=1.0, start_time=time.time())) == EXIT_OK
    assert task2.seen[0][0] == stopped
    assert_same_state(load(step_path(d, N)), load(step_path(reference, N)))
    assert metric_steps(d) == list(range(1, N + 1))
    ends = [a for a in read_attempts(d) if a["event"] == "end"]
    assert [(e["status"], e["reason"]) for e in ends] == [("stopped", "deadline"), ("done", None)]


@pytest.mark.parametrize("limit_min", [None, 10.0])
def test_deadline_from_the_slurm_job_end_time(tmp_path, capsys, monkeypatch, limit_min):
    """With the job's end time from Slurm ($SLURM_JOB_END_TIME, epoch seconds) the engine stops at end - margin,
    whether or not a (later) time limit is configured; the time lost before the trainer started counts."""
    end, margin = time.time() + 1.5, 0.5
    monkeypatch.setenv("SLURM_JOB_END_TIME", f"{end:.3f}")
    d = tmp_path / "ck"
    rc = train(ToyTask(sleep=0.05), cfg(d, time_limit_min=limit_min, deadline_margin_s=margin, start_time=time.time()))
    t_stop = time.time()
    out = capsys.readouterr().out
    assert rc == EXIT_RESUME, out
    assert "(the Slurm job's end time ($SLURM_JOB_END_TIME)), stopping 0.5 s before it" in out, out
    m = re.search(r"deadline reached, saved step (\d+)", out)
    assert m and 0 < int(m.group(1)) < N, out
    # stopped within about one step (0.05 s) before end - margin, never after it, nor long before
    assert end - margin - 0.6 < t_stop < end - margin + 0.4, t_stop - end
    ends = [a for a in read_attempts(d) if a["event"] == "end"]
    assert [(e["status"], e["reason"]) for e in ends] == [("stopped", "deadline")]


def test_slurm_end_time_sources(monkeypatch, capsys):
    from dreamer4_libero.training.slurm_job import parse_squeue_time, slurm_job_end_time

    assert slurm_job_end_time({"SLURM_JOB_END_TIME": "1765000000"}) == (1765000000.0, "$SLURM_JOB_END_TIME")
    assert slurm_job_end_time({}) == (None, "not in a Slurm job")
    assert slurm_job_end_time({"SLURM_JOB_END_TIME": "soon"})[0] is None
    assert "is not epoch seconds" in capsys.readouterr().err
    t = parse_squeue_time("2026-12-06T14:03:11\n")
    assert time.localtime(t)[:6] == (2026, 12, 6, 14, 3, 11)
    assert parse_squeue_time("N/A") is None and parse_squeue_time("Unknown") is None
    # the configured limit is the fallback: a later Slurm end time does not extend it
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(time.time() + 3600))
    from dreamer4_libero.training.engine import Trainer

    run = Trainer(ToyTask(), cfg("unused", time_limit_min=1.0, start_time=1000.0), 0, 1, 0, torch.device("cpu"))
    assert run.deadline == 1060.0 and run.deadline_source.startswith("time_limit_min 1")


def test_deadline_always_makes_progress(tmp_path, capsys):
    d = tmp_path / "ck"
    rc = train(ToyTask(), cfg(d, time_limit_min=1e-6, deadline_margin_s=0.0, start_time=time.time() - 5))
    assert rc == EXIT_RESUME
    assert "deadline reached, saved step 1" in capsys.readouterr().out
    rc = train(ToyTask(), cfg(d, time_limit_min=1e-6, deadline_margin_s=0.0, start_time=time.time() - 5))
    assert rc == EXIT_RESUME and list_checkpoints(d)[-1][0] == 2


@pytest.mark.fault(
    fault="SIGTERM (Slurm) or SIGINT (Ctrl-C) to the toy trainer at a random step",
    guarantee="it saves, exits 75; the rerun ends bitwise equal to an uninterrupted run",
)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_saves_and_exits_75(trainer_cli, reference, tmp_path, sig):
    d, log = tmp_path / "ck", tmp_path / "a1.log"
    k = random.Random(75 + int(sig)).randint(4, 20)
    print(f"[fault] {sig.name} after the checkpoint of step >= {k} (save_every 4)")
    p = spawn(trainer_cli, ["--ckpt-dir", str(d), "--max-steps", str(N), "--save-every", "4", "--sleep", "0.15"], log)
    try:
        wait_for_ckpt(p, d, k, log)
        p.send_signal(sig)
        rc = p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    out = log.read_text()
    assert rc == EXIT_RESUME, out
    m = re.search(rf"{sig.name}: saved step (\d+)", out)
    assert m, out
    stopped = int(m.group(1))
    assert k <= stopped < N and list_checkpoints(d)[-1][0] == stopped
    assert train(ToyTask(), cfg(d)) == EXIT_OK
    assert_same_state(load(step_path(d, N)), load(step_path(reference, N)))


def test_clean_exit_single_process(trainer_cli, tmp_path):
    d, out, log = tmp_path / "ck", tmp_path / "out", tmp_path / "run.log"
    t0 = time.time()
    p = spawn(
        trainer_cli,
        ["--ckpt-dir", str(d), "--out-dir", str(out), "--max-steps", "7", "--save-every", "5", "--keep-last", "5"],
        log,
    )
    rc = p.wait(timeout=120)
    wall = time.time() - t0
    assert rc == 0, log.read_text()
    assert wall < 60, f"trainer took {wall:.1f}s to exit (final-step hang?)"
    assert [s for s, _ in list_checkpoints(d)] == [5, 7]
    final = load(step_path(d, 7))
    assert final["step"] == 7
    # declared outputs
    info = json.loads((out / "checkpoint.json").read_text())
    from dreamer4_libero.fileio import sha256_file

    assert info["step"] == 7 and Path(info["path"]) == step_path(d, 7).resolve()
    assert info["sha256"] == sha256_file(step_path(d, 7))
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, 8))
    assert (out / "curve_loss.png").stat().st_size > 1000
    conf = json.loads((out / "config.json").read_text())
    assert conf == json.loads((d / "config.json").read_text())
    assert conf["task"] == {"name": "toy", "data_seed": 0} and conf["engine"]["max_steps"] == 7
    assert conf["final_step"] == 7 and len(conf["history"]) == 1
    # a rerun of a finished dir resumes at max_steps and exits at once
    assert train(ToyTask(), cfg(d, max_steps=7, out_dir=str(out))) == EXIT_OK


@pytest.mark.fault(
    fault="NaN loss on DDP rank 1 only (torchrun, 2 ranks, nonfinite=skip)",
    guarantee="both ranks skip the same update, count it and end with identical weights",
)
def test_torchrun_two_processes_exit_ddp_gradients_and_nan_on_one_rank(trainer_cli, tmp_path):
    d, out, rec, log = tmp_path / "ck", tmp_path / "out", tmp_path / "rec", tmp_path / "run.log"
    rec.mkdir()
    rs = 3
    t0 = time.time()
    p = spawn(
        trainer_cli,
        [
            "--ckpt-dir",
            str(d),
            "--out-dir",
            str(out),
            "--max-steps",
            "8",
            "--save-every",
            "5",
            "--log-every",
            "4",
            "--record-step",
            str(rs),
            "--record-dir",
            str(rec),
            "--nan-at",
            "5",
            "--nan-rank",
            "1",
            "--nonfinite",
            "skip",
        ],
        log,
        torchrun=True,
    )
    try:
        rc = p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    wall = time.time() - t0
    text = log.read_text()
    assert rc == 0, text
    assert wall < 60, f"torchrun took {wall:.1f}s to exit (final-step hang?)"
    final = load(step_path(d, 8))
    assert final["step"] == 8 and final["world_size"] == 2 and len(final["rng_by_rank"]) == 2
    assert not torch.equal(final["rng_by_rank"][0]["torch"], final["rng_by_rank"][1]["torch"])
    assert (out / "checkpoint.json").exists()
    # rank 1's NaN at step 5: both ranks skipped update 6 (all-reduced flag) and stayed in sync
    assert final["nonfinite"] == {"policy": "skip", "skipped": 1, "skipped_updates": [6]}
    assert json.loads((out / "checkpoint.json").read_text())["skipped_nonfinite"] == 1
    assert "WARNING non-finite loss at step 5" in text and "on another rank" in text
    # the live view is rank 0's alone: one TensorBoard event file, each logged step once (issue 28)
    from dreamer4_libero.training.monitor import read_tensorboard

    assert len(list((d / "tensorboard").glob("*tfevents*"))) == 1
    assert [s for s, _, _ in read_tensorboard(d / "tensorboard")["scalars"]["lr"]] == metric_steps(d) == [4, 8]
    w = [torch.load(rec / f"ckpt_rank{r}.pt", weights_only=True) for r in range(2)]
    for k in w[0]:
        assert torch.equal(w[0][k], w[1][k]) and torch.equal(w[0][k], final["model"][k]), f"ranks diverged at {k}"

    # DDP gradient == mean of the per-rank gradients, each computed on that rank's batch and RNG
    ddp = [torch.load(rec / f"grad_rank{r}.pt", weights_only=True) for r in range(2)]
    pre = [torch.load(rec / f"pre_rank{r}.pt", weights_only=True) for r in range(2)]
    for k in pre[0]["params"]:
        assert torch.equal(pre[0]["params"][k], pre[1]["params"][k]), "ranks out of sync before the step"
    local = []
    for r in range(2):
        m = make_model()
        m.load_state_dict(pre[r]["params"])
        m.train()
        saved_rng = torch.get_rng_state()
        torch.set_rng_state(pre[r]["rng"])
        toy_loss(m, make_batch(0, rs, r)).backward()
        torch.set_rng_state(saved_rng)
        local.append({n: q.grad.clone() for n, q in m.named_parameters()})
    for n in local[0]:
        assert not torch.allclose(local[0][n], local[1][n]), "the two ranks should see different gradients"
        mean = (local[0][n] + local[1][n]) / 2
        for r in range(2):
            torch.testing.assert_close(ddp[r][n], mean, atol=1e-6, rtol=0)


def _damage(raw: bytes, how: str) -> bytes:
    if how == "truncated":
        return raw[: len(raw) // 2]
    if how == "corrupt_bytes":  # 64 random bytes in the middle: torch.load alone would load wrong weights
        rng = random.Random(1234)
        mid = len(raw) // 2
        return raw[:mid] + bytes(rng.randrange(256) for _ in range(64)) + raw[mid + 64 :]
    assert how == "zero_length"
    return b""


_DAMAGE_GUARANTEE = "skipped with a CheckpointWarning naming it; the previous one resumes to identical weights"


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(
            "truncated",
            marks=pytest.mark.fault(fault="newest checkpoint truncated to half its size", guarantee=_DAMAGE_GUARANTEE),
        ),
        pytest.param(
            "corrupt_bytes",
            marks=pytest.mark.fault(
                fault="64 random bytes overwritten in the middle of the newest checkpoint", guarantee=_DAMAGE_GUARANTEE
            ),
        ),
        pytest.param(
            "zero_length",
            marks=pytest.mark.fault(fault="newest checkpoint is a zero-length file", guarantee=_DAMAGE_GUARANTEE),
        ),
    ],
)
def test_damaged_newest_checkpoint_is_skipped_with_a_warning(tmp_path, how):
    d = tmp_path / "ck"
    assert train(ToyTask(), cfg(d, max_steps=10, save_every=5)) == EXIT_OK
    good = load(step_path(d, 10))
    raw = step_path(d, 10).read_bytes()
    step_path(d, 10).write_bytes(_damage(raw, how))
    (d / "step_0000012.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(CheckpointWarning) as rec:
        path, ck = load_latest_valid(d, "model")
    assert path == step_path(d, 5) and ck["step"] == 5 and len(rec) == 2
    (d / "step_0000012.pt").unlink()
    task = ToyTask()
    with pytest.warns(CheckpointWarning, match="step_0000010.pt"):
        assert train(task, cfg(d, max_steps=10, save_every=5)) == EXIT_OK
    assert task.seen[0] == (5, 5)
    assert_same_state(load(step_path(d, 10)), good)
    assert metric_steps(d) == list(range(1, 11))


def test_every_checkpoint_loads_weights_only(tmp_path):
    d = tmp_path / "ck"
    extra = {
        "path": Path("/x/y"),
        "lr": np.float64(1e-4),
        "shape": (1, 2),
        "scale_pos_embeds": True,
        "n": np.int64(3),
        "none": None,
    }
    task = ToyTask()
    c = cfg(
        d, max_steps=6, save_every=1, keep_last=0, grad_clip=1.0, grad_accum=2, model_key="dynamics", extra_args=extra
    )
    assert train(task, c) == EXIT_OK
    assert [i for _, i in task.seen] == list(range(12)), "grad_accum 2: two consecutive batches per update"
    files = sorted(d.glob("*.pt"))
    assert len(files) == 6 and not list(d.glob("*.tmp")) and not list(d.glob(".*.tmp"))
    for f in files:
        ck = torch.load(f, map_location="cpu", weights_only=True)
        for key in (
            "step",
            "epoch",
            "dynamics",
            "opt",
            "scaler",
            "args",
            "scale_pos_embeds",
            "rng",
            "data",
            "world_size",
            "config",
            "metrics_tail",
        ):
            assert key in ck, key
        assert "model" not in ck and ck["scaler"] == {} and ck["world_size"] == 1
        assert ck["data"] == {"next_step": 2 * ck["step"], "grad_accum": 2}
        assert ck["args"] == {
            "path": "/x/y",
            "lr": 1e-4,
            "shape": [1, 2],
            "scale_pos_embeds": True,
            "n": 3,
            "none": None,
        }
        assert set(ck["rng"]) == {"torch", "cuda", "python", "numpy"}
        assert ck["rng"]["torch"].dtype == torch.uint8
    assert all("grad_norm" in r for r in read_metrics(d / "metrics.jsonl"))
    # resuming with grad_accum 2 (max_steps raised) matches a straight run
    d2 = tmp_path / "ck2"
    assert train(ToyTask(), cfg(d2, max_steps=3, grad_clip=1.0, grad_accum=2, model_key="dynamics")) == EXIT_OK
    task = ToyTask()
    assert train(task, cfg(d2, max_steps=6, grad_clip=1.0, grad_accum=2, model_key="dynamics")) == EXIT_OK
    assert task.seen[0] == (3, 6)
    assert_same_state(load(step_path(d2, 6)), load(step_path(d, 6)), key="dynamics")


@pytest.mark.fault(
    fault="NaN loss at step 7 under nonfinite=stop (the default)",
    guarantee="raises naming the step and the newest checkpoint, which is the last good state",
)
def test_non_finite_loss_raises_with_step(reference, tmp_path):
    d = tmp_path / "ck"
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 7 \(update 8 of 30") as err:
        train(ToyTask(nan_at=7), cfg(d))
    assert "nonfinite=stop" in str(err.value) and "step_0000005.pt" in str(err.value), str(err.value)
    ends = [a for a in read_attempts(d) if a["event"] == "end"]
    assert ends[-1]["status"] == "error" and "non-finite" in ends[-1]["reason"]
    # nothing after the last good step reached the disk: the newest checkpoint loads and is step 5 of a clean run
    assert [s for s, _ in list_checkpoints(d)] == [5]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        path, ck = load_latest_valid(d, "model")
    assert path == step_path(d, 5)
    assert_same_state(ck, load(step_path(reference, 5)))
    # the lock was released; the run resumes from step 5
    task = ToyTask()
    assert train(task, cfg(d, max_steps=8)) == EXIT_OK
    assert task.seen[0] == (5, 5)


@pytest.mark.fault(
    fault="NaN loss at step 7 under nonfinite=skip",
    guarantee="that update is skipped (weights, optimizer unchanged), warned, counted; reaches max_steps",
)
def test_non_finite_loss_skip_skips_counts_and_reaches_max_steps(reference, tmp_path):
    d, out = tmp_path / "ck", tmp_path / "out"
    with pytest.warns(NonFiniteLossWarning, match=r"non-finite loss at step 7 .*update skipped") as rec:
        assert train(ToyTask(nan_at=7), cfg(d, max_steps=10, save_every=1, nonfinite="skip")) == EXIT_OK
    assert len([w for w in rec if issubclass(w.category, NonFiniteLossWarning)]) == 1
    assert "WARNING non-finite loss at step 7" in (d / "train.log").read_text()
    s7, s8, s9 = (load(step_path(d, s)) for s in (7, 8, 9))
    assert_same_state(load(step_path(d, 5)), load(step_path(reference, 5)))  # before the NaN: a clean run
    assert all(torch.equal(s7["model"][k], s8["model"][k]) for k in s7["model"]), "the skipped update moved weights"
    assert s7["opt"]["state"][0]["step"] == s8["opt"]["state"][0]["step"], "the skipped update stepped AdamW"
    assert not all(torch.equal(s8["model"][k], s9["model"][k]) for k in s8["model"]), "training went on after it"
    assert s8["nonfinite"] == {"policy": "skip", "skipped": 1, "skipped_updates": [8]}
    assert s7["nonfinite"]["skipped"] == 0
    recs = {r["step"]: r for r in read_metrics(d / "metrics.jsonl")}
    assert recs[8]["loss"] is None and recs[8]["skipped_nonfinite"] == 1 and "skipped_nonfinite" not in recs[7]
    # the count survives a resume (max_steps raised) and reaches the final outputs
    assert train(ToyTask(), cfg(d, max_steps=12, save_every=1, nonfinite="skip", out_dir=str(out))) == EXIT_OK
    assert load(step_path(d, 12))["nonfinite"]["skipped_updates"] == [8]
    assert json.loads((out / "checkpoint.json").read_text())["skipped_nonfinite"] == 1
    assert [a.get("skipped_nonfinite") for a in read_attempts(d) if a["event"] == "end"] == [1, 1]
    assert not list(out.glob("curve_skipped*")), "a count, not a curve"
    # the skip budget: more skipped updates than nonfinite_max_skips stop the run like nonfinite=stop
    with pytest.raises(FloatingPointError, match=r"nonfinite_max_skips=0 reached"):
        train(ToyTask(nan_at=2), cfg(tmp_path / "ck0", max_steps=4, nonfinite="skip", nonfinite_max_skips=0))


@pytest.mark.fault(
    fault="checkpoint write fails: file size limit (RLIMIT_FSIZE) hit while writing step 10",
    guarantee="non-zero exit naming the file and the cause; no temp file; step 5 intact, resumes",
)
def test_disk_full_during_checkpoint_write_keeps_the_previous_one(trainer_cli, reference, tmp_path):
    s5, s10 = step_path(reference, 5).stat().st_size, step_path(reference, 10).stat().st_size
    # step 10's file is larger (its metrics_tail holds 10 records, step 5's 5; zip records are 64-byte aligned):
    # half the gap covers this run's other ckpt_dir path in the stored config
    assert s10 - s5 >= 384, (s5, s10)
    limit = (s5 + s10) // 2
    d = tmp_path / "ck"

    def limit_file_size():  # in the child: a write past `limit` bytes fails with EFBIG instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(REPO / "src"))
    t0 = time.time()
    r = trainer_cli.run(
        [sys.executable, str(TOY), "--ckpt-dir", str(d), "--max-steps", str(N), "--keep-last", "0"],
        env=env,
        cwd=REPO,
        preexec_fn=limit_file_size,
        timeout=120,
    )
    print(
        f"[fault] RLIMIT_FSIZE {limit} bytes (step 5: {s5}, step 10: {s10}); trainer exit {r.returncode} "
        f"after {time.time() - t0:.1f}s"
    )
    err = r.stderr
    assert r.returncode != 0 and r.returncode != EXIT_RESUME, err[-3000:]
    assert "CheckpointWriteError: checkpoint write failed" in err and str(step_path(d, 10)) in err, err[-3000:]
    assert "file too large" in err and "older checkpoints" in err, err[-3000:]
    assert [s for s, _ in list_checkpoints(d)] == [5]
    assert not [p.name for p in d.iterdir() if p.name.endswith(".tmp")], "a partial temp file was left behind"
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        path, ck = load_latest_valid(d, "model")
    assert path == step_path(d, 5)
    assert_same_state(ck, load(step_path(reference, 5)))
    ends = [a for a in read_attempts(d) if a["event"] == "end"]
    assert ends[-1]["status"] == "error" and "CheckpointWriteError" in ends[-1]["reason"]
    # space freed: the rerun resumes from step 5 and ends as an uninterrupted run
    task = ToyTask()
    assert train(task, cfg(d)) == EXIT_OK
    assert task.seen[0] == (5, 5)
    assert_same_state(load(step_path(d, N)), load(step_path(reference, N)))


def test_save_prune_and_latest(tmp_path):
    for s in (1, 2, 3, 10, 11):
        save_checkpoint(tmp_path, {"step": s, "model": {"w": torch.full((2,), float(s))}}, keep_last=3)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 10, 11]
    (tmp_path / ".step_0000012.pt.abc.tmp").write_bytes(b"half")  # a leftover temp file is ignored
    path, ck = load_latest_valid(tmp_path, "model")
    assert path.name == "step_0000011.pt" and ck["model"]["w"][0] == 11
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, {"step": np.int64(4)})


def test_lock_unit(tmp_path):
    a = CheckpointLock(tmp_path).acquire()
    with pytest.raises(CheckpointLockError, match=f"pid {os.getpid()}"):
        CheckpointLock(tmp_path).acquire()
    a.release()
    with CheckpointLock(tmp_path):
        pass


def test_metrics_truncation(tmp_path):
    m = MetricsLog(tmp_path)
    for s in range(1, 11):
        m.append({"step": s, "loss": torch.tensor(1.0 / s), "bad": float("nan")})
    m.close()
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 11, "lo')  # a line cut by SIGKILL
    m2 = MetricsLog(tmp_path)
    assert m2.truncate_after(6) == 5
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == list(range(1, 7)) and recs[0]["bad"] is None
    m2.append({"step": 7, "loss": 0.1})
    assert [r["step"] for r in m2.records()] == list(range(1, 8))
    m2.close()


def test_engine_args():
    ap = argparse.ArgumentParser()
    add_engine_args(ap)
    a = ap.parse_args(
        [
            "--ckpt-dir",
            "c",
            "--max-steps",
            "9",
            "--time-limit-min",
            "12.5",
            "--grad-clip",
            "none",
            "--deterministic",
            "true",
        ]
    )
    c = engine_config_from_args(a, max_steps=100, save_every=7, grad_clip=1.0, model_key="dynamics")
    assert (c.ckpt_dir, c.max_steps, c.time_limit_min, c.save_every, c.grad_clip, c.deterministic, c.model_key) == (
        "c",
        9,
        12.5,
        7,
        None,
        True,
        "dynamics",
    )
    with pytest.raises(TypeError):
        engine_config_from_args(a, bogus=1)
    b = ap.parse_args(["--nonfinite", "skip", "--nonfinite-max-skips", "3"])
    c = engine_config_from_args(b, nonfinite="stop")
    assert (c.nonfinite, c.nonfinite_max_skips) == ("skip", 3)
    assert engine_config_from_args(ap.parse_args([])).nonfinite == "stop"
    with pytest.raises(ValueError, match="nonfinite"):
        EngineConfig(nonfinite="ignore")


def test_nonfinite_policy_is_pipeline_config_but_not_run_identity():
    """`nonfinite` / `nonfinite_max_skips` exist (with defaults) in the tokenizer and dynamics sections;
    switching them keeps the run identity, so a run stopped by a NaN resumes under skip."""
    from dreamer4_libero.config import demo_config, dynamics_variants
    from dreamer4_libero.training.identity import run_identity

    cfg_ = demo_config()
    sections = [cfg_["tokenizer"], *dynamics_variants(cfg_).values()]
    for sec in sections:
        assert (sec["nonfinite"], sec["nonfinite_max_skips"]) == ("stop", 100)
    ident = dict(world_size=1, data_fingerprint="x")
    t = cfg_["tokenizer"]
    assert run_identity(t, **ident)[0] == run_identity({**t, "nonfinite": "skip", "nonfinite_max_skips": 5}, **ident)[0]


def test_param_groups_lr_multipliers_longest_prefix_wins():
    from dreamer4_libero.training.optim import param_groups

    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    groups = param_groups(m, 1e-3, {"1": 3.0, "1.bias": 0.5})
    by_mult = {g["lr_mult"]: g for g in groups}
    assert set(by_mult) == {0.5, 1.0, 3.0}
    assert by_mult[1.0]["lr"] == 1e-3 and by_mult[3.0]["lr"] == pytest.approx(3e-3)
    assert [p.shape for p in by_mult[0.5]["params"]] == [torch.Size([2])]  # 1.bias
    assert len(by_mult[3.0]["params"]) == 1 and len(by_mult[1.0]["params"]) == 2
    assert len(param_groups(m, 1e-3, {})) == 1


def test_cosine_schedule_factor_and_validation():
    from dreamer4_libero.training.optim import lr_factor

    assert lr_factor("constant", 7, 10) == 1.0
    assert lr_factor("cosine", 0, 10) == 1.0 and lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    vals = [lr_factor("cosine", s, 10) for s in range(10)]
    assert all(a > b for a, b in zip(vals, vals[1:])) and vals[-1] > 0
    with pytest.raises(ValueError, match="lr_schedule"):
        EngineConfig(lr_schedule="linear")
