"""Training engine: resume determinism (SIGKILL, deadline, SIGTERM), clean exit (1 and 2 processes),
DDP gradient sync, checkpoint fallback/format, the checkpoint-dir lock, non-finite loss.

The toy task lives in tests/engine_toy.py (importable here, runnable as a trainer script).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # engine_toy, whatever pytest's import mode

import engine_toy  # noqa: E402
from engine_toy import ToyTask, make_batch, make_model, toy_loss  # noqa: E402
from dreamer4_libero.training.checkpoints import (
    CheckpointLock,
    CheckpointLockError,
    CheckpointWarning,
    list_checkpoints,
    load_latest_valid,
    save_checkpoint,
    step_path,
)
from dreamer4_libero.training.engine import (
    EXIT_OK,
    EXIT_RESUME,
    EngineConfig,
    add_engine_args,
    engine_config_from_args,
    read_attempts,
    train,
)
from dreamer4_libero.training.metrics import MetricsLog, read_metrics

TOY = Path(engine_toy.__file__).resolve()
REPO = TOY.parents[1]
N = 30  # steps of the determinism runs


def cfg(ckpt_dir, **kw) -> EngineConfig:
    base = dict(ckpt_dir=str(ckpt_dir), max_steps=N, save_every=5, keep_last=0, log_every=1, seed=0,
                deterministic=True, progress=False, run_name="toy")
    base.update(kw)
    return EngineConfig(**base)


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


def spawn(args: list[str], log: Path, torchrun: bool = False) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO / "src"))
    pre = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun \
        else [sys.executable]
    fh = open(log, "w")
    return subprocess.Popen(pre + [str(TOY)] + args, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)


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


def test_sigkill_resume_is_bitwise_identical_and_lock(reference, tmp_path):
    d, log = tmp_path / "ck", tmp_path / "a1.log"
    k = random.Random(20240611).randint(3, 24)
    p = spawn(["--ckpt-dir", str(d), "--max-steps", str(N), "--save-every", "3", "--sleep", "0.15"], log)
    try:
        wait_for_ckpt(p, d, 1, log)
        # the lock: a second trainer on the same dir fails at once, naming the holder
        t0 = time.time()
        with pytest.raises(CheckpointLockError, match=rf"locked by pid {p.pid}\b"):
            train(ToyTask(), cfg(d))
        assert time.time() - t0 < 5
        reached = wait_for_ckpt(p, d, k, log)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert p.returncode == -signal.SIGKILL
    last = list_checkpoints(d)[-1][0]
    assert reached <= last < N, "the first attempt must be killed mid-run"
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


def test_deadline_always_makes_progress(tmp_path, capsys):
    d = tmp_path / "ck"
    rc = train(ToyTask(), cfg(d, time_limit_min=1e-6, deadline_margin_s=0.0, start_time=time.time() - 5))
    assert rc == EXIT_RESUME
    assert "deadline reached, saved step 1" in capsys.readouterr().out
    rc = train(ToyTask(), cfg(d, time_limit_min=1e-6, deadline_margin_s=0.0, start_time=time.time() - 5))
    assert rc == EXIT_RESUME and list_checkpoints(d)[-1][0] == 2


def test_sigterm_saves_and_exits_75(reference, tmp_path):
    d, log = tmp_path / "ck", tmp_path / "a1.log"
    p = spawn(["--ckpt-dir", str(d), "--max-steps", str(N), "--save-every", "4", "--sleep", "0.15"], log)
    try:
        wait_for_ckpt(p, d, 4, log)
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    out = log.read_text()
    assert rc == EXIT_RESUME, out
    m = re.search(r"SIGTERM: saved step (\d+)", out)
    assert m, out
    stopped = int(m.group(1))
    assert 4 <= stopped < N and list_checkpoints(d)[-1][0] == stopped
    assert train(ToyTask(), cfg(d)) == EXIT_OK
    assert_same_state(load(step_path(d, N)), load(step_path(reference, N)))


def test_clean_exit_single_process(tmp_path):
    d, out, log = tmp_path / "ck", tmp_path / "out", tmp_path / "run.log"
    t0 = time.time()
    p = spawn(["--ckpt-dir", str(d), "--out-dir", str(out), "--max-steps", "7", "--save-every", "5",
               "--keep-last", "5"], log)
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


def test_torchrun_two_processes_exit_and_ddp_gradients(tmp_path):
    d, out, rec, log = tmp_path / "ck", tmp_path / "out", tmp_path / "rec", tmp_path / "run.log"
    rec.mkdir()
    rs = 3
    t0 = time.time()
    p = spawn(["--ckpt-dir", str(d), "--out-dir", str(out), "--max-steps", "8", "--save-every", "5",
               "--log-every", "4", "--record-step", str(rs), "--record-dir", str(rec)], log, torchrun=True)
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


def test_truncated_newest_checkpoint_falls_back(tmp_path):
    d = tmp_path / "ck"
    assert train(ToyTask(), cfg(d, max_steps=10, save_every=5)) == EXIT_OK
    good = load(step_path(d, 10))
    raw = step_path(d, 10).read_bytes()
    step_path(d, 10).write_bytes(raw[: len(raw) // 2])
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
    extra = {"path": Path("/x/y"), "lr": np.float64(1e-4), "shape": (1, 2), "scale_pos_embeds": True,
             "n": np.int64(3), "none": None}
    task = ToyTask()
    c = cfg(d, max_steps=6, save_every=1, keep_last=0, grad_clip=1.0, grad_accum=2, model_key="dynamics",
            extra_args=extra)
    assert train(task, c) == EXIT_OK
    assert [i for _, i in task.seen] == list(range(12)), "grad_accum 2: two consecutive batches per update"
    files = sorted(d.glob("*.pt"))
    assert len(files) == 6 and not list(d.glob("*.tmp")) and not list(d.glob(".*.tmp"))
    for f in files:
        ck = torch.load(f, map_location="cpu", weights_only=True)
        for key in ("step", "epoch", "dynamics", "opt", "scaler", "args", "scale_pos_embeds", "rng", "data",
                    "world_size", "config", "metrics_tail"):
            assert key in ck, key
        assert "model" not in ck and ck["scaler"] == {} and ck["world_size"] == 1
        assert ck["data"] == {"next_step": 2 * ck["step"], "grad_accum": 2}
        assert ck["args"] == {"path": "/x/y", "lr": 1e-4, "shape": [1, 2], "scale_pos_embeds": True, "n": 3,
                              "none": None}
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


def test_non_finite_loss_raises_with_step(tmp_path):
    d = tmp_path / "ck"
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 7 \(update 8 of 30"):
        train(ToyTask(nan_at=7), cfg(d))
    ends = [a for a in read_attempts(d) if a["event"] == "end"]
    assert ends[-1]["status"] == "error" and "non-finite" in ends[-1]["reason"]
    # the lock was released; the run resumes from step 5
    task = ToyTask()
    assert train(task, cfg(d, max_steps=8)) == EXIT_OK
    assert task.seen[0] == (5, 5)


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
    a = ap.parse_args(["--ckpt-dir", "c", "--max-steps", "9", "--time-limit-min", "12.5", "--grad-clip", "none",
                       "--deterministic", "true"])
    c = engine_config_from_args(a, max_steps=100, save_every=7, grad_clip=1.0, model_key="dynamics")
    assert (c.ckpt_dir, c.max_steps, c.time_limit_min, c.save_every, c.grad_clip, c.deterministic,
            c.model_key) == ("c", 9, 12.5, 7, None, True, "dynamics")
    with pytest.raises(TypeError):
        engine_config_from_args(a, bogus=1)


def test_param_groups_lr_multipliers_longest_prefix_wins():
    from dreamer4_libero.training.engine import param_groups

    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    groups = param_groups(m, 1e-3, {"1": 3.0, "1.bias": 0.5})
    by_mult = {g["lr_mult"]: g for g in groups}
    assert set(by_mult) == {0.5, 1.0, 3.0}
    assert by_mult[1.0]["lr"] == 1e-3 and by_mult[3.0]["lr"] == pytest.approx(3e-3)
    assert [p.shape for p in by_mult[0.5]["params"]] == [torch.Size([2])]      # 1.bias
    assert len(by_mult[3.0]["params"]) == 1 and len(by_mult[1.0]["params"]) == 2
    assert len(param_groups(m, 1e-3, {})) == 1


def test_cosine_schedule_factor_and_validation():
    from dreamer4_libero.training.engine import lr_factor

    assert lr_factor("constant", 7, 10) == 1.0
    assert lr_factor("cosine", 0, 10) == 1.0 and lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    vals = [lr_factor("cosine", s, 10) for s in range(10)]
    assert all(a > b for a, b in zip(vals, vals[1:])) and vals[-1] > 0
    with pytest.raises(ValueError, match="lr_schedule"):
        EngineConfig(lr_schedule="linear")
