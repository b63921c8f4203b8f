"""Fault injection for the real trainers' tests (tests/test_tokenizer_train.py, tests/test_dynamics_train.py).

Two scripted sequences of interrupted attempts of one trainer command on one checkpoint dir, each
ending with an attempt that runs to the end; the tests then compare the final weights with an
uninterrupted reference run:

* ``interrupt_at_random_steps``: SIGTERM once the metrics log reaches a random step (the trainer
  must save and exit 75), then SIGKILL at a later random step.
* ``interrupt_during_checkpoint_writes``: with the ``D4L_FAULT_CKPT_WRITE_PAUSE_S`` hook
  (training/checkpoints.py) the trainer pauses after a checkpoint's temp file is written and
  closed, before ``os.replace``; SIGTERM arrives in that pause (the write must complete, then the
  trainer exits 75), then, in a second attempt, SIGKILL in the pause of a later checkpoint (its
  complete temp file is left behind and must never be resumed from).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from dreamer4_libero.training.checkpoints import FAULT_MARKER, FAULT_MATCH_ENV, FAULT_PAUSE_ENV, list_checkpoints
from dreamer4_libero.training.resume import read_attempts
from dreamer4_libero.training.metrics import read_metrics

TIMEOUT = 180


def wait_until(proc: subprocess.Popen, cond, log: Path, what: str) -> None:
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"trainer exited ({proc.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        if time.time() - t0 > TIMEOUT:
            proc.kill()
            pytest.fail(f"no {what} after {TIMEOUT}s:\n{log.read_text()[-4000:]}")
        time.sleep(0.01)


def logged_step(ckpt_dir: Path) -> int:
    """Newest step in the live metrics log (-1 before the first record)."""
    recs = read_metrics(Path(ckpt_dir) / "metrics.jsonl")
    return max((r["step"] for r in recs), default=-1)


def temp_files(ckpt_dir: Path, step: int | None = None) -> list[Path]:
    pat = re.compile(rf"^\.step_{step:07d}\.pt\..*\.tmp$" if step is not None else r"^\..*\.tmp$")
    return sorted(p for p in Path(ckpt_dir).iterdir() if pat.match(p.name)) if Path(ckpt_dir).is_dir() else []


def finish(trainer_cli, cmd: list[str], log: Path) -> str:
    res = trainer_cli.run(cmd, timeout=TIMEOUT)
    log.write_text(res.stdout + res.stderr)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return res.stdout + res.stderr


def interrupt_at_random_steps(
    trainer_cli, cmd: list[str], ckpt: Path, tmp: Path, *, max_steps: int, log_every: int, seed: int
) -> dict:
    """SIGTERM at a random logged step k1 (expects exit 75 after saving), SIGKILL at a random later step
    k2, then a last attempt to the end. Returns what happened (for the test's asserts and its output)."""
    rng = random.Random(seed)
    steps = [s for s in range(log_every, max_steps - 1, log_every)]
    k1 = rng.choice(steps[: max(1, len(steps) // 2)])
    log1 = tmp / "attempt1_sigterm.log"
    p = trainer_cli.start(cmd, log1)
    wait_until(p, lambda: logged_step(ckpt) >= k1, log1, f"step {k1}")
    p.send_signal(signal.SIGTERM)
    rc1 = p.wait(timeout=TIMEOUT)
    out1 = log1.read_text()
    assert rc1 == 75, f"SIGTERM: exit {rc1}, expected 75:\n{out1[-4000:]}"
    m = re.search(r"SIGTERM: saved step (\d+)", out1)
    assert m, out1[-4000:]
    saved1 = int(m.group(1))
    assert k1 <= saved1 < max_steps and list_checkpoints(ckpt)[-1][0] == saved1

    later = [s for s in steps if s > saved1] or [saved1 + 1]
    k2 = rng.choice(later)
    log2 = tmp / "attempt2_sigkill.log"
    p = trainer_cli.start(cmd, log2)
    # the resumed attempt first truncates the log to its checkpoint, then logs saved1 + 1, ...
    wait_until(p, lambda: logged_step(ckpt) >= k2, log2, f"step {k2}")
    p.send_signal(signal.SIGKILL)
    rc2 = p.wait(timeout=TIMEOUT)
    assert rc2 == -signal.SIGKILL
    last2 = list_checkpoints(ckpt)[-1][0]
    assert saved1 <= last2 < max_steps, "the second attempt finished before it could be killed"
    out3 = finish(trainer_cli, cmd, tmp / "attempt3.log")
    assert f"RESUMED from {ckpt / f'step_{last2:07d}.pt'} at step {last2}" in out3, out3[-3000:]
    starts = [a["start_step"] for a in read_attempts(ckpt) if a["event"] == "start"]
    assert starts == [0, saved1, last2], starts
    info = {"sigterm_at": k1, "sigterm_saved": saved1, "sigkill_at": k2, "sigkill_resumed_from": last2}
    print(f"\n[fault] {info}")
    return info


def interrupt_during_checkpoint_writes(
    trainer_cli,
    cmd: list[str],
    ckpt: Path,
    tmp: Path,
    *,
    save_every: int,
    max_steps: int,
    seed: int,
    pause_s: float = 3.0,
) -> dict:
    """SIGTERM inside the write of checkpoint j1, SIGKILL inside the write of checkpoint j2 > j1 (random
    checkpoint steps), then a last attempt to the end. Returns what happened."""
    rng = random.Random(seed)
    ck_steps = list(range(save_every, max_steps, save_every))  # not the final one
    j1 = rng.choice(ck_steps[:-1])
    j2 = rng.choice([s for s in ck_steps if s > j1])

    def pause_at(step: int) -> dict:
        return {FAULT_PAUSE_ENV: str(pause_s), FAULT_MATCH_ENV: f"step_{step:07d}.pt"}

    # attempt 1: SIGTERM while step j1's temp file is complete but not yet renamed
    log1 = tmp / "attempt1_sigterm_in_write.log"
    p = trainer_cli.start(cmd, log1, **pause_at(j1))
    wait_until(p, lambda: FAULT_MARKER in log1.read_text(), log1, f"the write of checkpoint {j1}")
    assert temp_files(ckpt, j1) and not (ckpt / f"step_{j1:07d}.pt").exists()
    p.send_signal(signal.SIGTERM)
    rc1 = p.wait(timeout=TIMEOUT)
    out1 = log1.read_text()
    # the handler only sets a flag: the write completes, then the trainer stops at that step
    assert rc1 == 75 and f"SIGTERM: saved step {j1}" in out1, f"exit {rc1}:\n{out1[-4000:]}"
    assert list_checkpoints(ckpt)[-1][0] == j1 and not temp_files(ckpt)

    # attempt 2: SIGKILL while step j2's temp file is complete but not yet renamed
    log2 = tmp / "attempt2_sigkill_in_write.log"
    p = trainer_cli.start(cmd, log2, **pause_at(j2))
    wait_until(p, lambda: FAULT_MARKER in log2.read_text(), log2, f"the write of checkpoint {j2}")
    p.send_signal(signal.SIGKILL)
    assert p.wait(timeout=TIMEOUT) == -signal.SIGKILL
    stray = temp_files(ckpt, j2)
    assert len(stray) == 1 and stray[0].stat().st_size > 0, "the killed write should leave its temp file"
    assert not (ckpt / f"step_{j2:07d}.pt").exists()
    prev = list_checkpoints(ckpt)[-1][0]
    assert prev == j2 - save_every

    # attempt 3: resumes from the previous checkpoint (never the stray temp file), removes it, finishes
    out3 = finish(trainer_cli, cmd, tmp / "attempt3.log")
    assert f"RESUMED from {ckpt / f'step_{prev:07d}.pt'} at step {prev}" in out3, out3[-3000:]
    assert f"removed {stray[0].name}" in out3 and not temp_files(ckpt), out3[-3000:]
    starts = [a["start_step"] for a in read_attempts(ckpt) if a["event"] == "start"]
    assert starts == [0, j1, prev], starts
    info = {"sigterm_in_write_of": j1, "sigkill_in_write_of": j2, "resumed_from": prev}
    print(f"\n[fault] {info}")
    return info


# ----------------------------------------------------------------------------------------------
# corrupt training shards (data/shards.py layout), without copying the whole preprocessed folder

SHARD_DAMAGE = ("truncated_frames", "garbage_npy_header", "garbage_episodes_json")


def corrupt_shard_copy(preprocessed: Path, dest: Path, how: str, task_id: str | None = None) -> Path:
    """`dest` = a view of the preprocessing output (manifest, splits; every shard file a symlink) in which
    one file of one shard (the first training episode's task unless `task_id`) is damaged; returns that file."""
    import json

    dest.mkdir(parents=True)
    (dest / "manifest.json").write_bytes((preprocessed / "manifest.json").read_bytes())
    os.symlink(preprocessed / "splits", dest / "splits")
    if task_id is None:
        task_id = json.loads((preprocessed / "splits" / "train.json").read_text())["episodes"][0].rsplit("/", 1)[0]
    for folder in (preprocessed / "shards").glob("*/*"):
        out = dest / "shards" / folder.relative_to(preprocessed / "shards")
        out.mkdir(parents=True)
        for f in folder.iterdir():
            os.symlink(f, out / f.name)
    shard = dest / "shards" / task_id
    name = {
        "truncated_frames": "frames.npy",
        "garbage_npy_header": "actions.npy",
        "garbage_episodes_json": "episodes.json",
    }[how]
    target = shard / name
    raw = (preprocessed / "shards" / task_id / name).read_bytes()
    target.unlink()
    rng = random.Random(7)
    if how == "truncated_frames":  # a copy cut short (the rows of the last demo are missing)
        bad = raw[: len(raw) - len(raw) // 10]
    elif how == "garbage_npy_header":
        bad = bytes(rng.randrange(256) for _ in range(128)) + raw[128:]
    else:
        bad = bytes(rng.randrange(256) for _ in range(len(raw)))
    target.write_bytes(bad)
    return target
