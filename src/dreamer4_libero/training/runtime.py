"""The process around one training run: ranks and device, the process group, torch's global settings and
the stop signals (training/engine.py `train` uses them; nothing here knows about models).

* `dist_env()`: rank, world size, local rank and node count from torchrun's variables, and the device
  (``cuda:LOCAL_RANK`` or the CPU — never from CUDA_VISIBLE_DEVICES).
* `torch_globals(cfg)`: deterministic algorithms, CPU threads and TF32 for the run, restored afterwards
  (matters when a run happens in-process, e.g. in tests).
* `StopSignals`: SIGTERM (Slurm's warning before the time limit) and SIGINT (Ctrl-C; torchrun forwards it
  to the ranks) only set a flag: the trainer saves and exits 75 at the next step. A second Ctrl-C
  interrupts at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

_T_IMPORT = time.time()


def process_start_time() -> float:
    """Wall-clock start of this process (Linux /proc), else the import time of this module."""
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 (starttime); fields after ')' start at field 3
        with open("/proc/stat") as fh:
            btime = next(int(line.split()[1]) for line in fh if line.startswith("btime"))
        t = btime + ticks / os.sysconf("SC_CLK_TCK")
        if _T_IMPORT - 7 * 86400 < t <= _T_IMPORT + 2:
            return min(t, _T_IMPORT)
    except Exception:
        pass
    return _T_IMPORT


@dataclass
class DistEnv:
    rank: int
    world: int
    local_rank: int
    nodes: int  # torchrun agents = nodes (GROUP_WORLD_SIZE)
    device: torch.device

    @property
    def use_cuda(self) -> bool:
        return self.device.type == "cuda"


def dist_env() -> DistEnv:
    """Ranks and device of this process under torchrun (WORLD_SIZE > 1) or alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0")) if world > 1 else 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else 0
    nodes = int(os.environ.get("GROUP_WORLD_SIZE", "1")) if world > 1 else 1
    use_cuda = torch.cuda.is_available()
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise RuntimeError(
            f"LOCAL_RANK {local_rank} but this node sees {torch.cuda.device_count()} GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): torchrun's "
            f"--nproc_per_node must not exceed the GPUs per node (config `gpus`)"
        )
    return DistEnv(rank, world, local_rank, nodes, torch.device(f"cuda:{local_rank}" if use_cuda else "cpu"))


@contextlib.contextmanager
def torch_globals(deterministic: bool, num_threads: int | None, tf32: bool, use_cuda: bool) -> Iterator[None]:
    """The run's global torch settings, restored on exit."""
    saved = {
        "det": torch.are_deterministic_algorithms_enabled(),
        "det_warn": torch.is_deterministic_algorithms_warn_only_enabled(),
        "threads": torch.get_num_threads(),
    }
    if use_cuda:
        saved.update(
            tf32=torch.backends.cuda.matmul.allow_tf32,
            cudnn_tf32=torch.backends.cudnn.allow_tf32,
            cudnn_det=torch.backends.cudnn.deterministic,
            cudnn_bench=torch.backends.cudnn.benchmark,
        )
    if deterministic:
        if use_cuda:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            # some CUDA kernels have no deterministic version: warn instead of failing a long GPU run
            torch.use_deterministic_algorithms(True, warn_only=True)
        else:
            torch.use_deterministic_algorithms(True)
            torch.set_num_threads(num_threads or 1)
    else:
        if num_threads:
            torch.set_num_threads(num_threads)
        if use_cuda and tf32:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved["det"], warn_only=saved["det_warn"])
        torch.set_num_threads(saved["threads"])
        if use_cuda:
            torch.backends.cuda.matmul.allow_tf32 = saved["tf32"]
            torch.backends.cudnn.allow_tf32 = saved["cudnn_tf32"]
            torch.backends.cudnn.deterministic = saved["cudnn_det"]
            torch.backends.cudnn.benchmark = saved["cudnn_bench"]


class StopSignals:
    """While installed (main thread only), SIGTERM and SIGINT call `on_stop(name)` instead of killing the
    process; a second SIGINT gets the previous handler (interrupt at once). `restore()` puts the previous
    handlers back."""

    def __init__(self, on_stop: Callable[[str], None]):
        self.on_stop = on_stop
        self.prev_term = self.prev_int = None
        self.installed = threading.current_thread() is threading.main_thread()
        if self.installed:
            self.prev_int = signal.getsignal(signal.SIGINT)
            self.prev_term = signal.signal(signal.SIGTERM, self.on_stop_signal)
            signal.signal(signal.SIGINT, self.on_stop_signal)

    def on_stop_signal(self, signum, frame) -> None:
        self.on_stop(signal.Signals(signum).name)
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts at once
            signal.signal(signal.SIGINT, self.prev_int)

    def restore(self) -> None:
        if self.installed and self.prev_term is not None:
            signal.signal(signal.SIGTERM, self.prev_term)
            signal.signal(signal.SIGINT, self.prev_int)
            self.prev_term = None
