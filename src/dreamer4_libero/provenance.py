"""Which code produced a result: the git commit of this checkout (with a dirty flag), else the package version.

Recorded per training attempt (attempts.jsonl, results/train/<run>/config.json "history") and by the
report; never part of a run's identity (training/identity.py), so a new commit does not retrain anything.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from . import __version__

REPO_ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """{'commit': sha or None, 'dirty': bool or None, 'describe': str, 'package': version}."""
    commit = _git("rev-parse", "HEAD")
    dirty = None
    if commit:
        status = _git("status", "--porcelain", "--untracked-files=no")
        dirty = bool(status) if status is not None else None
    describe = (commit[:12] + ("-dirty" if dirty else "")) if commit else f"package {__version__} (not a git checkout)"
    return {"commit": commit, "dirty": dirty, "describe": describe, "package": __version__}
