"""Shared plumbing for the thin command-line entry points in workflow_scripts/."""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable


class SetupError(RuntimeError):
    """The machine or environment cannot run this job as configured (e.g. GPUs torch cannot use)."""


# Errors that mean "your input, config or setup is wrong": print the message, exit 2, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, KeyError, SetupError)


def run_main(main: Callable[[], int | None], name: str) -> None:
    """Run a CLI main: logging to stderr, wall time printed, clean non-zero exit on bad input."""
    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(levelname)s %(message)s", stream=sys.stderr)
    t0 = time.perf_counter()
    try:
        rc = main() or 0
    except USER_ERRORS as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"[{name}] ERROR: {msg}", file=sys.stderr, flush=True)
        rc = 2
    print(f"[{name}] finished in {time.perf_counter() - t0:.1f} s (exit {rc})", file=sys.stderr, flush=True)
    sys.exit(rc)
