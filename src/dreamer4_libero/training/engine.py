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

The engine in files: this module (the task protocol, the ``Trainer`` that runs the loop, ``train``),
training/engine_config.py (``EngineConfig`` and the flags made from it), training/resume.py (which
checkpoint, where to continue, attempt records) and training/runtime.py (ranks, device, process group,
torch's global settings, the stop signals).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import socket
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from ..models.blocks import set_activation_checkpointing, set_attention_backend
from ..provenance import code_version
from .checkpoints import (
    CheckpointLock,
    CheckpointLockError,
    build_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    step_path,
    to_json_plain,
)
from .engine_config import EngineConfig
from .metrics import MetricsLog
from .monitor import TB_DIR, build_sinks, send_pictures
from .progress import Progress
from .final_outputs import write_final_outputs
from .optim import float_metric, lr_factor, param_groups, resolve_amp, task_config, to_device
from .resume import append_jsonl, choose_checkpoint, config_diff, restore_rng, resume_position
from .runtime import StopSignals, dist_env, process_start_time, torch_globals
from .slurm_job import slurm_job_end_time
from .task import EngineContext

EXIT_OK = 0
EXIT_RESUME = 75  # EX_TEMPFAIL: stopped early with a checkpoint saved; run again to resume


class NonFiniteLossWarning(RuntimeWarning):
    """nonfinite=skip skipped an update whose loss was NaN or inf."""


# ----------------------------------------------------------------------------------------------
# helpers


# ----------------------------------------------------------------------------------------------
# the run


class Trainer:
    """One run of one process (rank): ``setup`` (model, resume, DDP, optimizer, metrics), ``loop`` (the
    updates, logging, checkpoints, stop checks), ``finish`` (rank 0's final outputs)."""

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
    def on_stop_signal(self, name: str) -> None:
        """SIGTERM or SIGINT arrived (runtime.StopSignals): save and exit 75 at the next step."""
        self.stop_signal = name

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
                fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} job {os.environ.get('SLURM_JOB_ID') or '-'} {line}\n")

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
            "task": to_json_plain(task_config(task)),
            "runtime": {
                "world_size": self.world,
                "nodes": self.nodes,
                "device": self.device.type,
                "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32",
                "grad_scaler": self.use_scaler,
                "backend": dist.get_backend() if self.world > 1 else None,
                "torch": str(torch.__version__),
            },
        }

        # which checkpoint: rank 0 decides, everyone loads that file
        path, ck = choose_checkpoint(self.ckpt_dir, cfg.model_key, self.rank, self.world, self.device, self.log)
        self.resumed_from = path

        model = task.build_model()
        if not isinstance(model, nn.Module):
            raise TypeError("task.build_model() must return an nn.Module")
        self.model = model.to(self.device)
        if cfg.activation_checkpointing and not set_activation_checkpointing(self.model, True):
            self.log("activation_checkpointing requested but the model has no transformer: ignored")

        step, data_next = 0, 0
        if ck is not None:
            if hasattr(task, "load_checkpoint_states"):
                task.load_checkpoint_states(self.raw_model, ck)
            else:
                self.raw_model.load_state_dict(ck[cfg.model_key], strict=True)
            step, data_next, self.skipped = resume_position(ck, path, cfg.max_steps, cfg.grad_accum)
            old_cfg = ck.get("config") or {}
            diffs = config_diff(old_cfg, self.resolved) if old_cfg else []
            if diffs:
                msg = "config differs from the checkpoint's: " + "; ".join(diffs[:12])
                warnings.warn(msg)
                self.log("WARNING " + msg)
        self.step, self.data_next = step, data_next

        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # upstream: broadcast_buffers=False (no buffer sync in forward); torch >= 2.12 spells it
            # forward_sync_buffers=False (buffers are still synced once at construction, harmless here)
            no_buf = (
                {"forward_sync_buffers": False}
                if "forward_sync_buffers" in inspect.signature(DDP).parameters
                else {"broadcast_buffers": False}
            )
            self.wrapped = DDP(
                self.model,
                device_ids=[self.local_rank] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters,
                static_graph=cfg.static_graph,
                **no_buf,
            )
        else:
            self.wrapped = self.model

        fused = self.device.type == "cuda" and cfg.fused_adamw != "off"
        if cfg.fused_adamw == "on" and not fused:
            self.log("fused_adamw=on requested but not on CUDA: using the foreach AdamW")
        self.opt = torch.optim.AdamW(
            param_groups(self.model, cfg.lr, cfg.lr_mult),
            lr=cfg.lr,
            betas=cfg.betas,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            **({"fused": True} if fused else {}),
        )
        if cfg.compile:
            # compile the module the loss calls; self.model stays the plain module that is saved
            self.wrapped = torch.compile(self.wrapped)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_scaler)
        if ck is not None:
            if ck.get("opt"):
                self.opt.load_state_dict(ck["opt"])
                for g in self.opt.param_groups:  # the run's config wins (constant lr, no schedule)
                    g.update(
                        lr=cfg.lr * g.get("lr_mult", 1.0), betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
                    )
            if self.use_scaler and ck.get("scaler"):
                self.scaler.load_state_dict(ck["scaler"])
            restore_rng(ck, self.rank, self.world, self.device, cfg.seed, self.step, self.log)

        # files (rank 0); the live-view sinks are fed by the same log call as metrics.jsonl
        sinks = (
            build_sinks(
                self.ckpt_dir,
                tensorboard=cfg.tensorboard,
                wandb=cfg.wandb,
                wandb_project=cfg.wandb_project,
                wandb_entity=cfg.wandb_entity,
                run_name=cfg.run_name,
                config=self.resolved,
            )
            if self.is_main
            else []
        )
        self.metrics = MetricsLog(self.ckpt_dir, enabled=self.is_main, sinks=sinks)
        if self.is_main:
            dropped = self.metrics.truncate_after(step)
            if dropped:
                self.log(f"metrics.jsonl: dropped {dropped} line(s) after step {step} from an interrupted attempt")
            if ck is not None and not self.metrics.path.exists() and ck.get("metrics_tail"):
                for rec in ck["metrics_tail"]:
                    self.metrics.append(rec)
            self.attempt = {
                "event": "start",
                "job_id": os.environ.get("SLURM_JOB_ID"),
                "attempt": os.environ.get("SNAKEMAKE_ATTEMPT"),
                "start_step": step,
                "resumed_from": str(path) if path else None,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "world_size": self.world,
                "nodes": self.nodes,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "max_steps": cfg.max_steps,
                "code": code_version(),
            }
            append_jsonl(self.ckpt_dir / "attempts.jsonl", self.attempt)
        if path is not None:
            self.log(f"RESUMED from {path} at step {step}")
        else:
            self.log(f"fresh start at step 0 (ckpt dir {self.ckpt_dir})")
        if self.is_main:
            n_params = sum(p.numel() for p in self.model.parameters())
            self.log(
                f"world_size {self.world} on {self.nodes} node(s), device {self.device}, "
                f"amp {self.resolved['runtime']['amp']}, params {n_params:,}, max_steps {cfg.max_steps}"
            )
            if self.deadline is not None:
                self.log(
                    f"deadline {time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(self.deadline))} "
                    f"({self.deadline_source}), stopping {cfg.deadline_margin_s:g} s before it"
                )
            if cfg.tensorboard:
                self.log(f"TensorBoard: tensorboard --logdir {self.ckpt_dir / TB_DIR}")
            if cfg.wandb != "off":
                self.log(f"W&B: project {cfg.wandb_project}, mode {cfg.wandb}, files in {self.ckpt_dir / 'wandb'}")
        self.last_ckpt = path

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
            states = (
                self.task.checkpoint_states(self.raw_model)
                if hasattr(self.task, "checkpoint_states")
                else {cfg.model_key: self.raw_model.state_dict()}
            )
            ck = build_checkpoint(
                step=self.step,
                model_key=cfg.model_key,
                model_state=states.pop(cfg.model_key),
                extra_states=states,
                opt_state=self.opt.state_dict(),
                scaler_state=self.scaler.state_dict() if self.use_scaler else {},
                args=cfg.extra_args,
                rng=state,
                rng_by_rank=by_rank,
                data={"next_step": self.data_next, "grad_accum": cfg.grad_accum},
                world_size=self.world,
                config=self.resolved,
                metrics_tail=self.metrics.tail(cfg.metrics_tail),
            )
            ck["nonfinite"] = {
                "policy": cfg.nonfinite,
                "skipped": len(self.skipped),
                "skipped_updates": list(self.skipped),
            }
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
        flags = self.all_reduce(
            [float(self._deadline_flag()), float(self.stop_signal is not None)],
            op=dist.ReduceOp.MAX if self.world > 1 else None,
        )
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
                raise RuntimeError(
                    f"task.batches() ended at data index {self.data_next} (step {self.step}, max_steps {cfg.max_steps})"
                ) from None
            self.data_next += 1
            mover = getattr(self.task, "to_device", None)
            batch = mover(batch, self.device) if mover else to_device(batch, self.device)
            last = micro == cfg.grad_accum - 1
            sync = self.wrapped.no_sync() if (self.world > 1 and not last) else contextlib.nullcontext()
            with sync:
                with self.autocast():
                    out = self.task.loss(self.wrapped, batch, self.step)
                loss, metrics = out if isinstance(out, tuple) else (out, {})
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
                msum[k] = msum.get(k, 0.0) + float_metric(v) / cfg.grad_accum
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
        what = (
            f"non-finite loss at step {self.step} (update {self.step + 1} of {cfg.max_steps}, "
            f"data index {self.data_next - 1}): {where}"
        )
        last = (
            f"the newest checkpoint, {self.last_ckpt}, is the last good state (rerun to resume from it)"
            if self.last_ckpt is not None
            else "no checkpoint was written yet (a rerun starts fresh)"
        )
        if cfg.nonfinite == "stop":
            raise FloatingPointError(
                f"{what}. nonfinite=stop: training stopped; {last}. Set nonfinite: skip to skip such updates instead"
            )
        if len(self.skipped) + 1 > cfg.nonfinite_max_skips:
            raise FloatingPointError(
                f"{what}. nonfinite=skip: {len(self.skipped)} updates already skipped, "
                f"nonfinite_max_skips={cfg.nonfinite_max_skips} reached: training stopped; "
                f"{last}"
            )
        self.skipped.append(self.step + 1)
        self._skip_now = True
        msg = (
            f"{what}; update skipped (nonfinite=skip: no optimizer step, gradients zeroed), "
            f"{len(self.skipped)} skipped so far (nonfinite_max_skips {cfg.nonfinite_max_skips})"
        )
        self.log("WARNING " + msg)
        if self.is_main:
            warnings.warn(msg, NonFiniteLossWarning, stacklevel=2)

    # -- main loop -------------------------------------------------------------------------------
    def loop(self) -> int:
        cfg = self.cfg
        if self.is_main and cfg.progress:
            from tqdm.auto import tqdm

            tty = sys.stderr.isatty()
            self.pbar = tqdm(
                total=cfg.max_steps,
                initial=self.step,
                desc=cfg.run_name,
                dynamic_ncols=True,
                mininterval=0.5 if tty else 30.0,
                smoothing=0.1,
            )
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
                    rec = {
                        "step": self.step,
                        "loss": loss,
                        **metrics,
                        **{k: float_metric(v) for k, v in (extra or {}).items()},
                        "lr": self.cfg.lr,
                        "steps_per_s": sps,
                        "elapsed_s": time.time() - self.start_time,
                        "time": time.time(),
                    }
                    self.metrics.append(rec)  # metrics.jsonl + TensorBoard / W&B, flushed
                    if self.pbar is None or not sys.stderr.isatty():
                        save_at = self._deadline_save_at()
                        self.log(progress.line(self.step, loss, None if save_at is None else save_at - time.time()))
                if want_images and (self.step % every_img == 0 or self.step == cfg.max_steps):
                    want_images = send_pictures(
                        self.task, self.raw_model, self.step, self.device, self.autocast(), self.metrics, self.log
                    )
                if self.pbar is not None:
                    self.pbar.set_postfix(
                        loss=f"{loss:.4g}", sps=f"{1.0 / max(self.step_ema_s, 1e-9):.2f}", refresh=False
                    )
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
                        self.end_record("stopped", reason)
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

    def end_record(self, status: str, reason: str | None = None) -> None:
        if self.is_main:
            append_jsonl(
                self.ckpt_dir / "attempts.jsonl",
                {
                    "event": "end",
                    "status": status,
                    "reason": reason,
                    "step": self.step,
                    "skipped_nonfinite": len(self.skipped),
                    "job_id": os.environ.get("SLURM_JOB_ID"),
                    "pid": os.getpid(),
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "wall_s": time.time() - self.start_time,
                },
            )

    # -- final outputs (rank 0, after the process group is gone) ----------------------------------
    def finish(self) -> None:
        """Rank 0, after the process group is gone: config.json, then the declared outputs (final_outputs.py)."""
        self.metrics.close()
        if self.is_main:
            write_final_outputs(self)


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
    env = dist_env()
    rank, world, local_rank, device = env.rank, env.world, env.local_rank, env.device
    if env.use_cuda and cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before the first cuBLAS handle
    if env.use_cuda:
        torch.cuda.set_device(device)
    created_pg = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if env.use_cuda else "gloo")
        created_pg = True
    if world > 1:
        rank, world = dist.get_rank(), dist.get_world_size()

    with torch_globals(cfg.deterministic, cfg.num_threads, cfg.tf32, env.use_cuda):
        run = Trainer(task, cfg, rank, world, local_rank, device)
        run.nodes = env.nodes
        lock = CheckpointLock(cfg.ckpt_dir)
        signals = None
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
                    err = CheckpointLockError(
                        f"rank 0 could not lock checkpoint dir {cfg.ckpt_dir} (see rank 0's error)"
                    )
            if err is not None:
                raise err
            signals = StopSignals(run.on_stop_signal)  # SIGTERM / Ctrl-C: save at the next step, exit 75

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
                    run.end_record("error", f"{type(e).__name__}: {e}")
                except Exception:
                    pass
            raise
        finally:
            run.metrics.close() if hasattr(run, "metrics") else None
            if signals is not None:
                signals.restore()
            lock.release()
            if ok and created_pg:
                dist.destroy_process_group()


def train_run(task: Any, cfg: EngineConfig, section: dict, ckpt_root: str | None) -> int:
    """``train`` in the run's identity folder ``<ckpt_root>/<run>/<hash>/`` (training/identity.py) when a
    checkpoint root is given, else in ``cfg.ckpt_dir``: what the trainer scripts run."""
    from .identity import resolve_run_dir

    if ckpt_root:
        cfg.ckpt_dir = str(resolve_run_dir(ckpt_root, section, task.identity_inputs()))
        print(f"[{cfg.run_name}] checkpoints: {cfg.ckpt_dir} (run identity)", flush=True)
    return train(task, cfg)
