"""A Snakemake run interrupted mid-DAG, then resumed (snakemake_slurm.md §4: checkpoints outside the outputs).

The small Slurm CI study (config/demo.yaml + config/ci_slurm.yaml), up to the tokenizer, runs through
the local profile (not Slurm) in a copy of the repo. Once the tokenizer (torchrun, 2 ranks, 60 steps)
has saved its step-30 checkpoint, the run is interrupted:

* ``ctrl_c``: SIGINT to Snakemake's whole process group, as a terminal's Ctrl-C does. torchrun
  passes it on to its ranks (they run in their own sessions), which save a checkpoint of the step
  they are at and exit 75, as on SIGTERM.
* ``sigterm``: SIGTERM to the same process group (``kill -TERM -<pgid>``). Snakemake stops scheduling
  (it exits once its running jobs have ended), the ranks save and exit 75 as above, and the job is not
  restarted although the rule has retries.
* ``sigkill``: every process of the run (Snakemake, the job shell, torchrun and both ranks, found
  through /proc, frozen first) is SIGKILLed, as when the machine dies. Snakemake's directory lock
  is then stale: a plain rerun refuses to start and names ``--unlock``.

The rerun (``--rerun-incomplete``) must run only the training job, leave every output that was
complete before untouched, and the training job must resume from its newest checkpoint (the one
saved on SIGINT or SIGTERM; step 30 after the SIGKILL).
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import planned_jobs, snakemake_cmd, venv_env
from dreamer4_libero.training.checkpoints import CheckpointLock
from dreamer4_libero.training.resume import read_attempts

CONFIGS = ("config/demo.yaml", "config/ci_slurm.yaml")
TARGET = "results/train/tokenizer_ci/checkpoint.json"
SIGNALS = {"ctrl_c": signal.SIGINT, "sigterm": signal.SIGTERM}  # sent to Snakemake's process group


def _snakemake(*extra: str) -> list[str]:
    return snakemake_cmd(TARGET, "--profile", "profiles/local", *extra, "--configfile", *CONFIGS)


def _sigint_default() -> None:
    """Run in the child before exec: SIGINT at its default, as for a terminal's foreground job. A shell's
    background job (``cmd &`` without job control, as a CI runner may start the test suite) inherits
    SIGINT ignored; Snakemake would then never see the Ctrl-C and would restart the job the ranks left
    (its retry) instead of stopping."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _ignores_sigint(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as fh:
        mask = next(int(ln.split()[1], 16) for ln in fh if ln.startswith("SigIgn:"))
    return bool(mask >> (signal.SIGINT - 1) & 1)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def _tree(root: int) -> list[int]:
    kids, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return out


def _kill_tree(root: int) -> list[int]:
    """SIGSTOP the whole tree until no new process appears, then SIGKILL every one of them."""
    frozen: list[int] = []
    while True:
        new = [p for p in _tree(root) if p not in frozen]
        if not new:
            break
        for pid in new:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        frozen += new
    for pid in frozen:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return frozen


def _outputs(work: Path) -> dict[str, int]:
    """Every file under results/ with its mtime (ns)."""
    return {
        str(p.relative_to(work)): p.stat().st_mtime_ns for p in sorted((work / "results").rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(
            "ctrl_c",
            marks=pytest.mark.fault(
                fault="Ctrl-C (SIGINT to the process group) of a local Snakemake run while the tokenizer trains",
                guarantee="the ranks save on SIGINT; --rerun-incomplete reruns only that job from it; "
                "finished outputs untouched",
            ),
        ),
        pytest.param(
            "sigterm",
            marks=pytest.mark.fault(
                fault="SIGTERM to the process group of a local Snakemake run while the tokenizer trains",
                guarantee="Snakemake exits without restarting the job; the ranks save; --rerun-incomplete "
                "reruns only that job from it; finished outputs untouched",
            ),
        ),
        pytest.param(
            "sigkill",
            marks=pytest.mark.fault(
                fault="SIGKILL of the whole local Snakemake run (every process) while the tokenizer trains",
                guarantee="after --unlock, --rerun-incomplete reruns only that job, from its checkpoint",
            ),
        ),
    ],
)
def test_interrupted_dag_resumes_without_rerunning_finished_jobs(dag_repo, how):
    t_start = time.time()
    work = dag_repo
    env = venv_env()
    log1 = work / "run1.log"
    with open(log1, "w") as fh:
        p = subprocess.Popen(
            _snakemake(),
            cwd=work,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_sigint_default,
        )
    assert not _ignores_sigint(p.pid), "Snakemake would not see the Ctrl-C"
    ckpts = str(work / "checkpoints" / "tokenizer_ci" / "*" / "step_0000030.pt")
    t0 = time.time()
    try:
        while not glob.glob(ckpts):
            if p.poll() is not None:
                pytest.fail(
                    f"snakemake exited ({p.returncode}) before the first checkpoint:\n{log1.read_text()[-4000:]}"
                )
            if time.time() - t0 > 300:
                pytest.fail(f"no step-30 checkpoint after 300 s:\n{log1.read_text()[-4000:]}")
            time.sleep(0.05)
        before = _outputs(work)  # make_synthetic, preprocess, splits: complete
        if how in SIGNALS:
            os.killpg(p.pid, SIGNALS[how])
            rc1 = p.wait(timeout=120)
        else:
            killed = _kill_tree(p.pid)
            rc1 = p.wait(timeout=60)
            assert len(killed) >= 5, killed  # snakemake, shell, torchrun, 2 ranks
    finally:
        if p.poll() is None:
            _kill_tree(p.pid)
    t_interrupt = time.time() - t_start
    assert rc1 != 0, log1.read_text()[-3000:]
    ckpt_dir = Path(glob.glob(ckpts)[0]).parent
    assert not (work / TARGET).exists() or (work / ".snakemake" / "incomplete").exists()
    deadline = time.time() + 60  # the ranks are gone: their checkpoint-dir lock is free
    while True:
        try:
            CheckpointLock(ckpt_dir).acquire().release()
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.5)
    if how == "sigterm":  # Snakemake, stopping, saw the job fail and did not start it again: a failed job
        log = log1.read_text()
        assert log.count("localrule train_tokenizer:") == 1 and "Will exit after finishing" in log, log[-3000:]
        assert not (work / TARGET).exists()
    else:  # Snakemake died (SIGKILL) or stopped at once (KeyboardInterrupt): the job stays marked incomplete
        assert any(
            name.startswith("cmVzdWx0cy90cmFpbi90b2tlbml6ZXJfY2kv")  # base64 of results/train/tokenizer_ci/
            for name in os.listdir(work / ".snakemake" / "incomplete")
        ), "the training job is not marked incomplete"

    if how == "sigkill":
        r = subprocess.run(_snakemake("--rerun-incomplete"), cwd=work, env=env, capture_output=True, text=True)
        assert r.returncode != 0 and "--unlock" in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]
        r = subprocess.run(_snakemake("--unlock"), cwd=work, env=env, capture_output=True, text=True)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]

    r = subprocess.run(_snakemake("--rerun-incomplete"), cwd=work, env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    assert planned_jobs(out) == {"train_tokenizer": 1, "total": 1}, out[-3000:]
    after = _outputs(work)
    changed = [f for f, m in before.items() if after.get(f) != m]
    assert changed == [], f"outputs complete before the interruption were rewritten: {changed}"

    ck = json.loads((work / TARGET).read_text())
    assert ck["step"] == 60 and Path(ck["path"]).parent == ckpt_dir.resolve()
    attempts = read_attempts(ckpt_dir)
    starts = [a for a in attempts if a["event"] == "start"]
    ends = [a for a in attempts if a["event"] == "end"]
    if how in SIGNALS:  # torchrun passed the signal on: the ranks saved the step they were at and exited 75
        assert (ends[0]["status"], ends[0]["reason"]) == ("stopped", SIGNALS[how].name), ends
        saved = ends[0]["step"]
        assert 30 <= saved < 60 and ends[-1]["status"] == "done", ends
    else:  # a SIGKILLed attempt writes no end line
        assert [e["status"] for e in ends] == ["done"], ends
        saved = 30
    assert [a["start_step"] for a in starts] == [0, saved], attempts
    assert (work / starts[1]["resumed_from"]).resolve() == (ckpt_dir / f"step_{saved:07d}.pt").resolve()
    assert "RESUMED from" in (work / "logs" / "train_tokenizer" / "tokenizer_ci.log").read_text()
    print(
        f"\n[fault] {how}: interrupted {t_interrupt:.0f} s after the start (step-30 checkpoint), "
        f"resumed run {time.time() - t_start - t_interrupt:.0f} s; {len(before)} finished outputs untouched; "
        f"attempts start at steps {[a['start_step'] for a in starts]}"
    )
