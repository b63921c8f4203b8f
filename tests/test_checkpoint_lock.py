"""The checkpoint-dir lock where flock is unavailable (Lustre noflock, NFSv3 without lockd): the O_EXCL lock
file keeps the guarantee - a second trainer fails at once naming the holder and the mechanism; a dead holder
(SIGKILL, a reused pid, a stale heartbeat on another node, an ended Slurm job) never blocks."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dreamer4_libero.training import dirlock
from dreamer4_libero.training.checkpoints import CheckpointLock, CheckpointLockError
from dreamer4_libero.training.dirlock import EXCL_NAME, LOCK_ENV, STALE_S, node_local_flock

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_flock(monkeypatch):
    """flock fails as on Lustre mounted noflock."""

    def enosys(fd, op):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(fcntl, "flock", enosys)
    monkeypatch.delenv(LOCK_ENV, raising=False)


def _holder_file(d: Path, **info) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / EXCL_NAME
    p.write_text(json.dumps({"since": "2026-01-01T00:00:00", "token": "dead", **info}) + "\n")
    return p


def test_flock_is_used_where_it_works(tmp_path, monkeypatch):
    monkeypatch.delenv(LOCK_ENV, raising=False)
    with CheckpointLock(tmp_path) as lk:
        assert lk.mechanism == "flock" and not (tmp_path / EXCL_NAME).exists()
        with pytest.raises(CheckpointLockError, match=rf"pid {os.getpid()}\b.*lock: flock on "):
            CheckpointLock(tmp_path).acquire()


@pytest.mark.fault(
    fault="flock raises ENOSYS (Lustre noflock); two trainers on one dir",
    guarantee="the lock file takes over: the second fails at once naming the holder and 'lock file'",
)
def test_lock_file_when_flock_is_unsupported(tmp_path, no_flock, capsys):
    a = CheckpointLock(tmp_path).acquire()
    assert a.mechanism == "lock file" and a.held
    info = json.loads((tmp_path / EXCL_NAME).read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname() and info["pid_start"] > 0
    assert "flock failed with ENOSYS" in capsys.readouterr().err
    t0 = time.time()
    with pytest.raises(CheckpointLockError) as e:
        CheckpointLock(tmp_path).acquire()
    msg = str(e.value)
    assert time.time() - t0 < 2
    assert f"locked by pid {os.getpid()} on {socket.gethostname()}" in msg and "another trainer is using it" in msg
    assert f"lock file {tmp_path / EXCL_NAME}, flock failed with ENOSYS" in msg, msg
    assert "it is alive: pid" in msg and "is running on this host" in msg, msg
    a.release()
    assert not (tmp_path / EXCL_NAME).exists() and not a.held
    with CheckpointLock(tmp_path) as b:  # free again
        assert b.held


@pytest.mark.fault(
    fault="flock raises ENOSYS; the lock-file holder (a real process) is SIGKILLed",
    guarantee="while it lives the dir is refused naming its pid; once dead the next trainer takes the lock at once",
)
def test_dead_holder_never_blocks_the_lock_file(tmp_path, no_flock, capsys):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from dreamer4_libero.training.checkpoints import CheckpointLock; "
            "CheckpointLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, LOCK_ENV: "file", "PYTHONPATH": str(REPO / "src")},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CheckpointLockError, match=rf"locked by pid {holder.pid}\b"):
            CheckpointLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / EXCL_NAME).exists(), "SIGKILL leaves the lock file behind"
    t0 = time.time()
    with CheckpointLock(tmp_path) as lk:
        assert lk.mechanism == "lock file" and time.time() - t0 < 2
        assert json.loads((tmp_path / EXCL_NAME).read_text())["pid"] == os.getpid()
    assert f"removed the stale lock of pid {holder.pid}" in capsys.readouterr().err


def test_a_reused_pid_is_a_dead_holder(tmp_path, no_flock):
    # our own pid, but another process start time: the recorded holder is gone and the pid was reused
    _holder_file(tmp_path, pid=os.getpid(), host=socket.gethostname(), pid_start=1)
    with CheckpointLock(tmp_path) as lk:
        assert lk.held


def test_holder_on_another_node_lives_by_its_heartbeat(tmp_path, no_flock):
    p = _holder_file(tmp_path, pid=4242, host="some-other-node")
    with pytest.raises(CheckpointLockError, match=r"pid 4242 on some-other-node.*heartbeat is \d+ s old"):
        CheckpointLock(tmp_path).acquire()
    old = time.time() - STALE_S - 60
    os.utime(p, (old, old))  # no heartbeat for longer than STALE_S
    with CheckpointLock(tmp_path) as lk:
        assert lk.held and json.loads(p.read_text())["pid"] == os.getpid()


def test_heartbeat_refreshes_the_lock_file(tmp_path, no_flock, monkeypatch):
    monkeypatch.setattr(dirlock, "HEARTBEAT_S", 0.05)
    with CheckpointLock(tmp_path):
        p = tmp_path / EXCL_NAME
        os.utime(p, (1.0, 1.0))
        time.sleep(0.5)
        assert time.time() - p.stat().st_mtime < 5


def test_holder_on_another_node_with_an_ended_slurm_job_is_dead(tmp_path, no_flock, monkeypatch):
    """The Slurm answer (squeue's job state) decides before the heartbeat does."""
    _holder_file(tmp_path, pid=4242, host="gpu-node-7", slurm_job_id="123")
    states = {"123": "RUNNING"}
    monkeypatch.setattr(dirlock, "_slurm_job_state", lambda job: states[job])
    with pytest.raises(CheckpointLockError, match=r"Slurm job 123 is RUNNING"):
        CheckpointLock(tmp_path).acquire()
    states["123"] = ""  # squeue: invalid job id (the job is over)
    with CheckpointLock(tmp_path) as lk:
        assert lk.held


def test_forced_lock_file_and_node_local_flock_detection(tmp_path, monkeypatch):
    monkeypatch.setenv(LOCK_ENV, "file")
    with CheckpointLock(tmp_path) as lk:
        assert lk.mechanism == "lock file" and lk.why_file == f"${LOCK_ENV}=file"
    monkeypatch.setattr(dirlock, "_mount_of", lambda p: ("lustre", "rw,localflock,lazystatfs"))
    assert node_local_flock(tmp_path) == "lustre mounted localflock"
    monkeypatch.setattr(dirlock, "_mount_of", lambda p: ("lustre", "rw,flock"))
    assert node_local_flock(tmp_path) is None
    monkeypatch.setattr(dirlock, "_mount_of", lambda p: ("nfs", "rw,vers=3,local_lock=flock"))
    assert node_local_flock(tmp_path) == "nfs mounted local_lock=flock"
    monkeypatch.delenv(LOCK_ENV)
    with CheckpointLock(tmp_path) as lk:  # auto: a node-local flock is not used
        assert lk.mechanism == "lock file" and "flock would lock this node only" in lk.why_file


def test_trainers_that_chose_different_mechanisms_still_exclude_each_other(tmp_path, monkeypatch):
    monkeypatch.setenv(LOCK_ENV, "file")
    a = CheckpointLock(tmp_path).acquire()  # the lock file, and the flock too (it works here)
    monkeypatch.delenv(LOCK_ENV)
    with pytest.raises(CheckpointLockError, match=rf"pid {os.getpid()}\b.*lock: flock on "):
        CheckpointLock(tmp_path).acquire()
    a.release()
    assert not (tmp_path / EXCL_NAME).exists()
    # a lock-file holder whose flock could not be taken (another node): the flock user still sees it
    _holder_file(
        tmp_path, pid=os.getpid(), host=socket.gethostname(), pid_start=dirlock._proc_start(os.getpid()), token="live"
    )
    with pytest.raises(CheckpointLockError, match=r"lock: lock file .*held by a trainer that uses the lock file"):
        CheckpointLock(tmp_path).acquire()
    b_lock = CheckpointLock(tmp_path)
    # the refused trainer left the flock free again: the same refusal (a leaked flock would say "flock on")
    with pytest.raises(CheckpointLockError, match=r"held by a trainer that uses the lock file"):
        b_lock.acquire()
    assert not b_lock.held
    (tmp_path / EXCL_NAME).unlink()
    with CheckpointLock(tmp_path) as b:  # flock (nothing else held)
        assert b.mechanism == "flock"
        monkeypatch.setenv(LOCK_ENV, "file")
        with pytest.raises(CheckpointLockError, match=r"lock: flock on "):
            CheckpointLock(tmp_path).acquire()
        assert not (tmp_path / EXCL_NAME).exists()


def test_this_machines_tmp_is_not_node_local():
    assert node_local_flock(Path("/tmp")) is None


@pytest.mark.fault(
    fault="flock raises ENOSYS; a toy trainer holds the run dir, then is SIGKILLed mid-run",
    guarantee="a second trainer fails at once naming it and the lock file; after the kill the "
    "retry takes the dir over and finishes",
)
def test_trainers_share_a_dir_through_the_lock_file(trainer_cli, tmp_path, no_flock):
    sys.path.insert(0, str(REPO / "tests"))
    from engine_toy import ToyTask

    from dreamer4_libero.training.checkpoints import list_checkpoints
    from dreamer4_libero.training.engine import EXIT_OK, train
    from dreamer4_libero.training.engine_config import EngineConfig

    d, log = tmp_path / "ck", tmp_path / "toy.log"
    p = trainer_cli.start(
        [
            sys.executable,
            str(REPO / "tests" / "engine_toy.py"),
            "--ckpt-dir",
            str(d),
            "--max-steps",
            "200",
            "--save-every",
            "2",
            "--sleep",
            "0.1",
        ],
        log,
        cwd=REPO,
        PYTHONPATH=str(REPO / "src"),
        **{LOCK_ENV: "file"},
    )
    cfg = EngineConfig(ckpt_dir=str(d), max_steps=10, save_every=5, seed=0, deterministic=True, progress=False)
    try:
        t0 = time.time()
        while not list_checkpoints(d):
            assert p.poll() is None and time.time() - t0 < 60, log.read_text()
            time.sleep(0.05)
        t0 = time.time()
        with pytest.raises(CheckpointLockError) as e:
            train(ToyTask(), cfg)
        assert time.time() - t0 < 5
        assert f"locked by pid {p.pid}" in str(e.value) and "lock file" in str(e.value), str(e.value)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    cfg.max_steps = max(list_checkpoints(d)[-1][0] + 2, 10)
    assert train(ToyTask(), cfg) == EXIT_OK  # the dead holder's lock file does not block
    assert list_checkpoints(d)[-1][0] == cfg.max_steps and not (d / EXCL_NAME).exists()
