"""The tokenizer trainer: a task for the shared engine (dreamer4_model.md §2.5, §6.1, §10).

Loss = masked-patch MSE + lpips_weight * LPIPS(alex, v0.1) on composite frames, MAE masking with
p ~ U[mae_p_min, mae_p_max] per frame; AdamW, constant lr, no grad clipping (upstream). Windows
of `seq_len` frames never cross an episode, come from `train.json` only, at the model resolution.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Iterator

import torch

from .identity import training_data_fingerprint
from ..cli import ConfigError
from ..data.loader import WindowDataset, make_loader
from ..models.tokenizer import Tokenizer, TokenizerConfig
from ..fileio import sha256_file
from ..models.upstream import checkpoint_file, load_tokenizer_checkpoint, upstream_tokenizer_args
from ..objectives.mae import tokenizer_loss
from . import pictures


def tokenizer_model_config(tok_cfg: dict, resolution: int) -> TokenizerConfig:
    """TokenizerConfig from the config's `tokenizer` section at the model resolution."""
    names = {f.name for f in fields(TokenizerConfig)}
    kw = {k: v for k, v in tok_cfg["model"].items() if k in names}
    return TokenizerConfig(
        H=resolution, W=resolution, mae_p_min=tok_cfg["mae_p_min"], mae_p_max=tok_cfg["mae_p_max"], **kw
    )


class TokenizerTask:
    """Engine task: data from the shards, MAE + LPIPS loss."""

    def __init__(
        self, tok_cfg: dict, *, manifest: str, train_split: str, resolution: int, lpips_cache: str | None = None
    ):
        self.tok_cfg, self.resolution = tok_cfg, resolution
        # LPIPS first: a missing asset stops the job at once, before any checkpoint or data is read. The job
        # never downloads (compute nodes are often offline): rule fetch_lpips / `make fetch-lpips` made it.
        self.lpips = None
        self.lpips_cache = lpips_cache
        self.lpips_info: dict[str, Any] = {
            "weight": float(tok_cfg["lpips_weight"]),
            "network": "alex",
            "version": "0.1",
            "resolution": resolution,
        }
        if tok_cfg["lpips_weight"] > 0:
            from ..models.lpips import LPIPS

            self.lpips = LPIPS.from_asset(lpips_cache, lpips_weight=float(tok_cfg["lpips_weight"]))
            self.lpips_info.update(self.lpips.describe())
        else:
            self.lpips_info.update(network=None, weights_sha256=None, note="lpips_weight 0: no LPIPS term")
        self.model_cfg = tokenizer_model_config(tok_cfg, resolution)
        # init_from: weights only (fresh optimizer, step 0); the architecture comes from the state dict
        self.init_path, self.init_sha, self.init_report, self._init_sd = None, None, None, None
        if tok_cfg.get("init_from"):
            self.init_path = checkpoint_file(tok_cfg["init_from"])
            model, self.init_report = load_tokenizer_checkpoint(
                self.init_path,
                explicit={
                    "H": resolution,
                    "W": resolution,
                    "mae_p_min": tok_cfg["mae_p_min"],
                    "mae_p_max": tok_cfg["mae_p_max"],
                    "dropout": tok_cfg["model"]["dropout"],
                },
            )
            if (model.cfg.H, model.cfg.W) != (resolution, resolution):
                raise ValueError(
                    f"tokenizer.init_from {self.init_path} is a {model.cfg.H}x{model.cfg.W} tokenizer; "
                    f"this run trains at {resolution}x{resolution} (data.model_resolution)"
                )
            self.model_cfg, self._init_sd = model.cfg, model.state_dict()
            self.init_sha = sha256_file(self.init_path)
        self.dataset = WindowDataset(
            manifest,
            train_split,
            seq_len=tok_cfg["seq_len"],
            batch_size=tok_cfg["batch_size"],
            resolution=resolution,
            seed=tok_cfg["seed"],
        )
        self.manifest, self.train_split = manifest, train_split
        self._fixed: dict | None = None  # the live view's fixed windows (training/pictures.py), read once

    def identity_inputs(self) -> dict:
        """What besides the config decides what this run learns (training/identity.py)."""
        cks = {"lpips": self.lpips_info.get("weights_sha256")}
        if self.init_sha:
            cks["init_tokenizer"] = self.init_sha
        return {
            "data_fingerprint": training_data_fingerprint(self.dataset.store.manifest_path, self.dataset.episode_ids),
            "checkpoints": cks,
            "tokenizer_choice": None,
        }

    # -- engine protocol --------------------------------------------------------------------
    def setup(self, ctx) -> None:
        self.n_batches = ctx.cfg.max_steps * ctx.cfg.grad_accum  # data indices the engine will ask for
        if self.lpips is not None:
            self.lpips.to(ctx.device)

    def config(self) -> dict:
        return {
            "tokenizer": self.tok_cfg,
            "model": self.model_cfg.to_dict(),
            "resolution": self.resolution,
            "lpips": self.lpips_info,
            "n_train_windows": self.dataset.n_windows,
            "init": {"init_from": self.init_path, "sha256": self.init_sha, **(self.init_report or {})}
            if self.init_path
            else {"init_from": None},
        }

    def upstream_args(self) -> dict:
        """`args` as upstream's train_tokenizer.py records them, plus what LPIPS ran with."""
        t = self.tok_cfg
        return {
            **upstream_tokenizer_args(self.model_cfg),
            "seq_len": t["seq_len"],
            "batch_size": t["batch_size"],
            "lr": t["lr"],
            "lr_mult": dict(t["lr_mult"]),
            "lr_schedule": t["lr_schedule"],
            "init_scale": dict(t["init_scale"]),
            "weight_decay": t["weight_decay"],
            "max_steps": t["max_steps"],
            "save_every": t["save_every"],
            "seed": t["seed"],
            "lpips_weight": float(t["lpips_weight"]),
            "init_from": self.init_path,
            "init_sha256": self.init_sha,
            "lpips_frac": float(t["lpips_frac"]),
            "visible_mse_weight": float(t["visible_mse_weight"]),  # ours (0 = upstream)
            "lpips_net": self.lpips_info["network"],
            "lpips_weights_sha256": self.lpips_info.get("weights_sha256"),
            "lpips_resolution": self.resolution,
        }

    def build_model(self) -> torch.nn.Module:
        model = Tokenizer(self.model_cfg)
        if self._init_sd is not None:
            model.load_state_dict(self._init_sd, strict=True)
            return model
        scale = self.tok_cfg.get("init_scale") or {}
        params = dict(model.named_parameters())
        unknown = sorted(set(scale) - set(params))
        if unknown:
            raise ConfigError(f"tokenizer.init_scale names unknown parameters {unknown}; e.g. {sorted(params)[:6]}")
        with torch.no_grad():
            for name, factor in scale.items():
                params[name].mul_(float(factor))
        return model

    def batches(self, start_step: int, rank: int, world_size: int) -> Iterator[dict]:
        self.dataset.rank = rank
        end = getattr(self, "n_batches", self.tok_cfg["max_steps"])
        loader = make_loader(self.dataset, start_step, end, self.tok_cfg["num_workers"])
        for batch in loader:
            yield {"frames": batch["frames"]}  # (B,L,3,r,r) in [0,1]

    def images(self, model, step) -> dict:
        """Live view (engine image cadence): target vs reconstruction of a few fixed val windows."""
        if self._fixed is None:
            self._fixed = pictures.load_fixed(
                self.manifest,
                pictures.image_split(self.train_split),
                min(pictures.IMAGE_FRAMES, self.tok_cfg["seq_len"]),
                self.resolution,
            )
        return {"images/recon": pictures.tokenizer_recon(model, self._fixed["frames"])}

    def loss(self, model, batch, step):
        frames = batch["frames"]
        out = model(frames)  # train mode: MAE masking on
        loss, m = tokenizer_loss(
            out["recon"],
            frames,
            out["mae_mask"],
            lpips_fn=self.lpips,
            lpips_weight=self.tok_cfg["lpips_weight"],
            lpips_frac=self.tok_cfg["lpips_frac"],
            keep_prob=out["keep_prob"],
            visible_weight=self.tok_cfg["visible_mse_weight"],
        )
        return loss, {f"train/{k}": float(v) for k, v in m.items() if k != "loss"}
