"""The checkpoint-dir lock: one live trainer per run directory, on any shared filesystem.

Guarantee: a second trainer on a locked dir fails at once with ``CheckpointLockError`` naming the
holder (pid, host, Slurm job id, since when) and the lock mechanism; a dead holder never blocks.

Two mechanisms, the first that the filesystem supports:

``flock``
    A non-blocking ``fcntl.flock`` on ``<dir>/.lock`` (which records the holder as JSON). The kernel drops
    it with the holder's file descriptors, so a process killed by SIGKILL or a time limit never leaves a
    stale lock. Used unless the filesystem cannot give a cluster-wide flock.

``lock file``
    Where ``flock`` fails (ENOSYS: Lustre mounted ``noflock``; EOPNOTSUPP / ENOLCK: NFSv3 without a lock
    daemon) or would only lock on this node (Lustre ``localflock``, NFS ``local_lock=flock|all``, found in
    /proc/self/mountinfo), or where ``$D4L_CKPT_LOCK=file``: ``<dir>/.lock.excl``, created with
    ``O_CREAT | O_EXCL`` (atomic on Lustre and on NFSv3+), holding the holder's pid, host, Slurm job id,
    the process's start time and a random token. The holder refreshes its mtime every ``HEARTBEAT_S``
    seconds from a daemon thread. A contender that finds the file decides whether its holder still lives:

    * same host: the pid runs and has the recorded start time (a reused pid is a dead holder);
    * another host, with a Slurm job id and ``squeue`` on PATH: the job is still queued or running;
    * otherwise: the heartbeat is younger than ``STALE_S`` (ages measured against the filesystem's clock,
      by touching a probe file in the same dir, so clock skew between nodes does not matter).

    A dead holder's file is removed under a short-lived ``<dir>/.lock.break`` (itself ``O_EXCL``; one
    older than ``BREAK_STALE_S`` is from a crashed breaker and removed), after checking that it still
    carries the dead holder's token, and the contender creates its own. So a retry on the same node or
    under Slurm takes over at once; a retry on another node without Slurm waits at most ``STALE_S``.

The lock-file mechanism also takes the ``flock`` where it works (even a node-local one), and the ``flock``
mechanism also respects a live holder of the lock file, so trainers that chose differently (another
``$D4L_CKPT_LOCK``) still exclude each other where both can see it.

``$D4L_CKPT_LOCK``: ``auto`` (default, as above), ``flock`` (flock only, errors if unsupported) or ``file``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

LOCK_NAME = ".lock"  # the flock target
EXCL_NAME = ".lock.excl"  # the O_EXCL lock file
BREAK_NAME = ".lock.break"  # held while a dead holder's lock file is removed
LOCK_ENV = "D4L_CKPT_LOCK"
HEARTBEAT_S = 15.0
STALE_S = 120.0
BREAK_STALE_S = 30.0
# flock errors that mean "this filesystem does not do flock", not "somebody holds it"
_FLOCK_UNSUPPORTED = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOLCK}
_SLURM_ALIVE = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESV_DEL_HOLD",
}


class CheckpointLockError(RuntimeError):
    """Another live process holds the checkpoint dir."""


def _proc_start(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (/proc/<pid>/stat field 22), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _pid_alive(pid: int, start: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    now_start = _proc_start(pid)
    return start is None or now_start is None or now_start == start


def _slurm_job_state(job_id: str) -> str | None:
    """The job's state from ``squeue`` ('' once Slurm has forgotten it), None when it cannot be asked."""
    exe = shutil.which("squeue")
    if exe is None:
        return None
    try:
        r = subprocess.run([exe, "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        return "" if "invalid job id" in r.stderr.lower() else None
    return r.stdout.strip().split("\n")[0].strip()


def _mount_of(path: Path) -> tuple[str, str]:
    """(fstype, mount + super options) of the mount holding ``path``, ('', '') when unknown."""
    best, found = -1, ("", "")
    try:
        target = str(path.resolve())
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                pre, _, post = line.partition(" - ")
                f, p = pre.split(), post.split()
                mnt = f[4].replace("\\040", " ")
                inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) > best and len(p) >= 3:
                    best, found = len(mnt), (p[0], f"{f[5]},{p[2]}")
    except (OSError, IndexError):
        pass
    return found


def node_local_flock(path: Path) -> str | None:
    """Why flock on ``path``'s filesystem would lock on this node only (None: it is cluster-wide or local)."""
    fstype, opts = _mount_of(path)
    opts_set = set(opts.split(","))
    if fstype == "lustre" and "flock" not in opts_set:
        return f"lustre mounted {'localflock' if 'localflock' in opts_set else 'without flock'}"
    if fstype.startswith("nfs") and ({"local_lock=flock", "local_lock=all"} & opts_set):
        return f"{fstype} mounted {sorted({'local_lock=flock', 'local_lock=all'} & opts_set)[0]}"
    return None


class CheckpointLock:
    """The lock of one checkpoint dir (module docstring), held until ``release`` or process death."""

    def __init__(self, ckpt_dir: str | os.PathLike):
        self.dir = Path(ckpt_dir)
        self.path = self.dir / LOCK_NAME
        self.excl = self.dir / EXCL_NAME
        self.mechanism: str | None = None  # "flock" or "lock file", once acquire() chose
        self.why_file = ""  # why the lock file and not flock
        self._fd: int | None = None
        self._token: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # -- acquire -------------------------------------------------------------------------------
    def acquire(self) -> "CheckpointLock":
        self.dir.mkdir(parents=True, exist_ok=True)
        mode = os.environ.get(LOCK_ENV, "auto").strip().lower() or "auto"
        if mode not in ("auto", "flock", "file"):
            raise ValueError(f"${LOCK_ENV} must be auto|flock|file, got {mode!r}")
        if mode == "file":
            self.why_file = f"${LOCK_ENV}=file"
        elif mode == "auto" and (local := node_local_flock(self.dir)):
            self.why_file = f"flock would lock this node only ({local})"
        elif self._try_flock(strict=mode == "flock"):
            excl = self._read(self.excl) if self.excl.exists() else None
            if excl is not None:  # a trainer that uses the lock file ($D4L_CKPT_LOCK=file elsewhere) counts too
                alive, why = self._holder_alive(excl)
                if alive:
                    self.release()
                    self.mechanism, self.why_file = "lock file", "held by a trainer that uses the lock file"
                    raise CheckpointLockError(self._held_message(excl, why))
            return self
        print(
            f"[checkpoint lock] {self.dir}: using the lock file {EXCL_NAME}: {self.why_file}",
            file=sys.stderr,
            flush=True,
        )
        return self._acquire_file()

    def _info(self) -> dict:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def _try_flock(self, strict: bool) -> bool:
        """True when flock is held; False when the filesystem does not support it (``why_file`` says so)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                self.mechanism = "flock"
                raise CheckpointLockError(self._held_message(self._read(self.path), "")) from None
            if e.errno in _FLOCK_UNSUPPORTED and not strict:
                if not self.why_file:  # keep an earlier reason ($D4L_CKPT_LOCK=file, node-local flock)
                    self.why_file = f"flock failed with {errno.errorcode.get(e.errno, e.errno)} ({e.strerror})"
                return False
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(self._info()) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd, self.mechanism = fd, "flock"
        return True

    def _acquire_file(self) -> "CheckpointLock":
        # also take the flock where it works (even node-local): a trainer that uses flock alone is excluded too
        if self._try_flock(strict=False):
            try:
                return self._create_lock_file()
            except BaseException:
                self.release()
                raise
        return self._create_lock_file()

    def _create_lock_file(self) -> "CheckpointLock":
        self.mechanism = "lock file"
        token = secrets.token_hex(8)
        info = {**self._info(), "pid_start": _proc_start(os.getpid()), "token": token}
        for _ in range(3):
            try:
                fd = os.open(self.excl, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read(self.excl)
                alive, why = self._holder_alive(holder)
                if alive:
                    raise CheckpointLockError(self._held_message(holder, why)) from None
                self._break(holder, why)
                continue
            try:
                os.write(fd, (json.dumps(info) + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self._token = token
            self._stop.clear()
            self._beat = threading.Thread(target=self._heartbeat, name="ckpt-lock-heartbeat", daemon=True)
            self._beat.start()
            return self
        raise CheckpointLockError(
            f"checkpoint dir {self.dir}: could not create {EXCL_NAME} after removing a dead "
            f"holder's lock 3 times (other trainers are racing for it)"
        )

    # -- the lock file's holder ----------------------------------------------------------------
    @staticmethod
    def _read(path: Path) -> dict:
        try:
            return json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _fs_now(self) -> float:
        """Now, by the filesystem's clock (the mtime of a freshly written probe file)."""
        probe = self.dir / f".lock.now.{socket.gethostname()}.{os.getpid()}"
        try:
            probe.write_bytes(b"")
            return probe.stat().st_mtime
        except OSError:
            return time.time()
        finally:
            probe.unlink(missing_ok=True)

    def _holder_alive(self, holder: dict) -> tuple[bool, str]:
        """(alive, why) for the holder recorded in the lock file (module docstring)."""
        pid, host, job = holder.get("pid"), holder.get("host"), holder.get("slurm_job_id")
        if pid and host == socket.gethostname():
            if _pid_alive(int(pid), holder.get("pid_start")):
                return True, f"pid {pid} is running on this host"
            return False, f"pid {pid} no longer runs on this host"
        if job:
            state = _slurm_job_state(job)
            if state == "" or (state and state not in _SLURM_ALIVE):
                return False, f"Slurm job {job} has ended ({state or 'unknown to squeue'})"
            if state:
                return True, f"Slurm job {job} is {state}"
        try:
            age = self._fs_now() - self.excl.stat().st_mtime
        except FileNotFoundError:
            return False, "the lock file is gone"
        if age < STALE_S:
            return True, f"its heartbeat is {max(age, 0.0):.0f} s old (stale after {STALE_S:.0f} s)"
        return False, f"its heartbeat is {age:.0f} s old (stale after {STALE_S:.0f} s)"

    def _break(self, holder: dict, why: str) -> None:
        """Remove a dead holder's lock file, if it is still that holder's (under the break lock)."""
        brk = self.dir / BREAK_NAME
        try:
            fd = os.open(brk, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if self._fs_now() - brk.stat().st_mtime > BREAK_STALE_S:
                    brk.unlink(missing_ok=True)  # a breaker that died: the next try takes over
                    return
            except FileNotFoundError:
                return
            raise CheckpointLockError(
                f"checkpoint dir {self.dir}: another trainer is removing the dead lock of "
                f"{self._who(holder)} right now (lock: {self._mechanism_note()})"
            ) from None
        try:
            os.close(fd)
            if self._read(self.excl).get("token") == holder.get("token"):
                self.excl.unlink(missing_ok=True)
                print(
                    f"[checkpoint lock] {self.dir}: removed the stale lock of {self._who(holder)}: {why}",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            brk.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        warned = False
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if self._read(self.excl).get("token") != self._token:
                    raise FileNotFoundError("the lock file now belongs to another process")
                os.utime(self.excl)
            except OSError as e:
                if not warned:
                    print(
                        f"[checkpoint lock] WARNING {self.excl}: heartbeat failed ({e}); another trainer may "
                        f"take this dir over",
                        file=sys.stderr,
                        flush=True,
                    )
                    warned = True

    # -- messages ------------------------------------------------------------------------------
    @staticmethod
    def _who(info: dict) -> str:
        parts = [
            f"pid {info['pid']}" if info.get("pid") else "",
            f"on {info['host']}" if info.get("host") else "",
            f"(Slurm job {info['slurm_job_id']})" if info.get("slurm_job_id") else "",
            f"since {info['since']}" if info.get("since") else "",
        ]
        return " ".join(p for p in parts if p) or "another process (holder not recorded)"

    def _mechanism_note(self) -> str:
        if self.mechanism == "flock":
            return f"flock on {self.path}"
        return f"lock file {self.excl}, {self.why_file}"

    def _held_message(self, holder: dict, why: str) -> str:
        alive = f"; it is alive: {why}" if why else ""
        return (
            f"checkpoint dir {self.dir} is locked by {self._who(holder)}: another trainer is using it "
            f"(lock: {self._mechanism_note()}{alive}). Stop that trainer or use another --ckpt-dir."
        )

    # -- release -------------------------------------------------------------------------------
    @property
    def held(self) -> bool:
        return self._fd is not None or self._token is not None

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
        if self._token is not None:
            self._stop.set()
            if self._beat is not None:
                self._beat.join()
            if self._read(self.excl).get("token") == self._token:
                self.excl.unlink(missing_ok=True)
            self._token, self._beat = None, None

    def __enter__(self) -> "CheckpointLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
