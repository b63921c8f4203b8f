"""Shortcut-forcing world model (dreamer4_model.md §3) and the inverse-dynamics aux head.

Per frame the transformer sees S = 3 + n_spatial + n_register + n_agent tokens (§3.2):

    slot 0            action token            action_encoder(actions * act_mask)   ACTION
    slot 1            signal level tau        signal_embed[signal_idx]              SHORTCUT_SIGNAL
    slot 2            step size d             step_embed[step_idx]                  SHORTCUT_STEP
    3 .. 3+n_sp-1     packed noisy latents    spatial_proj(z_tilde)                 SPATIAL
    next n_register   learned registers       register_tokens                       REGISTER
    last n_agent      agent token             zeros (or the caller's agent_tokens)  AGENT

Space attention within a frame (mask by `space_mode`), causal time attention on every slot, no
final norm; `flow_x_head` maps the spatial outputs to x1_hat, a prediction of the *clean* packed
latents (x-prediction, §4). Parameter names and shapes are upstream's (§7.2).

space_mode (§1.4, §11.3):
    wm_agent_isolated  upstream default: agent <-> agent only, so the agent output depends only on t
    wm_agent           upstream option: full attention (the agent sees and is seen by everything)
    agent_reads        ours, the paper's intent: the agent reads its whole frame, nobody reads it
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import (
    ACTION,
    AGENT,
    REGISTER,
    SHORTCUT_SIGNAL,
    SHORTCUT_STEP,
    SPATIAL,
    SPACE_MASKS,
    Transformer,
    add_positions,
)

ACTION_DIM = 16  # fixed action-token width; shorter action vectors are zero-padded (§3.3)


@dataclass
class DynamicsConfig:
    """Architecture; defaults = train_dynamics.py defaults (§6.2) with the default tokenizer."""

    d_model: int = 512
    depth: int = 8
    n_heads: int = 4
    dropout: float = 0.0
    mlp_ratio: float = 4.0
    time_every: int = 1
    n_spatial: int = 8  # tokenizer n_latents / packing_factor
    d_spatial: int = 64  # tokenizer d_bottleneck * packing_factor
    n_register: int = 4
    n_agent: int = 1
    space_mode: str = "wm_agent_isolated"
    k_max: int = 8
    action_dim: int = ACTION_DIM
    scale_pos_embeds: bool = False

    def __post_init__(self):
        if self.space_mode not in SPACE_MASKS:
            raise ValueError(f"space_mode {self.space_mode!r} not one of {sorted(SPACE_MASKS)}")
        if self.k_max < 1 or self.k_max & (self.k_max - 1):
            raise ValueError(f"k_max must be a power of two, got {self.k_max}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads {self.n_heads} does not divide d_model {self.d_model}")

    @property
    def emax(self) -> int:
        return int(math.log2(self.k_max))

    @property
    def n_tokens(self) -> int:
        return 3 + self.n_spatial + self.n_register + self.n_agent

    @property
    def spatial_slots(self) -> slice:
        return slice(3, 3 + self.n_spatial)

    @property
    def agent_slots(self) -> slice:
        start = 3 + self.n_spatial + self.n_register
        return slice(start, start + self.n_agent)

    def to_dict(self) -> dict:
        return asdict(self)


def pack_latents(z: torch.Tensor, k: int) -> torch.Tensor:
    """(B,T,L,Db) -> (B,T,L/k,k*Db): token j = concat(z[kj], ..., z[kj+k-1]) (§3.1)."""
    B, T, L, Db = z.shape
    return z.reshape(B, T, L // k, k * Db)


def unpack_latents(x: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of pack_latents: (B,T,N,k*Db) -> (B,T,N*k,Db)."""
    B, T, N, D = x.shape
    return x.reshape(B, T, N * k, D // k)


class ActionEncoder(nn.Module):
    """token = fc2(silu(fc1(clamp(a * mask, -1, 1)))) + base; actions None -> base (§3.3)."""

    def __init__(self, d: int, action_dim: int = ACTION_DIM, hidden_mult: float = 2.0):
        super().__init__()
        h = int(d * hidden_mult)
        self.base = nn.Parameter(torch.randn(d) * 0.02)
        self.fc1 = nn.Linear(action_dim, h)
        self.fc2 = nn.Linear(h, d)
        nn.init.normal_(self.fc2.weight, std=1e-3)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, actions, act_mask=None, shape=None):
        """actions (B,T,A) or None (then `shape` = (B,T)); act_mask (B,T,A), (A,) or None -> (B,T,D)."""
        if actions is None:
            B, T = shape
            return self.base.view(1, 1, -1).expand(B, T, -1)
        x = actions if act_mask is None else actions * act_mask.to(actions.dtype)
        return self.fc2(F.silu(self.fc1(x.clamp(-1.0, 1.0)))) + self.base


class Dynamics(nn.Module):
    def __init__(self, cfg: DynamicsConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or DynamicsConfig()
        D = cfg.d_model
        self.register_tokens = nn.Parameter(torch.randn(cfg.n_register, D) * 0.02)
        self.spatial_proj = nn.Linear(cfg.d_spatial, D)
        self.action_encoder = ActionEncoder(D, cfg.action_dim)
        self.step_embed = nn.Embedding(cfg.emax + 1, D)
        self.signal_embed = nn.Embedding(cfg.k_max + 1, D)
        modality = torch.tensor(
            [ACTION, SHORTCUT_SIGNAL, SHORTCUT_STEP]
            + [SPATIAL] * cfg.n_spatial
            + [REGISTER] * cfg.n_register
            + [AGENT] * cfg.n_agent
        )
        self.transformer = Transformer(
            D,
            cfg.n_heads,
            cfg.depth,
            modality,
            cfg.space_mode,
            cfg.mlp_ratio,
            cfg.dropout,
            cfg.time_every,
            time_slots=None,
        )
        self.flow_x_head = nn.Linear(D, cfg.d_spatial)
        nn.init.zeros_(self.flow_x_head.weight)
        nn.init.zeros_(self.flow_x_head.bias)

    # -- tokens ------------------------------------------------------------------------------
    def tokens(self, actions, step_idxs, signal_idxs, packed, act_mask=None, agent_tokens=None):
        """Input tokens (B,T,S,D) before positions (§3.2)."""
        B, T = packed.shape[:2]
        cfg = self.cfg
        dt = self.spatial_proj.weight.dtype
        act = self.action_encoder(actions, act_mask, (B, T))[:, :, None]  # (B,T,1,D)
        sig = self.signal_embed(signal_idxs)[:, :, None]  # (B,T,1,D)
        stp = self.step_embed(step_idxs)[:, :, None]  # (B,T,1,D)
        spa = self.spatial_proj(packed.to(dt))  # (B,T,n_sp,D)
        reg = self.register_tokens.view(1, 1, cfg.n_register, -1).expand(B, T, -1, -1)
        parts = [act.to(spa.dtype), sig.to(spa.dtype), stp.to(spa.dtype), spa, reg.to(spa.dtype)]
        if cfg.n_agent:
            agent = (
                spa.new_zeros(B, T, cfg.n_agent, cfg.d_model) if agent_tokens is None else agent_tokens.to(spa.dtype)
            )
            parts.append(agent)
        return torch.cat(parts, dim=2)

    def _outputs(self, h, return_spatial):
        cfg = self.cfg
        spatial = h[:, :, cfg.spatial_slots]  # (B,T,n_sp,D)
        x1_hat = self.flow_x_head(spatial)  # (B,T,n_sp,d_sp)
        h_agent = h[:, :, cfg.agent_slots] if cfg.n_agent else None  # (B,T,n_agent,D)
        return (x1_hat, h_agent, spatial) if return_spatial else (x1_hat, h_agent)

    def forward(
        self, actions, step_idxs, signal_idxs, packed, act_mask=None, agent_tokens=None, return_spatial: bool = False
    ):
        """actions (B,T,A)/None, step_idxs/signal_idxs (B,T) long, packed (B,T,n_sp,d_sp).

        Returns (x1_hat (B,T,n_sp,d_sp), h_agent (B,T,n_agent,D) or None[, h_spatial (B,T,n_sp,D)]).
        """
        x = self.tokens(actions, step_idxs, signal_idxs, packed, act_mask, agent_tokens)
        x = add_positions(x, self.cfg.scale_pos_embeds)
        return self._outputs(self.transformer(x), return_spatial)

    def forward_step(
        self, t: int, cache, actions, step_idxs, signal_idxs, packed, act_mask=None, return_spatial: bool = False
    ):
        """One frame at window index t (inputs with T = 1) given the KV cache of frames 0..t-1.

        Returns (outputs as forward, this frame's per-layer (k, v)); append those to the cache
        (KVCache.append) only once the frame is final.
        """
        x = self.tokens(actions, step_idxs, signal_idxs, packed, act_mask)
        x = add_positions(x, self.cfg.scale_pos_embeds, t0=t)
        h, kv = self.transformer.forward_cached(x, cache.layers if cache is not None else None)
        return self._outputs(h, return_spatial), kv


class KVCache:
    """Per-layer time-attention keys/values of the frames already in the window."""

    def __init__(self):
        self.layers: list | None = None
        self.length = 0

    def append(self, kv: list) -> None:
        if self.layers is None:
            self.layers = list(kv)
        else:
            self.layers = [
                None if a is None else (torch.cat([a[0], b[0]], 2), torch.cat([a[1], b[1]], 2))
                for a, b in zip(self.layers, kv)
            ]
        self.length += 1


class InverseDynamicsHead(nn.Module):
    """MLP (2D -> D -> action_dim, SiLU) on [mean_s h_t, mean_s h_{t+1}] -> the action a_t (token t+1)."""

    def __init__(self, d_model: int, action_dim: int = ACTION_DIM):
        super().__init__()
        self.fc1 = nn.Linear(2 * d_model, d_model)
        self.fc2 = nn.Linear(d_model, action_dim)

    def forward(self, h_spatial):
        """h_spatial (B,T,n_sp,D) -> predictions (B,T-1,action_dim) for t = 0..T-2."""
        m = h_spatial.float().mean(dim=2)  # (B,T,D)
        pair = torch.cat([m[:, :-1], m[:, 1:]], dim=-1)  # (B,T-1,2D)
        return self.fc2(F.silu(self.fc1(pair.to(self.fc1.weight.dtype))))


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
