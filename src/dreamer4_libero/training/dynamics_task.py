"""The dynamics trainer: a task for the shared engine (dreamer4_model.md §3-4, §8, §10; issue 12).

Per step: the frozen tokenizer (eval, no MAE, no grad) encodes each training window in one call,
or in independent chunks of the run's `tokenizer_chunk` frames (models/tokenizer_chunks.py; positions
are window-relative and the encoder is causal, so a frame's latent depends on where its window or
chunk starts; probe and rollout windows are encoded the same way), latents are packed, and
`WorldModel` computes the shortcut-forcing loss plus the optional inverse-dynamics aux loss in
ONE forward call (so DDP sees one forward and one backward). Checkpoints keep upstream's keys:
`dynamics` is the aux-free world model; the aux head is a separate top-level `aux_head` entry
and, at the end, its own file `aux_head.pt`.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Iterator

import torch
import torch.nn as nn

from .identity import training_data_fingerprint
from ..data.loader import WindowDataset, make_loader
from ..fileio import atomic_path, sha256_file
from ..models.dynamics import Dynamics, DynamicsConfig, InverseDynamicsHead, pack_latents
from ..models.tokenizer_chunks import encode_chunked, resolve_chunk
from ..models.upstream import DYNAMICS_TRAIN_DEFAULTS, checkpoint_file, load_dynamics_checkpoint, load_frozen_tokenizer
from ..objectives.shortcut import shortcut_loss
from . import pictures


class WorldModel(nn.Module):
    """The trained module: dynamics + optional aux head; forward returns (loss, metrics)."""

    def __init__(self, dynamics: Dynamics, aux_head: InverseDynamicsHead | None, run: dict):
        super().__init__()
        self.dynamics = dynamics
        self.aux_head = aux_head
        self.run = run

    def forward(self, z1, actions, act_mask, step: int):
        r = self.run
        return shortcut_loss(
            self.dynamics,
            z1,
            actions,
            act_mask,
            step=step,
            bootstrap_start=r["bootstrap_start"],
            self_fraction=r["self_fraction"],
            aux_head=self.aux_head,
            aux_weight=r["aux_weight"],
            aux_input=r["aux_input"],
        )


def resolve_tokenizer_path(run: dict, study_tokenizer: str | None) -> tuple[str, str]:
    """(path, origin) of the frozen tokenizer: the variant's init_from tokenizer, else the study's."""
    init = run.get("init_paths") or {}
    if init.get("tokenizer"):
        return checkpoint_file(init["tokenizer"]), "init_from.tokenizer"
    if not study_tokenizer:
        raise ValueError(f"variant {run['name']}: no tokenizer checkpoint given")
    return study_tokenizer, "study tokenizer"


def build_dynamics(run: dict, tok_cfg) -> tuple[Dynamics, dict]:
    """Fresh or init_from dynamics for `run`; returns (model, report) (report records every fallback)."""
    m = run["model"]
    pf = m["packing_factor"]
    if tok_cfg.n_latents % pf:
        raise ValueError(f"packing_factor {pf} does not divide the tokenizer's n_latents {tok_cfg.n_latents}")
    n_spatial, d_spatial = tok_cfg.n_latents // pf, tok_cfg.d_bottleneck * pf
    init = run.get("init_paths")
    if init and init.get("dynamics"):
        explicit = {k: m.get(k) for k in ("n_heads", "k_max", "space_mode", "n_agent")}
        explicit.update(n_spatial=n_spatial, dropout=m["dropout"])
        dyn, report = load_dynamics_checkpoint(init["dynamics"], explicit=explicit)
        if dyn.cfg.d_spatial != d_spatial:
            raise ValueError(
                f"init_from dynamics {init['dynamics']} expects packed latents of width "
                f"{dyn.cfg.d_spatial}; the tokenizer gives {d_spatial} (d_bottleneck x packing_factor)"
            )
        report["init_from"] = dict(init)
        report["init_sha256"] = sha256_file(init["dynamics"])
        return dyn.train(), report
    free = {
        k: (m.get(k) if m.get(k) is not None else DYNAMICS_TRAIN_DEFAULTS[k])
        for k in ("n_heads", "k_max", "space_mode", "n_agent")
    }
    fallbacks = [f"{k}={v!r} (not set: train_dynamics default)" for k, v in free.items() if m.get(k) is None]
    cfg = DynamicsConfig(
        d_model=m["d_model"],
        depth=m["depth"],
        dropout=m["dropout"],
        mlp_ratio=m["mlp_ratio"],
        time_every=m["time_every"],
        n_spatial=n_spatial,
        d_spatial=d_spatial,
        n_register=m["n_register"],
        scale_pos_embeds=m["scale_pos_embeds"],
        **free,
    )
    return Dynamics(cfg), {"init_from": None, "fallbacks": fallbacks}


class DynamicsTask:
    """Engine task for one dynamics variant."""

    def __init__(self, run: dict, *, manifest: str, train_split: str, tokenizer_ckpt: str | None):
        self.run = copy.deepcopy(run)
        self.tok_path, self.tok_origin = resolve_tokenizer_path(self.run, tokenizer_ckpt)
        self.tokenizer, self.tok_report = load_frozen_tokenizer(self.tok_path)
        self.tok_sha = sha256_file(self.tok_path)
        # frames per independent encoder call (None = the whole window); "train" = the tokenizer's own seq_len
        self.tok_chunk = resolve_chunk(
            self.run.get("tokenizer_chunk"), self.tok_path, f"dynamics variant {self.run.get('name')}: tokenizer_chunk"
        )
        self.resolution = self.tokenizer.cfg.H
        self.packing = self.run["model"]["packing_factor"]
        self.dataset = WindowDataset(
            manifest,
            train_split,
            seq_len=self.run["seq_len"],
            batch_size=self.run["batch_size"],
            resolution=self.resolution,
            seed=self.run["seed"],
        )
        self.manifest, self.train_split = manifest, train_split
        self._fixed: dict | None = None  # the live view's fixed windows (training/pictures.py), read once
        # build once on CPU to know the architecture (and report fallbacks) before the engine asks
        self._dyn, self.dyn_report = build_dynamics(self.run, self.tokenizer.cfg)
        self.dyn_cfg: DynamicsConfig = self._dyn.cfg

    def identity_inputs(self) -> dict:
        """What besides the config decides what this run learns (training/identity.py): its training data, the
        frozen tokenizer and the init checkpoint."""
        cks = {"tokenizer": self.tok_sha}
        if self.dyn_report.get("init_sha256"):
            cks["init_dynamics"] = self.dyn_report["init_sha256"]
        return {
            "data_fingerprint": training_data_fingerprint(self.dataset.store.manifest_path, self.dataset.episode_ids),
            "checkpoints": cks,
            "tokenizer_choice": self.tok_origin,
            # added after dynamics runs existed: a constant-lr run keeps its checkpoint folder
            "neutral_defaults": {"lr_schedule": "constant"},
        }

    # -- engine protocol --------------------------------------------------------------------
    def setup(self, ctx) -> None:
        self.tokenizer.to(ctx.device)
        self.ctx = ctx
        self.n_batches = ctx.cfg.max_steps * ctx.cfg.grad_accum  # data indices the engine will ask for

    def config(self) -> dict:
        return {
            "variant": self.run,
            "dynamics_model": self.dyn_cfg.to_dict(),
            "resolution": self.resolution,
            "tokenizer": {
                "path": os.path.abspath(self.tok_path),
                "sha256": self.tok_sha,
                "origin": self.tok_origin,
                "config": self.tokenizer.cfg.to_dict(),
            },
            "init": self.dyn_report,
            "n_train_windows": self.dataset.n_windows,
            "n_params_dynamics": sum(p.numel() for p in self._dyn.parameters()),
            "stand_in_for": self.run.get("stand_in_for"),
        }

    def upstream_args(self) -> dict:
        """`args` in train_dynamics.py's names (§6.2) plus ours (aux, init, tokenizer hash)."""
        r, c = self.run, self.dyn_cfg
        return {
            "seq_len": r["seq_len"],
            "batch_size": r["batch_size"],
            "tokenizer_ckpt": os.path.abspath(self.tok_path),
            "tokenizer_sha256": self.tok_sha,
            "tokenizer_chunk": self.tok_chunk,  # ours: None = whole window
            "scale_pos_embeds": c.scale_pos_embeds,
            "d_model_dyn": c.d_model,
            "dyn_depth": c.depth,
            "n_heads": c.n_heads,
            "dropout": c.dropout,
            "mlp_ratio": c.mlp_ratio,
            "time_every": c.time_every,
            "packing_factor": self.packing,
            "n_register": c.n_register,
            "n_spatial": c.n_spatial,  # ours: upstream derives it from the tokenizer at load time
            "n_agent": c.n_agent,
            "space_mode": c.space_mode,
            "k_max": c.k_max,
            "bootstrap_start": r["bootstrap_start"],
            "self_fraction": r["self_fraction"],
            "use_actions": r["use_actions"],
            "lr": r["lr"],
            **({"lr_schedule": r["lr_schedule"]} if r.get("lr_schedule", "constant") != "constant" else {}),  # ours
            "weight_decay": r["weight_decay"],
            "max_steps": r["max_steps"],
            "grad_clip": r["grad_clip"],
            "save_every": r["save_every"],
            "seed": r["seed"],
            "aux_weight": r["aux_weight"],
            "aux_input": r["aux_input"] if r["aux_weight"] > 0 else None,
            "init_from": (self.run.get("init_paths") or None),
            "variant": r["name"],
        }

    def build_model(self) -> nn.Module:
        dyn = copy.deepcopy(self._dyn) if self.run.get("init_paths") else Dynamics(self.dyn_cfg)
        aux = InverseDynamicsHead(self.dyn_cfg.d_model, self.dyn_cfg.action_dim) if self.run["aux_weight"] > 0 else None
        return WorldModel(dyn, aux, self.run)

    def checkpoint_states(self, model: WorldModel) -> dict:
        out = {"dynamics": model.dynamics.state_dict()}
        if model.aux_head is not None:
            out["aux_head"] = model.aux_head.state_dict()
        return out

    def load_checkpoint_states(self, model: WorldModel, ck: dict) -> None:
        model.dynamics.load_state_dict(ck["dynamics"], strict=True)
        if model.aux_head is not None:
            if "aux_head" not in ck:
                raise ValueError("checkpoint has no 'aux_head' entry but this variant trains an aux head")
            model.aux_head.load_state_dict(ck["aux_head"], strict=True)

    def batches(self, start_step: int, rank: int, world_size: int) -> Iterator[dict]:
        self.dataset.rank = rank
        end = getattr(self, "n_batches", self.run["max_steps"])
        loader = make_loader(self.dataset, start_step, end, self.run["num_workers"])
        for b in loader:
            yield {"frames": b["frames"], "actions": b["actions"], "act_mask": b["act_mask"]}

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B,T,3,r,r) in [0,1] -> packed clean latents (B,T,N,D), one encoder call per window or chunk."""
        z = encode_chunked(self.tokenizer, frames.float(), self.tok_chunk)
        return pack_latents(z.float(), self.packing)

    def loss(self, model, batch, step):
        z1 = self.encode(batch["frames"])
        actions = batch["actions"] if self.run["use_actions"] else None
        act_mask = batch["act_mask"] if self.run["use_actions"] else None
        loss, m = model(z1, actions, act_mask, step)
        return loss, {f"train/{k}": float(v) for k, v in m.items() if k != "loss"}

    def images(self, model: WorldModel, step) -> dict:
        """Live view (engine image cadence): target vs rollout (2 true context frames, then generated) of a few
        fixed val windows."""
        if self._fixed is None:
            self._fixed = pictures.load_fixed(
                self.manifest,
                pictures.image_split(self.train_split),
                max(pictures.ROLLOUT_CONTEXT + 1, min(pictures.IMAGE_FRAMES, self.run["seq_len"])),
                self.resolution,
            )
        fixed = self._fixed if self.run["use_actions"] else {**self._fixed, "actions": None, "act_mask": None}
        return {
            "images/rollout": pictures.world_model_rollout(
                self.tokenizer, model.dynamics, fixed, packing=self.packing, chunk=self.tok_chunk
            )
        }

    def final_outputs(self, model: WorldModel, out_dir) -> dict:
        extra: dict[str, Any] = {
            "variant": self.run["name"],
            "stand_in_for": self.run.get("stand_in_for"),
            "n_params_dynamics": sum(p.numel() for p in model.dynamics.parameters()),
        }
        if model.aux_head is not None:
            path = os.path.join(out_dir, "aux_head.pt")
            with atomic_path(path) as tmp:
                torch.save(
                    {
                        "aux_head": model.aux_head.state_dict(),
                        "aux_input": self.run["aux_input"],
                        "aux_weight": self.run["aux_weight"],
                        "d_model": self.dyn_cfg.d_model,
                    },
                    tmp,
                )
            extra.update(aux_head=os.path.abspath(path), aux_head_sha256=sha256_file(path))
        return extra
