"""What a trainer hands to the engine (`Task`) and what the engine tells it (`EngineContext`).

The tokenizer and dynamics trainers (training/tokenizer_task.py, training/dynamics_task.py) implement
`Task`; training/engine.py `train(task, cfg)` runs it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, runtime_checkable

import torch
import torch.nn as nn

from .engine_config import EngineConfig


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
