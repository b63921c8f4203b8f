"""One training engine for the tokenizer and the dynamics trainers.

The engine owns everything that is not model specific: process group and device, seeding,
resume (weights, optimizer, scaler, update count, RNG states, data position), DDP, AdamW, AMP,
gradient clipping, checkpoints, the deadline / SIGTERM stop with exit code 75, metrics (metrics.jsonl
and, through the same call, the live view: TensorBoard / W&B and the task's pictures, training/monitor.py),
the progress bar and ETA line (training/progress.py) and the final outputs. A trainer hands it a
*task* (see ``Task``) and an ``EngineConfig`` and calls ``train(task, cfg)``.

Conventions (dreamer4_model.md §8, §10, §11; snakemake_slurm.md §3, §4):

* ``step`` everywhere = number of completed optimizer updates. The loop is ``while step <
  max_steps``; the update that takes ``step`` from s to s+1 calls ``task.loss(..., step=s)`` on
  the batches with data indices ``s*grad_accum .. s*grad_accum + grad_accum - 1`` (so with
  grad_accum 1, batch s). A run with ``max_steps=N`` ends with ``step_{N:07d}.pt`` holding
  ``step == N``; a resumed run continues with update ``step + 1`` and nothing repeated.
* Checkpoints every ``save_every`` completed updates, at ``max_steps``, and when stopping early.
  Only rank 0 writes files; every rank's RNG state is gathered into the checkpoint.
* Exit codes: 0 = finished (final checkpoint + outputs written); 75 (EX_TEMPFAIL) = stopped early
  by the deadline, SIGTERM or Ctrl-C (SIGINT; a second one interrupts at once) after saving a
  checkpoint, run again to resume. Errors raise.
* A non-finite loss (NaN/inf on any rank; all ranks agree) follows ``nonfinite``: ``stop`` (default)
  raises FloatingPointError naming the step and the newest checkpoint, the last good state on disk;
  ``skip`` drops that update (no optimizer step, gradients zeroed; its step slot and batch are used
  up, so the run still ends at ``max_steps``), warns each time and counts it (``skipped_nonfinite`` in
  metrics, checkpoints, attempts.jsonl and checkpoint.json); more than ``nonfinite_max_skips`` skipped
  updates stop the run like ``stop``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, runtime_checkable

import torch
import torch.distributed as dist
import torch.nn as nn

from ..fileio import sha256_file, write_json
from ..job_sizing import loader_workers
from ..models.blocks import ATTENTION_BACKENDS, set_activation_checkpointing, set_attention_backend
from ..provenance import code_version
from .checkpoints import (
    CheckpointLock,
    CheckpointLockError,
    build_checkpoint,
    load_checkpoint,
    load_latest_valid,
    remove_stale_temp_files,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    step_path,
    to_json_plain,
)
from .devices import ALLOW_CPU_FALLBACK_ENV, require_gpus
from .metrics import MetricsLog, export_metrics, plot_metrics
from .monitor import TB_DIR, WANDB_MODES, build_sinks, export_tensorboard
from .progress import Progress
from .slurm_job import slurm_job_end_time

EXIT_OK = 0
EXIT_RESUME = 75  # EX_TEMPFAIL: stopped early with a checkpoint saved; run again to resume


class NonFiniteLossWarning(RuntimeWarning):
    """nonfinite=skip skipped an update whose loss was NaN or inf."""

_T_IMPORT = time.time()


# ----------------------------------------------------------------------------------------------
# configuration


@dataclass
class EngineConfig:
    """Everything the engine needs; the trainer builds it from the pipeline config + CLI."""

    run_name: str = "run"
    ckpt_dir: str = "checkpoints/run"
    out_dir: str | None = None  # declared-output dir: metrics.jsonl, curve_*.png, config.json, checkpoint.json
    max_steps: int = 1000
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = None  # max global grad norm (after unscale, on the unwrapped module); None = off
    nonfinite: str = "stop"  # NaN/inf loss: stop (raise; the newest checkpoint is the last good one) | skip the update
    nonfinite_max_skips: int = 100  # under skip: more skipped updates than this (over all attempts) stop the run
    grad_accum: int = 1
    save_every: int = 1000
    keep_last: int = 3  # step files kept (<= 0: all)
    log_every: int = 100
    seed: int = 0
    amp: str = "auto"  # auto | bf16 | fp16 | off; CPU always runs fp32
    deterministic: bool = False
    num_threads: int | None = None  # torch CPU threads (deterministic mode default: 1)
    time_limit_min: float | None = None  # the Slurm job's end time, where earlier, wins (slurm_job.py)
    deadline_margin_s: float = 180.0
    start_time: float | None = None  # epoch seconds the time limit counts from (default: process start)
    model_key: str = "model"  # "model" (tokenizer) or "dynamics"
    extra_args: dict = field(default_factory=dict)  # stored as `args` in checkpoints (upstream vars(args))
    progress: bool = True
    find_unused_parameters: bool = False
    static_graph: bool = False
    metrics_tail: int = 20  # last metric records stored in each checkpoint
    tf32: bool = True  # CUDA TF32 matmuls (ignored in deterministic mode)
    lr_mult: dict = field(default_factory=dict)  # parameter-name prefix -> lr multiplier (longest prefix wins)
    lr_schedule: str = "constant"  # constant (upstream) | cosine (from lr at update 1 to 0 at max_steps)
    attention: str = "sdpa"  # sdpa (fused kernels) | explicit (the written-out reference; models/blocks.py)
    fused_adamw: str = "auto"  # auto (fused on CUDA) | on | off; CPU always uses the foreach AdamW
    compile: bool = False  # torch.compile the model; checkpoints store the uncompiled state dict
    activation_checkpointing: bool = False  # recompute each transformer layer in backward (less memory)
    # live view (training/monitor.py; config `monitoring`): rank 0 only, never part of what a run learns
    tensorboard: bool = True  # event files in <ckpt_dir>/tensorboard/, every metrics.jsonl scalar
    image_every: int | None = None  # task.images() every n updates (None = save_every, 0 = never)
    wandb: str = "off"  # off | offline | online (needs the wandb package)
    wandb_project: str = "dreamer4-libero"
    wandb_entity: str | None = None

    def __post_init__(self) -> None:
        self.ckpt_dir = os.fspath(self.ckpt_dir)
        if self.out_dir is not None:
            self.out_dir = os.fspath(self.out_dir)
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be constant|cosine, got {self.lr_schedule!r}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"amp must be auto|bf16|fp16|off, got {self.amp!r}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {self.attention!r}")
        if self.fused_adamw not in ("auto", "on", "off"):
            raise ValueError(f"fused_adamw must be auto|on|off, got {self.fused_adamw!r}")
        for name in ("max_steps",):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("grad_accum", "save_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.grad_clip is not None and self.grad_clip <= 0:
            self.grad_clip = None
        if self.wandb not in WANDB_MODES:
            raise ValueError(f"wandb must be one of {WANDB_MODES}, got {self.wandb!r}")
        if self.image_every is not None and int(self.image_every) < 0:
            raise ValueError("image_every must be >= 0 (0 = no images, None = save_every)")
        if self.nonfinite not in ("stop", "skip"):
            raise ValueError(f"nonfinite must be stop|skip, got {self.nonfinite!r}")
        if int(self.nonfinite_max_skips) < 0:
            raise ValueError("nonfinite_max_skips must be >= 0")
        if self.time_limit_min is not None and self.time_limit_min <= 0:
            self.time_limit_min = None
        if not self.model_key or not isinstance(self.model_key, str):
            raise ValueError("model_key must be a non-empty string")


# ----------------------------------------------------------------------------------------------
# task protocol


@dataclass
class EngineContext:
    """What a task may want to know; passed to the optional ``task.setup(ctx)``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    amp_dtype: torch.dtype | None  # None = fp32
    cfg: EngineConfig

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        """The engine's autocast context (for no-grad eval forwards outside ``loss``)."""
        if self.device.type == "cuda" and self.amp_dtype is not None:
            return torch.autocast("cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()


@runtime_checkable
class Task(Protocol):
    """What a trainer hands to ``train``. Required methods:

    * ``build_model() -> nn.Module`` — a fresh model (on CPU is fine; the engine moves it to the device).
      Called after seeding with ``seed + rank``; DDP then broadcasts rank 0's initial weights.
    * ``batches(start_step, rank, world_size) -> Iterator[batch]`` — the batches of data indices
      ``start_step, start_step + 1, …`` for this rank, a pure function of (index, rank, seed).
      The engine moves tensors inside dicts/lists/tuples to the device (or calls the optional
      ``task.to_device(batch, device)``).
    * ``loss(model, batch, step) -> (loss, metrics)`` — ``model`` is the DDP wrapper under DDP (call
      it, not ``model.module``, so gradients sync); runs under the engine's autocast; ``loss`` a
      scalar tensor (the engine casts it to fp32); ``metrics`` a dict of floats (or 0-d tensors).

    Optional methods (looked up with ``getattr``):

    * ``setup(ctx: EngineContext)`` — called first, before ``build_model``.
    * ``config() -> dict`` (or a ``config`` dict attribute) — the task's resolved config; stored
      in checkpoints (``config["task"]``) and ``config.json``.
    * ``after_update(step, model) -> dict | None`` — every rank, after each update (``step`` =
      completed updates; ``model`` unwrapped; ``p.grad`` still holds the gradient just applied).
      Returned floats are added to that step's metric record when it is a log step.
    * ``on_checkpoint(step, model)`` — every rank, after a checkpoint of ``step`` was written.
    * ``images(model, step) -> {tag: image}`` — rank 0 only, every ``image_every`` updates and at the end,
      when a live-view sink is on: pictures ((H,W,3) uint8 or float in [0,1]) for TensorBoard / W&B. Called
      with the unwrapped model in eval mode under no_grad and a forked RNG (training is unaffected).
    * ``final_outputs(model, out_dir) -> dict | None`` — rank 0 only, after training finished and
      the process group is gone; the returned dict goes into ``checkpoint.json`` under ``extra``.
    * ``checkpoint_states(model) -> {key: state_dict}`` and ``load_checkpoint_states(model, ck)`` —
      when the trained module holds more than the checkpoint's main model (e.g. the dynamics and a
      separate aux head): the dict must contain ``cfg.model_key``; other keys become top-level
      checkpoint entries.
    """

    def build_model(self) -> nn.Module: ...

    def batches(self, start_step: int, rank: int, world_size: int) -> Iterator[Any]: ...

    def loss(self, model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict]: ...


# ----------------------------------------------------------------------------------------------
# helpers


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


def lr_factor(schedule: str, step: int, max_steps: int) -> float:
    """lr multiplier of the update that takes `step` completed updates to step + 1."""
    if schedule == "constant" or max_steps <= 1:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * step / max_steps))


def param_groups(model: nn.Module, lr: float, lr_mult: dict | None) -> list[dict]:
    """AdamW parameter groups: one per distinct multiplier of `lr_mult` (name prefix -> factor,
    longest matching prefix wins; unmatched parameters get 1.0). Without multipliers: one group."""
    lr_mult = lr_mult or {}
    groups: dict[float, list] = {}
    for name, p in model.named_parameters():
        hits = [k for k in lr_mult if name.startswith(k)]
        m = float(lr_mult[max(hits, key=len)]) if hits else 1.0
        groups.setdefault(m, []).append(p)
    return [{"params": ps, "lr": lr * m, "lr_mult": m} for m, ps in sorted(groups.items())]


def resolve_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use GradScaler). AMP only on CUDA; GradScaler only for fp16."""
    if device.type != "cuda" or amp == "off":
        return None, False
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "bf16":
        return torch.bfloat16, False
    return torch.float16, True


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        seq = [to_device(v, device) for v in batch]
        return type(batch)(*seq) if hasattr(batch, "_fields") else type(batch)(seq)
    return batch


def _float(v: Any) -> float:
    if isinstance(v, torch.Tensor):
        return float(v.detach().float().mean().item())
    return float(v)


def _task_config(task: Any) -> dict:
    c = getattr(task, "config", None)
    if callable(c):
        c = c()
    return dict(c or {})


# engine settings that may change between attempts without a warning (the rest is warned about on resume)
_VOLATILE_ENGINE_KEYS = {"time_limit_min", "deadline_margin_s", "start_time", "progress", "max_steps", "run_name",
                         "ckpt_dir", "out_dir", "keep_last", "save_every", "log_every", "num_threads", "metrics_tail",
                         "nonfinite", "nonfinite_max_skips", "tensorboard", "image_every", "wandb", "wandb_project",
                         "wandb_entity"}


def _config_diff(old: dict, new: dict) -> list[str]:
    diffs = []
    for sec in ("engine", "task"):
        a, b = old.get(sec, {}) or {}, new.get(sec, {}) or {}
        for k in sorted(set(a) | set(b)):
            if sec == "engine" and k in _VOLATILE_ENGINE_KEYS:
                continue
            if a.get(k) != b.get(k):
                diffs.append(f"{sec}.{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return diffs


def read_attempts(ckpt_dir: str | os.PathLike) -> list[dict]:
    p = Path(ckpt_dir) / "attempts.jsonl"
    out = []
    if p.exists():
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def _append_jsonl(path: Path, rec: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(to_json_plain(rec), sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


# ----------------------------------------------------------------------------------------------
# the run


class _Run:
    def __init__(self, task: Any, cfg: EngineConfig, rank: int, world: int, local_rank: int, device: torch.device):
        self.task, self.cfg = task, cfg
        self.rank, self.world, self.local_rank, self.device = rank, world, local_rank, device
        self.is_main = rank == 0
        self.nodes = 1  # torchrun agents (train() sets it from GROUP_WORLD_SIZE)
        self.ckpt_dir = Path(cfg.ckpt_dir)
        self.pbar = None  # before the first log line
        self.amp_dtype, self.use_scaler = resolve_amp(cfg.amp, device)
        if device.type != "cuda" and cfg.amp in ("bf16", "fp16"):
            self.log(f"amp={cfg.amp} requested but running on CPU: training in fp32")
        self.start_time = cfg.start_time if cfg.start_time is not None else process_start_time()
        self.deadline, self.deadline_source = self._deadline()
        self.max_write_s = 0.0
        self.step_ema_s: float | None = None
        self.stop_signal: str | None = None  # "SIGTERM" / "SIGINT" once one arrived: save and exit 75 at the next step
        self.pbar = None
        self.last_ckpt: Path | None = None
        self.skipped: list[int] = []  # updates (1-based) skipped for a non-finite loss, over all attempts
        self._skip_now = False

    # -- small utilities ------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if not self.is_main:
            return
        line = f"[{self.cfg.run_name}] {msg}"
        if self.pbar is not None:
            self.pbar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)
        sys.stdout.flush()
        # every attempt's lines, kept beside the checkpoints: Snakemake wipes the rule's log: file on a retry
        if self.ckpt_dir.is_dir():
            with open(self.ckpt_dir / "train.log", "a") as fh:
                fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} job {os.environ.get('SLURM_JOB_ID') or '-'} "
                         f"{line}\n")

    def _collective_tensor(self, values: list[float]) -> torch.Tensor:
        dev = self.device if self.device.type == "cuda" else torch.device("cpu")
        return torch.tensor(values, dtype=torch.float64, device=dev)

    def all_reduce(self, values: list[float], op=None) -> list[float]:
        if self.world == 1:
            return values
        t = self._collective_tensor(values)
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def autocast(self):
        if self.device.type == "cuda" and self.amp_dtype is not None:
            return torch.autocast("cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()

    @property
    def raw_model(self) -> nn.Module:
        return getattr(self.model, "_orig_mod", self.model)

    # -- setup -----------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, task = self.cfg, self.task
        seed_everything(cfg.seed + self.rank, self.device)
        set_attention_backend(cfg.attention)
        self.ctx = EngineContext(self.rank, self.world, self.local_rank, self.device, self.amp_dtype, cfg)
        if hasattr(task, "setup"):
            task.setup(self.ctx)
        self.resolved = {
            "engine": to_json_plain(asdict(cfg)),
            "task": to_json_plain(_task_config(task)),
            "runtime": {"world_size": self.world, "nodes": self.nodes, "device": self.device.type,
                        "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32",
                        "grad_scaler": self.use_scaler, "backend": dist.get_backend() if self.world > 1 else None,
                        "torch": str(torch.__version__)},
        }

        # which checkpoint: rank 0 decides, everyone loads that file
        path, ck = (None, None)
        if self.is_main:
            for tmp in remove_stale_temp_files(self.ckpt_dir):  # we hold the lock: no writer is active
                self.log(f"removed {tmp.name}: the temp file of a checkpoint write that was interrupted")
            path, ck = load_latest_valid(self.ckpt_dir, cfg.model_key, log=self.log)
        if self.world > 1:
            box = [str(path) if path else None]
            dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
            if not self.is_main and box[0] is not None:
                path = Path(box[0])
                ck = load_checkpoint(path)
        self.resumed_from = path

        model = task.build_model()
        if not isinstance(model, nn.Module):
            raise TypeError("task.build_model() must return an nn.Module")
        self.model = model.to(self.device)
        if cfg.activation_checkpointing and not set_activation_checkpointing(self.model, True):
            self.log("activation_checkpointing requested but the model has no transformer: ignored")

        step, data_next = 0, 0
        if ck is not None:
            upstream = "format" not in ck
            if hasattr(task, "load_checkpoint_states"):
                task.load_checkpoint_states(self.raw_model, ck)
            else:
                self.raw_model.load_state_dict(ck[cfg.model_key], strict=True)
            step = int(ck["step"]) + (1 if upstream else 0)  # upstream saves the index of the last update
            if step > cfg.max_steps:
                raise ValueError(f"checkpoint {path} has step {step} > max_steps {cfg.max_steps}; "
                                 f"use a fresh --ckpt-dir or raise max_steps")
            data = ck.get("data") or {}
            if data.get("grad_accum", cfg.grad_accum) == cfg.grad_accum and "next_step" in data:
                data_next = int(data["next_step"])
            else:
                data_next = step * cfg.grad_accum
            self.skipped = [int(u) for u in (ck.get("nonfinite") or {}).get("skipped_updates", [])]
            old_cfg = ck.get("config") or {}
            diffs = _config_diff(old_cfg, self.resolved) if old_cfg else []
            if diffs:
                msg = "config differs from the checkpoint's: " + "; ".join(diffs[:12])
                warnings.warn(msg)
                self.log("WARNING " + msg)
        self.step, self.data_next = step, data_next

        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # upstream: broadcast_buffers=False (no buffer sync in forward); torch >= 2.12 spells it
            # forward_sync_buffers=False (buffers are still synced once at construction, harmless here)
            no_buf = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                      else {"broadcast_buffers": False})
            self.wrapped = DDP(self.model, device_ids=[self.local_rank] if self.device.type == "cuda" else None,
                               find_unused_parameters=cfg.find_unused_parameters, static_graph=cfg.static_graph,
                               **no_buf)
        else:
            self.wrapped = self.model

        fused = self.device.type == "cuda" and cfg.fused_adamw != "off"
        if cfg.fused_adamw == "on" and not fused:
            self.log("fused_adamw=on requested but not on CUDA: using the foreach AdamW")
        self.opt = torch.optim.AdamW(param_groups(self.model, cfg.lr, cfg.lr_mult), lr=cfg.lr, betas=cfg.betas,
                                     eps=cfg.eps, weight_decay=cfg.weight_decay, **({"fused": True} if fused else {}))
        if cfg.compile:
            # compile the module the loss calls; self.model stays the plain module that is saved
            self.wrapped = torch.compile(self.wrapped)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_scaler)
        if ck is not None:
            if ck.get("opt"):
                self.opt.load_state_dict(ck["opt"])
                for g in self.opt.param_groups:  # the run's config wins (constant lr, no schedule)
                    g.update(lr=cfg.lr * g.get("lr_mult", 1.0), betas=cfg.betas, eps=cfg.eps,
                             weight_decay=cfg.weight_decay)
            if self.use_scaler and ck.get("scaler"):
                self.scaler.load_state_dict(ck["scaler"])
            self._restore_rng(ck)

        # files (rank 0); the live-view sinks are fed by the same log call as metrics.jsonl
        sinks = (build_sinks(self.ckpt_dir, tensorboard=cfg.tensorboard, wandb=cfg.wandb,
                             wandb_project=cfg.wandb_project, wandb_entity=cfg.wandb_entity, run_name=cfg.run_name,
                             config=self.resolved) if self.is_main else [])
        self.metrics = MetricsLog(self.ckpt_dir, enabled=self.is_main, sinks=sinks)
        if self.is_main:
            dropped = self.metrics.truncate_after(step)
            if dropped:
                self.log(f"metrics.jsonl: dropped {dropped} line(s) after step {step} from an interrupted attempt")
            if ck is not None and not self.metrics.path.exists() and ck.get("metrics_tail"):
                for rec in ck["metrics_tail"]:
                    self.metrics.append(rec)
            self.attempt = {"event": "start", "job_id": os.environ.get("SLURM_JOB_ID"),
                            "attempt": os.environ.get("SNAKEMAKE_ATTEMPT"), "start_step": step,
                            "resumed_from": str(path) if path else None, "pid": os.getpid(),
                            "host": socket.gethostname(), "world_size": self.world, "nodes": self.nodes,
                            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "max_steps": cfg.max_steps,
                            "code": code_version()}
            _append_jsonl(self.ckpt_dir / "attempts.jsonl", self.attempt)
        if path is not None:
            self.log(f"RESUMED from {path} at step {step}")
        else:
            self.log(f"fresh start at step 0 (ckpt dir {self.ckpt_dir})")
        if self.is_main:
            n_params = sum(p.numel() for p in self.model.parameters())
            self.log(f"world_size {self.world} on {self.nodes} node(s), device {self.device}, "
                     f"amp {self.resolved['runtime']['amp']}, params {n_params:,}, max_steps {cfg.max_steps}")
            if self.deadline is not None:
                self.log(f"deadline {time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(self.deadline))} "
                         f"({self.deadline_source}), stopping {cfg.deadline_margin_s:g} s before it")
            if cfg.tensorboard:
                self.log(f"TensorBoard: tensorboard --logdir {self.ckpt_dir / TB_DIR}")
            if cfg.wandb != "off":
                self.log(f"W&B: project {cfg.wandb_project}, mode {cfg.wandb}, files in {self.ckpt_dir / 'wandb'}")
        self.last_ckpt = path

    def _restore_rng(self, ck: dict) -> None:
        same_world = int(ck.get("world_size", 1)) == self.world
        state = None
        if same_world and self.world > 1 and ck.get("rng_by_rank"):
            state = ck["rng_by_rank"][self.rank]
        elif same_world and self.world == 1 and ck.get("rng"):
            state = ck["rng"]
        if state is not None:
            set_rng_state(state, self.device)
        else:
            self.log(f"WARNING: checkpoint has no RNG state for world_size {self.world}; reseeding "
                     f"(the continuation is not bitwise that of an uninterrupted run)")
            seed_everything((self.cfg.seed * 1_000_003 + self.rank * 7919 + self.step) % 2**31, self.device)

    # -- checkpoint ------------------------------------------------------------------------------
    def save(self) -> Path | None:
        cfg = self.cfg
        state = rng_state(self.device)
        by_rank = None
        if self.world > 1:
            gathered = [None] * self.world if self.is_main else None
            dist.gather_object(state, gathered, dst=0)
            by_rank = gathered
        path = None
        if self.is_main:
            t = time.monotonic()
            states = (self.task.checkpoint_states(self.raw_model) if hasattr(self.task, "checkpoint_states")
                      else {cfg.model_key: self.raw_model.state_dict()})
            ck = build_checkpoint(
                step=self.step, model_key=cfg.model_key, model_state=states.pop(cfg.model_key), extra_states=states,
                opt_state=self.opt.state_dict(), scaler_state=self.scaler.state_dict() if self.use_scaler else {},
                args=cfg.extra_args, rng=state, rng_by_rank=by_rank,
                data={"next_step": self.data_next, "grad_accum": cfg.grad_accum}, world_size=self.world,
                config=self.resolved, metrics_tail=self.metrics.tail(cfg.metrics_tail))
            ck["nonfinite"] = {"policy": cfg.nonfinite, "skipped": len(self.skipped),
                               "skipped_updates": list(self.skipped)}
            path = save_checkpoint(self.ckpt_dir, ck, keep_last=cfg.keep_last)
            self.metrics.sync()
            self.max_write_s = max(self.max_write_s, time.monotonic() - t)
            self.last_ckpt = path
        else:
            self.last_ckpt = step_path(self.ckpt_dir, self.step)  # rank 0's file (named in error messages)
        if hasattr(self.task, "on_checkpoint"):
            self.task.on_checkpoint(self.step, self.raw_model)
        return path

    # -- stopping --------------------------------------------------------------------------------
    def _deadline(self) -> tuple[float | None, str]:
        """(epoch seconds the attempt must end by, before the margin; what set it): the Slurm job's end time
        where Slurm says it (slurm_job.py), the configured time limit from ``start_time``, whichever is
        earlier; (None, "none") without either."""
        lim = self.cfg.time_limit_min
        options = []
        if lim is not None:
            options.append((self.start_time + lim * 60.0, f"time_limit_min {lim:g} from the trainer's start"))
        end, source = slurm_job_end_time()
        if end is not None:
            options.append((end, f"the Slurm job's end time ({source})"))
        return min(options) if options else (None, "none")

    def _deadline_save_at(self) -> float | None:
        """Epoch seconds at which the attempt stops to save: the deadline minus the margin (None: no deadline)."""
        if self.deadline is None:
            return None
        return self.deadline - max(float(self.cfg.deadline_margin_s), 2.0 * self.max_write_s)

    def _deadline_flag(self) -> bool:
        save_at = self._deadline_save_at()
        return save_at is not None and time.time() + (self.step_ema_s or 0.0) > save_at

    def stop_reason(self) -> str | None:
        flags = self.all_reduce([float(self._deadline_flag()), float(self.stop_signal is not None)], op=dist.ReduceOp.MAX
                                if self.world > 1 else None)
        if flags[1] > 0:
            return self.stop_signal or "SIGTERM"  # another rank's signal: Slurm's SIGTERM
        if flags[0] > 0:
            return "deadline"
        return None

    # -- one update ------------------------------------------------------------------------------
    def update(self, it: Iterator[Any]) -> tuple[float, dict]:
        cfg = self.cfg
        self.opt.zero_grad(set_to_none=True)
        loss_total = 0.0
        msum: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            try:
                batch = next(it)
            except StopIteration:
                raise RuntimeError(f"task.batches() ended at data index {self.data_next} "
                                   f"(step {self.step}, max_steps {cfg.max_steps})") from None
            self.data_next += 1
            mover = getattr(self.task, "to_device", None)
            batch = mover(batch, self.device) if mover else to_device(batch, self.device)
            last = micro == cfg.grad_accum - 1
            sync = self.wrapped.no_sync() if (self.world > 1 and not last) else contextlib.nullcontext()
            with sync:
                with self.autocast():
                    out = self.task.loss(self.wrapped, batch, self.step)
                loss, metrics = (out if isinstance(out, tuple) else (out, {}))
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise TypeError("task.loss must return a scalar tensor as its first item")
                loss = loss.float().reshape(())
                lv = float(loss.detach().item())
                finite = math.isfinite(lv)
                bad, lsum = self.all_reduce([0.0 if finite else 1.0, lv if finite else 0.0])
                if bad > 0:  # every rank sees the same flag: all stop or all skip
                    where = f"loss={lv} on rank {self.rank}" if not finite else "on another rank"
                    self._on_nonfinite(where)
                    break
                self.scaler.scale(loss / cfg.grad_accum).backward()
            loss_total += lsum / self.world / cfg.grad_accum
            for k, v in (metrics or {}).items():
                msum[k] = msum.get(k, 0.0) + _float(v) / cfg.grad_accum
        if self._skip_now:
            # nonfinite=skip: no optimizer step; the slot's remaining micro-batches are used up unseen so
            # that the data stream stays aligned with the update count (and a resume)
            for _ in range(cfg.grad_accum - 1 - micro):
                next(it, None)
                self.data_next += 1
            self.opt.zero_grad(set_to_none=True)
            return float("nan"), {}
        if cfg.grad_clip is not None:
            if self.use_scaler:
                self.scaler.unscale_(self.opt)
            gn = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.grad_clip)
            msum["grad_norm"] = float(gn)
        f = lr_factor(cfg.lr_schedule, self.step, cfg.max_steps)
        for g in self.opt.param_groups:  # a pure function of the update index: resume-safe
            g["lr"] = cfg.lr * g.get("lr_mult", 1.0) * f
        msum["lr_factor"] = f
        if self.use_scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
            msum["amp_scale"] = float(self.scaler.get_scale())
        else:
            self.opt.step()
        return loss_total, msum

    def _on_nonfinite(self, where: str) -> None:
        """A non-finite loss in the current update: raise (stop, or skip over budget) or mark it skipped."""
        cfg = self.cfg
        what = (f"non-finite loss at step {self.step} (update {self.step + 1} of {cfg.max_steps}, "
                f"data index {self.data_next - 1}): {where}")
        last = (f"the newest checkpoint, {self.last_ckpt}, is the last good state (rerun to resume from it)"
                if self.last_ckpt is not None else "no checkpoint was written yet (a rerun starts fresh)")
        if cfg.nonfinite == "stop":
            raise FloatingPointError(f"{what}. nonfinite=stop: training stopped; {last}. "
                                     f"Set nonfinite: skip to skip such updates instead")
        if len(self.skipped) + 1 > cfg.nonfinite_max_skips:
            raise FloatingPointError(f"{what}. nonfinite=skip: {len(self.skipped)} updates already skipped, "
                                     f"nonfinite_max_skips={cfg.nonfinite_max_skips} reached: training stopped; "
                                     f"{last}")
        self.skipped.append(self.step + 1)
        self._skip_now = True
        msg = (f"{what}; update skipped (nonfinite=skip: no optimizer step, gradients zeroed), "
               f"{len(self.skipped)} skipped so far (nonfinite_max_skips {cfg.nonfinite_max_skips})")
        self.log("WARNING " + msg)
        if self.is_main:
            warnings.warn(msg, NonFiniteLossWarning, stacklevel=2)

    # -- main loop -------------------------------------------------------------------------------
    def loop(self) -> int:
        cfg = self.cfg
        if self.is_main and cfg.progress:
            from tqdm.auto import tqdm

            tty = sys.stderr.isatty()
            self.pbar = tqdm(total=cfg.max_steps, initial=self.step, desc=cfg.run_name, dynamic_ncols=True,
                             mininterval=0.5 if tty else 30.0, smoothing=0.1)
        it = iter(self.task.batches(self.data_next, self.rank, self.world))
        t_log, s_log = time.monotonic(), self.step
        progress = Progress(self.step, cfg.max_steps)  # this attempt's rate; ETA over all attempts
        every_img = cfg.save_every if cfg.image_every is None else int(cfg.image_every)
        want_images = self.is_main and every_img > 0 and hasattr(self.task, "images") and bool(self.metrics.sinks)
        try:
            while self.step < cfg.max_steps:
                t0 = time.monotonic()
                self._skip_now = False
                loss, metrics = self.update(it)
                self.step += 1
                extra = None
                if hasattr(self.task, "after_update") and not self._skip_now:  # a skipped update applied nothing
                    extra = self.task.after_update(self.step, self.raw_model)
                if self.skipped:
                    metrics["skipped_nonfinite"] = len(self.skipped)
                dt = time.monotonic() - t0
                self.step_ema_s = dt if self.step_ema_s is None else 0.7 * self.step_ema_s + 0.3 * dt

                if self.is_main and (self.step % cfg.log_every == 0 or self.step == cfg.max_steps):
                    now = time.monotonic()
                    sps = (self.step - s_log) / max(now - t_log, 1e-9)
                    t_log, s_log = now, self.step
                    rec = {"step": self.step, "loss": loss, **metrics,
                           **{k: _float(v) for k, v in (extra or {}).items()},
                           "lr": self.cfg.lr, "steps_per_s": sps,
                           "elapsed_s": time.time() - self.start_time, "time": time.time()}
                    self.metrics.append(rec)  # metrics.jsonl + TensorBoard / W&B, flushed
                    if self.pbar is None or not sys.stderr.isatty():
                        save_at = self._deadline_save_at()
                        self.log(progress.line(self.step, loss, None if save_at is None else save_at - time.time()))
                if want_images and (self.step % every_img == 0 or self.step == cfg.max_steps):
                    want_images = self._images()
                if self.pbar is not None:
                    self.pbar.set_postfix(loss=f"{loss:.4g}", sps=f"{1.0 / max(self.step_ema_s, 1e-9):.2f}",
                                          refresh=False)
                    self.pbar.update(1)

                saved = False
                if self.step % cfg.save_every == 0 or self.step == cfg.max_steps:
                    self.save()
                    saved = True
                if self.step < cfg.max_steps:
                    reason = self.stop_reason()
                    if reason is not None:
                        if not saved:
                            self.save()
                        if reason in ("SIGTERM", "SIGINT"):
                            self.log(f"{reason}: saved step {self.step}")
                        else:
                            self.log(f"deadline reached, saved step {self.step}")
                        self._end_record("stopped", reason)
                        return EXIT_RESUME
        finally:
            if self.pbar is not None:
                self.pbar.close()
                self.pbar = None
            close = getattr(it, "close", None)
            if callable(close):
                close()
            del it
        return EXIT_OK

    def _images(self) -> bool:
        """The task's pictures of this step to the live-view sinks (rank 0): eval mode, no grad, forked RNG.
        A picture that fails never stops training: warned once, no more pictures this attempt (returns False)."""
        model = self.raw_model
        modes = [(m, m.training) for m in model.modules()]
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            model.eval()
            with torch.random.fork_rng(devices=devices), torch.no_grad(), self.autocast():
                imgs = self.task.images(model, self.step)
            self.metrics.images(self.step, imgs or {})
            return True
        except Exception as e:
            self.log(f"WARNING pictures of step {self.step} failed ({type(e).__name__}: {e}); "
                     f"no more pictures in this attempt, training goes on")
            return False
        finally:
            for m, was in modes:
                m.training = was

    def _end_record(self, status: str, reason: str | None = None) -> None:
        if self.is_main:
            _append_jsonl(self.ckpt_dir / "attempts.jsonl",
                          {"event": "end", "status": status, "reason": reason, "step": self.step,
                           "skipped_nonfinite": len(self.skipped),
                           "job_id": os.environ.get("SLURM_JOB_ID"), "pid": os.getpid(),
                           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "wall_s": time.time() - self.start_time})

    # -- final outputs (rank 0, after the process group is gone) ----------------------------------
    def finish(self) -> None:
        cfg = self.cfg
        self.metrics.close()
        if not self.is_main:
            return
        final = self.last_ckpt
        if final is None or not final.exists():
            raise RuntimeError(f"no final checkpoint for step {self.step} in {self.ckpt_dir}")
        history = read_attempts(self.ckpt_dir)
        conf = {**self.resolved, "final_step": self.step, "final_checkpoint": str(final.resolve()),
                "history": [h for h in history if h.get("event") == "start"]}
        write_json(self.ckpt_dir / "config.json", conf)
        if cfg.out_dir is None:
            self._end_record("done")
            self.log(f"done at step {self.step}: {final}")
            return
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        records = self.metrics.records()
        export_metrics(records, out / "metrics.jsonl")
        if cfg.tensorboard:  # the finished run's curves beside its other outputs (results/train/<run>/)
            export_tensorboard(self.ckpt_dir / TB_DIR, out / TB_DIR)
        plots = plot_metrics(records, out, title=cfg.run_name)
        write_json(out / "config.json", conf)
        extra = None
        if hasattr(self.task, "final_outputs"):
            extra = self.task.final_outputs(self.raw_model, out)
        write_json(out / "checkpoint.json", {
            "path": str(final.resolve()), "step": self.step, "sha256": sha256_file(final),
            "bytes": final.stat().st_size, "model_key": cfg.model_key, "run_name": cfg.run_name,
            "config": str((self.ckpt_dir / "config.json").resolve()), "plots": [p.name for p in plots],
            "attempts": len(conf["history"]), "skipped_nonfinite": len(self.skipped),
            "extra": to_json_plain(extra or {})})
        self._end_record("done")
        self.log(f"done at step {self.step}: {final} -> {out}/checkpoint.json")


# ----------------------------------------------------------------------------------------------
# entry point


def train(task: Any, cfg: EngineConfig) -> int:
    """Run (or resume) training; returns 0 when finished, 75 when stopped early (deadline/SIGTERM).

    Under torchrun (``WORLD_SIZE`` > 1) initialises the process group (NCCL if CUDA is available,
    gloo otherwise; device ``cuda:LOCAL_RANK`` or CPU — never from CUDA_VISIBLE_DEVICES), and
    destroys it again before returning. Several nodes (one torchrun agent each, training/launch.py)
    change nothing here: ``RANK`` is the global rank (data shard, seed; rank 0 alone takes the lock and
    writes files), ``LOCAL_RANK`` the GPU on this node, ``GROUP_WORLD_SIZE`` the node count (recorded).
    Raises ``CheckpointLockError`` if another live trainer holds the checkpoint dir,
    ``FloatingPointError`` on a non-finite loss.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0")) if world > 1 else 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else 0
    nodes = int(os.environ.get("GROUP_WORLD_SIZE", "1")) if world > 1 else 1  # torchrun agents = nodes
    use_cuda = torch.cuda.is_available()
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise RuntimeError(f"LOCAL_RANK {local_rank} but this node sees {torch.cuda.device_count()} GPU(s) "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): torchrun's "
                           f"--nproc_per_node must not exceed the GPUs per node (config `gpus`)")
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda and cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before the first cuBLAS handle
    if use_cuda:
        torch.cuda.set_device(device)

    created_pg = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        created_pg = True
    if world > 1:
        rank, world = dist.get_rank(), dist.get_world_size()

    # global torch settings, restored on exit (matters when train() runs in-process, e.g. tests)
    saved = {"det": torch.are_deterministic_algorithms_enabled(),
             "det_warn": torch.is_deterministic_algorithms_warn_only_enabled(), "threads": torch.get_num_threads()}
    if use_cuda:
        saved.update(tf32=torch.backends.cuda.matmul.allow_tf32, cudnn_tf32=torch.backends.cudnn.allow_tf32,
                     cudnn_det=torch.backends.cudnn.deterministic, cudnn_bench=torch.backends.cudnn.benchmark)
    if cfg.deterministic:
        if use_cuda:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            # some CUDA kernels have no deterministic version: warn instead of failing a long GPU run
            torch.use_deterministic_algorithms(True, warn_only=True)
        else:
            torch.use_deterministic_algorithms(True)
            torch.set_num_threads(cfg.num_threads or 1)
    else:
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        if use_cuda and cfg.tf32:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    run = _Run(task, cfg, rank, world, local_rank, device)
    run.nodes = nodes
    lock = CheckpointLock(cfg.ckpt_dir)
    prev_handler = prev_int = None
    in_main_thread = threading.current_thread() is threading.main_thread()
    ok = False
    try:
        err: CheckpointLockError | None = None
        if rank == 0:
            try:
                lock.acquire()
            except CheckpointLockError as e:
                err = e
        if world > 1:
            (failed,) = run.all_reduce([1.0 if err else 0.0], op=dist.ReduceOp.MAX)
            if failed and err is None:
                err = CheckpointLockError(f"rank 0 could not lock checkpoint dir {cfg.ckpt_dir} (see rank 0's error)")
        if err is not None:
            raise err

        if in_main_thread:
            def _on_sigterm(signum, frame):
                run.stop_signal = signal.Signals(signum).name
                if signum == signal.SIGINT:  # a second Ctrl-C interrupts at once
                    signal.signal(signal.SIGINT, prev_int)

            prev_int = signal.getsignal(signal.SIGINT)
            prev_handler = signal.signal(signal.SIGTERM, _on_sigterm)
            signal.signal(signal.SIGINT, _on_sigterm)  # Ctrl-C (torchrun forwards it to the ranks): save, exit 75

        run.setup()
        code = run.loop()
        run.barrier()  # rank 0 has written the last checkpoint
        if created_pg:
            dist.destroy_process_group()
            created_pg = False
        if code == EXIT_OK:
            run.finish()
        ok = True
        return code
    except BaseException as e:
        if rank == 0 and lock.held and not isinstance(e, CheckpointLockError):
            try:
                run._end_record("error", f"{type(e).__name__}: {e}")
            except Exception:
                pass
        raise
    finally:
        run.metrics.close() if hasattr(run, "metrics") else None
        if prev_handler is not None and in_main_thread:
            signal.signal(signal.SIGTERM, prev_handler)
            signal.signal(signal.SIGINT, prev_int)
        lock.release()
        if ok and created_pg:
            dist.destroy_process_group()
        torch.use_deterministic_algorithms(saved["det"], warn_only=saved["det_warn"])
        torch.set_num_threads(saved["threads"])
        if use_cuda:
            torch.backends.cuda.matmul.allow_tf32 = saved["tf32"]
            torch.backends.cudnn.allow_tf32 = saved["cudnn_tf32"]
            torch.backends.cudnn.deterministic = saved["cudnn_det"]
            torch.backends.cudnn.benchmark = saved["cudnn_bench"]


# ----------------------------------------------------------------------------------------------
# CLI


def _bool(s: str) -> bool:
    v = str(s).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {s!r}")


def _opt_float(s: str) -> float:
    """A number, or 'none'/'off' -> 0.0, which EngineConfig turns into None (off)."""
    return 0.0 if str(s).strip().lower() in ("none", "null", "off", "") else float(s)


def add_engine_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the engine's flags. Every default is None ("not given"): ``engine_config_from_args``
    applies only the flags actually given on top of the trainer's config."""
    g = parser.add_argument_group("training engine")
    g.add_argument("--run-name")
    g.add_argument("--ckpt-dir", help="checkpoint dir (NOT a declared output; kept across retries)")
    g.add_argument("--ckpt-root", help="instead of --ckpt-dir: <root>/<run>/<identity hash>/ (training/identity.py)")
    g.add_argument("--out-dir", help="declared-output dir: metrics.jsonl, curve_*.png, config.json, checkpoint.json")
    g.add_argument("--max-steps", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--grad-clip", type=_opt_float, help="max grad norm; 'none' = off")
    g.add_argument("--grad-accum", type=int)
    g.add_argument("--save-every", type=int)
    g.add_argument("--keep-last", type=int)
    g.add_argument("--log-every", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"])
    g.add_argument("--deterministic", type=_bool, metavar="BOOL")
    g.add_argument("--num-threads", type=int)
    g.add_argument("--time-limit-min", type=_opt_float, help="this attempt's time limit (Slurm runtime, minutes); 'none' = off")
    g.add_argument("--deadline-margin-s", type=float)
    g.add_argument("--nonfinite", choices=["stop", "skip"], help="NaN/inf loss: stop (raise) or skip the update")
    g.add_argument("--nonfinite-max-skips", type=int, help="under skip: stop after more skipped updates than this")
    g.add_argument("--progress", type=_bool, metavar="BOOL")
    g.add_argument("--find-unused-parameters", type=_bool, metavar="BOOL")
    g.add_argument("--attention", choices=list(ATTENTION_BACKENDS))
    g.add_argument("--fused-adamw", choices=["auto", "on", "off"])
    g.add_argument("--compile", type=_bool, metavar="BOOL")
    g.add_argument("--activation-checkpointing", type=_bool, metavar="BOOL")
    g.add_argument("--tensorboard", type=_bool, metavar="BOOL", help="TensorBoard event files in <ckpt-dir>/tensorboard")
    g.add_argument("--image-every", type=int, help="task pictures every n updates (0 = never; default: save_every)")
    g.add_argument("--wandb", choices=list(WANDB_MODES), help="Weights & Biases: off (default) | offline | online")
    g.add_argument("--wandb-project")
    g.add_argument("--wandb-entity")
    g.add_argument("--expect-gpus", type=int, default=0,
                   help="GPUs the job's resources give it (per node); more than torch sees stops the job at once "
                        "(training/devices.py) unless --allow-cpu-fallback")
    g.add_argument("--allow-cpu-fallback", type=_bool, metavar="BOOL",
                   help=f"run on the CPU when the expected GPUs are missing (default: ${ALLOW_CPU_FALLBACK_ENV})")
    g.add_argument("--num-workers", type=_opt_workers, metavar="N|auto",
                   help="data-loader workers per rank (default: the config's num_workers); auto = from the job's "
                        "CPUs (job_sizing.loader_workers)")
    return parser


def _opt_workers(v: str) -> int | str:
    return "auto" if v == "auto" else int(v)


def job_loader_workers(args: argparse.Namespace, configured: int | None) -> int:
    """The data-loader workers per rank of this process: --num-workers (a number, or auto) over the config's
    `num_workers` (null = auto); auto splits the CPUs the job was given over the ranks on this node."""
    n = configured if args.num_workers is None else (None if args.num_workers == "auto" else args.num_workers)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return loader_workers(n, local_ranks=local, on_gpu=bool(args.expect_gpus) and torch.cuda.is_available())


def require_job_gpus(args: argparse.Namespace, who: str) -> bool:
    """A trainer CLI's first step after parsing, before its task loads any data: the GPUs its job was
    given (--expect-gpus) must be usable by torch (devices.require_gpus; raises GPUUnavailableError)."""
    return require_gpus(args.expect_gpus, args.allow_cpu_fallback, who=who)


_ARG_FIELDS = ["run_name", "ckpt_dir", "out_dir", "max_steps", "lr", "weight_decay", "grad_clip", "grad_accum",
               "save_every", "keep_last", "log_every", "seed", "amp", "deterministic", "num_threads",
               "nonfinite", "nonfinite_max_skips",
               "time_limit_min", "deadline_margin_s", "progress", "find_unused_parameters", "attention", "fused_adamw",
               "compile", "activation_checkpointing", "tensorboard", "image_every", "wandb", "wandb_project",
               "wandb_entity"]


def engine_config_from_args(args: argparse.Namespace, **base: Any) -> EngineConfig:
    """EngineConfig from ``base`` (e.g. the pipeline config) overridden by the flags that were given."""
    known = {f.name for f in dataclasses.fields(EngineConfig)}
    unknown = set(base) - known
    if unknown:
        raise TypeError(f"unknown EngineConfig fields: {sorted(unknown)}")
    kw = dict(base)
    for name in _ARG_FIELDS:
        v = getattr(args, name, None)
        if v is not None:
            kw[name] = v
    # "--grad-clip none" / "--time-limit-min none" arrive as 0.0 and EngineConfig turns them into None
    return EngineConfig(**kw)
