"""The progress line a trainer's log shows at every log step: steps/s, ETA over all attempts, deadline save.

``step 1200/30000 (4.0%) | loss 0.0123 | 3.10 steps/s | ETA 2h35m | deadline save in 3h10m (~step 36000)``

* steps/s: the updates of THIS attempt over its wall time since its first update started (a resumed
  attempt does not count the steps before it resumed, nor the time of earlier attempts);
* ETA: the updates left to ``max_steps`` (counted from the resumed step) at that rate, i.e. over all the
  attempts still needed, without the time between them;
* deadline save: where the attempt has a deadline (the Slurm job's end time or ``time_limit_min``,
  engine ``_deadline``), the time until the engine stops to save (deadline minus margin) and the step
  the attempt will reach by then at that rate, when that is before ``max_steps``.
"""

from __future__ import annotations

import math
import time
from typing import Callable


def fmt_duration(seconds: float) -> str:
    """Short duration: 45s, 12m05s, 2h35m, 3d04h; '?' for an unknown or infinite one."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def progress_line(
    step: int, max_steps: int, rate: float | None, loss: float | None = None, deadline_save_in_s: float | None = None
) -> str:
    """The line itself (see the module docstring); `rate` in steps/s (None or 0: unknown)."""
    pct = 100.0 * step / max_steps if max_steps else 100.0
    parts = [f"step {step}/{max_steps} ({pct:.1f}%)"]
    if loss is not None:
        parts.append(f"loss {loss:.5g}")
    left = max(0, max_steps - step)
    if rate and rate > 0:
        parts.append(f"{rate:.3g} steps/s")
        parts.append(f"ETA {fmt_duration(left / rate)}")
    else:
        parts.append("? steps/s")
        parts.append("ETA ?" if left else "ETA 0s")
    if deadline_save_in_s is not None:
        d = f"deadline save in {fmt_duration(max(0.0, deadline_save_in_s))}"
        if rate and rate > 0 and left:
            reach = step + int(max(0.0, deadline_save_in_s) * rate)
            if reach < max_steps:
                d += f" (~step {reach})"
        parts.append(d)
    return " | ".join(parts)


class Progress:
    """This attempt's rate from its first update; ``clock`` (monotonic seconds) is injectable for tests."""

    def __init__(self, start_step: int, max_steps: int, clock: Callable[[], float] = time.monotonic):
        self.start_step, self.max_steps, self.clock = int(start_step), int(max_steps), clock
        self.t0 = clock()

    def rate(self, step: int) -> float | None:
        dt = self.clock() - self.t0
        done = step - self.start_step
        return done / dt if done > 0 and dt > 0 else None

    def line(self, step: int, loss: float | None = None, deadline_save_in_s: float | None = None) -> str:
        return progress_line(step, self.max_steps, self.rate(step), loss, deadline_save_in_s)
