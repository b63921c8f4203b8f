"""Shared plumbing for the thin command-line entry points in workflow_scripts/."""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable


class SetupError(RuntimeError):
    """The machine or environment cannot run this job as configured (e.g. GPUs torch cannot use)."""


class ConfigError(ValueError):
    """A config value that cannot work; the message names the config key."""


# Errors that mean "your input, config or setup is wrong": print the message, exit 2, no traceback.
# Not KeyError: a missing key in the code's own data is a bug and keeps its traceback (exit 1); code that
# looks up a name the user gave raises a ValueError (e.g. ConfigError) naming it instead.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, SetupError)


def run_main(main: Callable[[], int | None], name: str) -> None:
    """Run a CLI main: logging to stderr, wall time printed; bad input exits 2 with a one-line message,
    any other exception propagates with its traceback (exit 1)."""
    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(levelname)s %(message)s", stream=sys.stderr)
    t0 = time.perf_counter()
    try:
        rc = main() or 0
    except USER_ERRORS as exc:
        print(f"[{name}] ERROR: {exc}", file=sys.stderr, flush=True)
        rc = 2
    print(f"[{name}] finished in {time.perf_counter() - t0:.1f} s (exit {rc})", file=sys.stderr, flush=True)
    sys.exit(rc)
