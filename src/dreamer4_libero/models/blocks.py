"""Shared transformer blocks of the tokenizer and the dynamics model (dreamer4_model.md §1).

Every token tensor is (B,T,S,D): batch, frames, tokens per frame, width. A layer attends first
*within* a frame (space attention, masked by token modality), then *along time* for each token
slot separately (causal), then applies a gated MLP. Module and parameter names follow the
upstream state-dict layout (§7): `norm1/space.attn/norm2/time.attn/norm3/mlp`, `qkv/out`,
`fc_in/fc_out`, `scale`. Masks and modality ids are non-persistent buffers (never in a state dict).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

# Token modality ids (§1.4).
LATENT, IMAGE, ACTION, PROPRIO, REGISTER, SPATIAL, SHORTCUT_SIGNAL, SHORTCUT_STEP, AGENT = -1, 0, 1, 2, 3, 4, 5, 6, 7


class RMSNorm(nn.Module):
    """y = x * scale / sqrt(mean(x^2) + eps); no bias, no centering (§1.1)."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * (self.scale / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class MLP(nn.Module):
    """Gated SiLU MLP: fc_in -> (u, v), a = u * silu(v) (second half gates), fc_out (§1.2)."""

    def __init__(self, d: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        h = int(d * mlp_ratio)
        self.fc_in = nn.Linear(d, 2 * h)
        self.fc_out = nn.Linear(h, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        u, v = self.fc_in(x).chunk(2, dim=-1)
        return self.drop(self.fc_out(self.drop(u * F.silu(v))))


# Attention kernel: "sdpa" = F.scaled_dot_product_attention (flash / memory-efficient kernels on GPU
# where the mask allows, else its math kernel), "explicit" = softmax(q k^T / sqrt(hd) + mask) v written
# out, the reference the fast path is tested against (tests/test_fast_paths.py). One switch per process.
ATTENTION_BACKENDS = ("sdpa", "explicit")
_ATTENTION = {"backend": "sdpa"}


def set_attention_backend(name: str) -> None:
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend must be one of {ATTENTION_BACKENDS}, got {name!r}")
    _ATTENTION["backend"] = name


def explicit_attention(q, k, v, mask=None, is_causal=False, dropout_p=0.0):
    """q (N,H,Lq,hd), k/v (N,H,Lk,hd) -> (N,H,Lq,hd), with SDPA's semantics: a bool mask is True where
    attending is allowed, a float mask is added to the scores, is_causal is top-left aligned."""
    Lq, Lk = q.shape[-2], k.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)  # (N,H,Lq,Lk)
    if is_causal:
        keep = torch.ones(Lq, Lk, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    p = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if dropout_p > 0:
        p = F.dropout(p, dropout_p)
    return p @ v


class Attention(nn.Module):
    """Multi-head self-attention over (N, L, D) with one qkv projection (§1.3)."""

    def __init__(self, d: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        assert d % n_heads == 0, f"d_model {d} not divisible by n_heads {n_heads}"
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def project(self, x):
        """(N,L,D) -> q, k, v each (N,H,L,hd)."""
        N, L, D = x.shape
        return tuple(
            t.view(N, L, self.n_heads, D // self.n_heads).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1)
        )

    def attend(self, q, k, v, mask=None, is_causal=False):
        """q (N,H,Lq,hd), k/v (N,H,Lk,hd) -> (N,Lq,D) after the output projection."""
        p = self.dropout if self.training else 0.0
        if _ATTENTION["backend"] == "explicit":
            y = explicit_attention(q, k, v, mask=mask, is_causal=is_causal, dropout_p=p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=p)
        N, _, Lq, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(N, Lq, -1))

    def forward(self, x, mask=None, is_causal=False):
        return self.attend(*self.project(x), mask=mask, is_causal=is_causal)


# ---------------------------------------------------------------------------------------------
# Space masks: mask[q, k] = True where query token q may attend key token k (§1.4). A mode is a
# function (q_modality (S,1), k_modality (1,S)) -> bool (S,S); add a mode by adding an entry here
# or by passing such a function wherever a mode name is accepted.


def _encoder_mask(q, k):  # latents see everything; others only their own modality
    return (q == LATENT) | (q == k)


def _decoder_mask(q, k):  # latents see latents only; others their own modality and latents
    return torch.where(q == LATENT, k == LATENT, (q == k) | (k == LATENT))


def _wm_agent_mask(q, k):  # full attention
    return torch.ones(q.shape[0], k.shape[1], dtype=torch.bool, device=q.device)


def _wm_agent_isolated_mask(q, k):  # agent <-> agent only; non-agent <-> non-agent only
    return (q == AGENT) == (k == AGENT)


def _agent_reads_mask(q, k):  # ours (the paper's intent): agent reads its whole frame; nobody reads it
    return (q == AGENT) | (k != AGENT)


SPACE_MASKS: dict[str, Callable] = {
    "encoder": _encoder_mask,
    "decoder": _decoder_mask,
    "wm_agent": _wm_agent_mask,
    "wm_agent_isolated": _wm_agent_isolated_mask,
    "agent_reads": _agent_reads_mask,
}


def space_mask(modality: torch.Tensor, mode: str | Callable) -> torch.Tensor:
    """(S,) modality ids -> (S,S) bool attention mask of `mode` (name in SPACE_MASKS or function)."""
    fn = SPACE_MASKS[mode] if isinstance(mode, str) else mode
    m = modality.long()
    return fn(m[:, None], m[None, :]).bool()


class SpaceAttention(nn.Module):
    """Attention among the S tokens of each frame: (B,T,S,D) -> (B,T,S,D)."""

    def __init__(self, d: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.attn = Attention(d, n_heads, dropout)

    def forward(self, x, mask):
        B, T, S, D = x.shape
        return self.attn(x.reshape(B * T, S, D), mask=mask).view(B, T, S, D)


class TimeAttention(nn.Module):
    """Causal attention along T for every token slot separately (§1.5): (B,T,S,D) -> (B,T,S,D).

    With `n_slots` set (tokenizer: the latents), only the first n_slots slots attend; the other
    slots are returned *unchanged*, i.e. the layer's residual adds norm2(x) to them (§11.8, kept
    on purpose for equivalence with upstream checkpoints).
    """

    def __init__(self, d: int, n_heads: int, dropout: float = 0.0, n_slots: int | None = None):
        super().__init__()
        self.n_slots = n_slots
        self.attn = Attention(d, n_heads, dropout)

    def forward(self, x):
        B, T, S, D = x.shape
        n = S if self.n_slots is None else self.n_slots
        h = x[:, :, :n].transpose(1, 2).reshape(B * n, T, D)  # (B*n,T,D)
        h = self.attn(h, is_causal=True).view(B, n, T, D).transpose(1, 2)  # (B,T,n,D)
        return h if n == S else torch.cat([h, x[:, :, n:]], dim=2)

    def forward_cached(self, x, past: tuple | None):
        """One new frame x (B,1,S,D) attending to cached keys/values of earlier frames.

        past: (k, v) each (B*S,H,t,hd) or None. Returns (out (B,1,S,D), (k_new, v_new)) where
        k_new/v_new are this frame's own keys/values (B*S,H,1,hd). All slots (dynamics only).
        """
        assert self.n_slots is None, "the KV cache is for time attention on all slots"
        B, _, S, D = x.shape
        q, k, v = self.attn.project(x.reshape(B * S, 1, D))
        kk, vv = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
        return self.attn.attend(q, kk, vv).view(B, 1, S, D), (k, v)


class Layer(nn.Module):
    """Pre-norm block: x += space(norm1 x); [x += time(norm2 x)]; x += mlp(norm3 x) (§1.6)."""

    def __init__(
        self,
        d: int,
        n_heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        has_time: bool = True,
        time_slots: int | None = None,
    ):
        super().__init__()
        self.norm1 = RMSNorm(d)
        self.space = SpaceAttention(d, n_heads, dropout)
        if has_time:
            self.norm2 = RMSNorm(d)
            self.time = TimeAttention(d, n_heads, dropout, time_slots)
        self.has_time = has_time
        self.norm3 = RMSNorm(d)
        self.mlp = MLP(d, mlp_ratio, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, space_mask):
        x = x + self.drop(self.space(self.norm1(x), space_mask))
        if self.has_time:
            x = x + self.drop(self.time(self.norm2(x)))
        return x + self.mlp(self.norm3(x))

    def forward_cached(self, x, space_mask, past):
        """Like forward for one new frame (B,1,S,D) given this layer's cached time keys/values."""
        x = x + self.drop(self.space(self.norm1(x), space_mask))
        kv = None
        if self.has_time:
            h, kv = self.time.forward_cached(self.norm2(x), past)
            x = x + self.drop(h)
        return x + self.mlp(self.norm3(x)), kv


def set_activation_checkpointing(module: nn.Module, on: bool) -> int:
    """Turn per-layer activation checkpointing of every Transformer inside `module` on or off.

    Memory: only each layer's (B,T,S,D) input is kept for backward instead of all its
    intermediate activations; cost: one extra forward of every layer. Same loss and gradients
    (dropout masks are replayed from the saved RNG state). Returns the number of Transformers set.
    """
    n = 0
    for m in module.modules():
        if isinstance(m, Transformer):
            m.checkpoint_layers = bool(on)
            n += 1
    return n


def has_time(i: int, time_every: int) -> bool:
    """Layer i has time attention iff (i + 1) % time_every == 0 (§1.6)."""
    return (i + 1) % time_every == 0


class Transformer(nn.Module):
    """`depth` layers sharing one (S,S) space mask; no final norm, no other parameters.

    modality: (S,) token modality ids of one frame; space_mode: name in SPACE_MASKS or a mask
    function; time_slots: number of leading slots with time attention (None = all slots).
    Buffers `modality` and `space_mask` are non-persistent.
    """

    def __init__(
        self,
        d: int,
        n_heads: int,
        depth: int,
        modality: torch.Tensor,
        space_mode: str | Callable,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        time_every: int = 1,
        time_slots: int | None = None,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            Layer(d, n_heads, mlp_ratio, dropout, has_time(i, time_every), time_slots) for i in range(depth)
        )
        self.register_buffer("modality", modality.long().clone(), persistent=False)
        self.register_buffer("space_mask", space_mask(modality, space_mode), persistent=False)
        self.checkpoint_layers = False  # activation checkpointing (set_activation_checkpointing)

    def forward(self, x):  # (B,T,S,D)
        ckpt = self.checkpoint_layers and torch.is_grad_enabled()
        for layer in self.layers:
            if ckpt:  # keep only each layer's input; recompute its activations in backward (same RNG)
                x = torch.utils.checkpoint.checkpoint(layer, x, self.space_mask, use_reentrant=False)
            else:
                x = layer(x, self.space_mask)
        return x

    def forward_cached(self, x, cache: list | None):
        """One new frame (B,1,S,D) after the frames whose per-layer time keys/values are in `cache`.

        cache: list (one entry per layer: (k, v) of the earlier frames, or None for layers without
        time attention / no earlier frame) or None. Returns (out (B,1,S,D), this frame's (k, v) per layer).
        """
        cache = cache or [None] * len(self.layers)
        new = []
        for layer, past in zip(self.layers, cache):
            x, kv = layer.forward_cached(x, self.space_mask, past)
            new.append(kv)
        return x, new


# ---------------------------------------------------------------------------------------------
# Sinusoidal positions (§1.7): added once to the input tokens; frame index restarts at 0 per call.


def sinusoid_table(n: int, d: int, device=None) -> torch.Tensor:
    """(n, d) fp32: angle = p * exp(-(2*floor(i/2)/d) * ln 10000); sin at even i, cos at odd i."""
    p = torch.arange(n, dtype=torch.float32, device=device)[:, None]
    k = torch.div(torch.arange(d, device=device), 2, rounding_mode="floor").float()
    angle = p * torch.exp(-(2.0 * k / max(1, d)) * math.log(10000.0))
    even = torch.arange(d, device=device) % 2 == 0
    return torch.where(even, torch.sin(angle), torch.cos(angle))


def add_positions(x: torch.Tensor, scale: bool, t0: int = 0) -> torch.Tensor:
    """x (B,T,S,D) + Table[t0 + t] + Table(S,D)[s], times 1/sqrt(D) if `scale` (scale_pos_embeds).

    t0 is the window-relative index of x's first frame (0 for a whole window; the KV-cached
    sampler passes the index of the frame it adds).
    """
    _, T, S, D = x.shape
    pos = sinusoid_table(t0 + T, D, x.device)[t0:, None, :] + sinusoid_table(S, D, x.device)[None, :, :]  # (T,S,D)
    if scale:
        pos = pos * (1.0 / math.sqrt(D))
    return x + pos.to(x.dtype)
