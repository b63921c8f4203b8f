"""Toy task for tests/test_engine.py, runnable as a trainer script (also under torchrun).

A tiny MLP with dropout (so the torch RNG matters) regressing a fixed linear map on synthetic
batches drawn from ``np.random.default_rng([data_seed, step, rank])``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from dreamer4_libero.training.engine import train
from dreamer4_libero.training.engine_config import (
    EngineConfig,
    add_engine_args,
    engine_config_from_args,
    require_job_gpus,
)

D_IN, D_HID, D_OUT, BATCH = 8, 32, 4, 16


def toy_config(ckpt_dir, **kw) -> EngineConfig:
    """An EngineConfig for the toy task: 20 steps, a checkpoint every 5, every metric kept, deterministic."""
    base = dict(
        ckpt_dir=str(ckpt_dir),
        max_steps=20,
        save_every=5,
        keep_last=0,
        log_every=1,
        seed=0,
        deterministic=True,
        progress=False,
        run_name="toy",
    )
    return EngineConfig(**{**base, **kw})


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(D_IN, D_HID), nn.GELU(), nn.Dropout(0.2), nn.Linear(D_HID, D_OUT))


def make_batch(data_seed: int, step: int, rank: int) -> dict:
    rng = np.random.default_rng([data_seed, step, rank])
    x = rng.standard_normal((BATCH, D_IN)).astype(np.float32)
    w = np.random.default_rng([data_seed, 999]).standard_normal((D_IN, D_OUT)).astype(np.float32)
    y = x @ w + 0.1 * rng.standard_normal((BATCH, D_OUT)).astype(np.float32)
    return {"x": torch.from_numpy(x), "y": torch.from_numpy(y), "index": step}


def toy_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    return ((model(batch["x"]) - batch["y"]) ** 2).mean()


class ToyTask:
    def __init__(
        self,
        data_seed: int = 0,
        sleep: float = 0.0,
        nan_at: int | None = None,
        record_step: int | None = None,
        record_dir: str | None = None,
        nan_rank: int | None = None,
    ):
        self.data_seed, self.sleep, self.nan_at, self.nan_rank = data_seed, sleep, nan_at, nan_rank
        self.record_step, self.record_dir = record_step, record_dir
        self.rank = 0
        self.seen: list[int] = []

    def config(self) -> dict:
        return {"name": "toy", "data_seed": self.data_seed}

    def setup(self, ctx) -> None:
        self.rank = ctx.rank

    def build_model(self) -> nn.Module:
        return make_model()

    def batches(self, start_step: int, rank: int, world_size: int):
        s = start_step
        while True:
            yield make_batch(self.data_seed, s, rank)
            s += 1

    def loss(self, model, batch, step):
        self.seen.append((step, int(batch["index"])))
        if self.sleep:
            time.sleep(self.sleep)
        if self.record_step is not None and step == self.record_step:
            inner = getattr(model, "module", model)
            torch.save(
                {
                    "params": {k: v.detach().clone() for k, v in inner.state_dict().items()},
                    "rng": torch.get_rng_state(),
                    "step": step,
                },
                Path(self.record_dir) / f"pre_rank{self.rank}.pt",
            )
        loss = toy_loss(model, batch)
        if self.nan_at is not None and step == self.nan_at and self.nan_rank in (None, self.rank):
            loss = loss * float("nan")
        return loss, {"loss/mse": float(loss.detach()), "x/mean": float(batch["x"].mean())}

    def after_update(self, step, model):
        if self.record_step is not None and step == self.record_step + 1:
            torch.save(
                {n: p.grad.detach().clone() for n, p in model.named_parameters()},
                Path(self.record_dir) / f"grad_rank{self.rank}.pt",
            )
        return {"extra/one": 1.0}

    def on_checkpoint(self, step, model):
        if self.record_dir is not None:  # every rank: its weights at its newest checkpoint
            torch.save(
                {k: v.detach().clone() for k, v in model.state_dict().items()},
                Path(self.record_dir) / f"ckpt_rank{self.rank}.pt",
            )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    add_engine_args(ap)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--nan-at", type=int)
    ap.add_argument("--nan-rank", type=int, help="only this rank's loss turns NaN at --nan-at (default: all)")
    ap.add_argument("--record-step", type=int)
    ap.add_argument("--record-dir")
    ap.add_argument("--start-now", action="store_true", help="count the time limit from now, not process start")
    a = ap.parse_args(argv)
    require_job_gpus(a, "engine_toy")
    cfg = engine_config_from_args(
        a, deterministic=True, progress=False, save_every=5, keep_last=3, log_every=1, run_name="toy"
    )
    if a.start_now:
        cfg.start_time = time.time()
    task = ToyTask(a.data_seed, a.sleep, a.nan_at, a.record_step, a.record_dir, a.nan_rank)
    return train(task, cfg)


if __name__ == "__main__":
    sys.exit(main())
