"""When the Slurm job this trainer runs in will be killed: its end time, for the engine's deadline.

A trainer's ``--time-limit-min`` counts from the trainer's own start, but Slurm counts the job's time
limit from the job's start; whatever ran before the trainer (the job's shell, conda activation, a slow
import on a busy node) is lost from the deadline margin. So the engine stops at the job's end time
minus the margin where Slurm says it, in this order:

1. ``$SLURM_JOB_END_TIME`` (epoch seconds; Slurm 23.02+ sets it in every job's environment);
2. ``squeue -h -j $SLURM_JOB_ID -o %e`` (the end time in the local time zone, e.g. ``2026-12-06T14:03:11``);
3. neither: None, and the engine falls back to the configured limit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

END_TIME_ENV = "SLURM_JOB_END_TIME"


def parse_squeue_time(text: str) -> float | None:
    """Epoch seconds of squeue's ``%e`` (local time, ``YYYY-MM-DDTHH:MM:SS``); None for N/A, Unknown, ''."""
    try:
        return time.mktime(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def slurm_job_end_time(env: dict | None = None) -> tuple[float | None, str]:
    """(end time in epoch seconds, where it came from), or (None, why not) outside Slurm or when unknown."""
    env = os.environ if env is None else env
    raw = env.get(END_TIME_ENV, "").strip()
    if raw:
        try:
            end = float(raw)
            if end > 0:
                return end, f"${END_TIME_ENV}"
        except ValueError:
            pass
        print(f"WARNING: ${END_TIME_ENV}={raw!r} is not epoch seconds: ignored", file=sys.stderr, flush=True)
    job = env.get("SLURM_JOB_ID", "").strip()
    exe = shutil.which("squeue") if job else None
    if exe is None:
        return None, "not in a Slurm job" if not job else "squeue not found"
    try:
        r = subprocess.run([exe, "-h", "-j", job, "-o", "%e"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"squeue failed ({e})"
    end = parse_squeue_time(r.stdout.split("\n")[0]) if r.returncode == 0 else None
    if end is None:
        return None, f"squeue gave no end time for job {job} ({(r.stdout + r.stderr).strip()[:200]!r})"
    return end, f"squeue -j {job}"
