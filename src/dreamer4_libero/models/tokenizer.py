"""Causal video tokenizer: frames -> tanh latents z -> frames (dreamer4_model.md §2).

Encoder: patchify, project, MAE-mask (training), prepend learned latent tokens, transformer with
`encoder` space mask and causal time attention on the latents, bottleneck the latents with tanh.
Decoder: lift z, append learned patch queries, transformer with `decoder` space mask, sigmoid
patch head, unpatchify. Key names and shapes are those of upstream (§7.1): a state dict of the
author's code loads here with strict=True and vice versa.

Deviation from upstream (§11.7): the MAE masking is off in eval mode unless asked for
(`mae=True`); upstream masks whenever mae_p_max > 0, whatever the mode.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import IMAGE, LATENT, Transformer, add_positions


@dataclass
class TokenizerConfig:
    """Architecture + MAE settings; defaults = train_tokenizer.py defaults (§6.1)."""

    H: int = 128
    W: int = 128
    C: int = 3
    patch: int = 4
    d_model: int = 256
    n_heads: int = 4
    depth: int = 8  # encoder and decoder each
    n_latents: int = 16
    d_bottleneck: int = 32
    dropout: float = 0.05
    mlp_ratio: float = 4.0
    time_every: int = 1
    mae_p_min: float = 0.0
    mae_p_max: float = 0.9
    scale_pos_embeds: bool = False  # training CLI default; checkpoints without the key: True (§1.7)

    @property
    def n_patches(self) -> int:
        return (self.H // self.patch) * (self.W // self.patch)

    @property
    def patch_dim(self) -> int:
        return self.C * self.patch * self.patch

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Patchify (§2.1): row-major patches, features ordered (channel, in-patch row, in-patch col).


def patchify(frames: torch.Tensor, patch: int) -> torch.Tensor:
    """(B,T,C,H,W) -> (B,T,Np,C*p*p)."""
    B, T, C, H, W = frames.shape
    x = F.unfold(frames.reshape(B * T, C, H, W), kernel_size=patch, stride=patch)  # (BT,Dp,Np)
    return x.transpose(1, 2).reshape(B, T, -1, C * patch * patch)


def unpatchify(patches: torch.Tensor, patch: int, H: int, W: int) -> torch.Tensor:
    """(B,T,Np,C*p*p) -> (B,T,C,H,W); exact inverse of patchify."""
    B, T, Np, Dp = patches.shape
    x = F.fold(
        patches.reshape(B * T, Np, Dp).transpose(1, 2), output_size=(H, W), kernel_size=patch, stride=patch
    )  # (BT,C,H,W)
    return x.view(B, T, -1, H, W)


def sample_mae_mask(
    B: int, T: int, n_patches: int, p_min: float, p_max: float, device=None, generator: torch.Generator | None = None
):
    """MAE mask of §2.4: per frame p ~ U(p_min, p_max), each patch kept with prob 1 - p.

    Returns (mask (B,T,Np,1) bool, True = masked; keep_prob (B,T,1)). RNG order as upstream:
    uniform_ (B,T), then rand (B,T,Np).
    """
    p = torch.empty(B, T, device=device).uniform_(p_min, p_max, generator=generator)
    keep_prob = 1.0 - p
    keep = torch.rand(B, T, n_patches, device=device, generator=generator) < keep_prob[..., None]
    return ~keep[..., None], keep_prob[..., None]


class MAE(nn.Module):
    """Replaces dropped patch tokens by a learned `mask_token`."""

    def __init__(self, d: int, p_min: float, p_max: float):
        super().__init__()
        self.p_min, self.p_max = p_min, p_max
        self.mask_token = nn.Parameter(torch.randn(d) * 0.02)

    def forward(self, x, enabled: bool = True, mask: torch.Tensor | None = None):  # x (B,T,Np,D)
        """mask (B,T,Np,1) bool, given: use it instead of drawing one (evaluation draws its masks per
        chunk and batches the chunks); keep_prob is then the kept fraction per frame."""
        B, T, Np, _ = x.shape
        if enabled and mask is not None:
            keep_prob = 1.0 - mask.to(x.dtype).mean(2)  # (B,T,1)
            return torch.where(mask, self.mask_token.to(x.dtype), x), mask, keep_prob
        if not enabled or (self.p_min == 0 and self.p_max == 0):  # no RNG draws
            return (
                x,
                torch.zeros(B, T, Np, 1, dtype=torch.bool, device=x.device),
                torch.ones(B, T, 1, device=x.device),
            )
        mask, keep_prob = sample_mae_mask(B, T, Np, self.p_min, self.p_max, x.device)
        return torch.where(mask, self.mask_token.to(x.dtype), x), mask, keep_prob


class Encoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        D, L = cfg.d_model, cfg.n_latents
        self.latents = nn.Parameter(torch.randn(L, D) * 0.02)
        self.patch_proj = nn.Linear(cfg.patch_dim, D)
        self.bottleneck_proj = nn.Linear(D, cfg.d_bottleneck)
        modality = torch.tensor([LATENT] * L + [IMAGE] * cfg.n_patches)
        self.transformer = Transformer(
            D, cfg.n_heads, cfg.depth, modality, "encoder", cfg.mlp_ratio, cfg.dropout, cfg.time_every, time_slots=L
        )
        self.mae = MAE(D, cfg.mae_p_min, cfg.mae_p_max)

    def forward(self, patches, mae: bool | None = None, mask: torch.Tensor | None = None):
        """patches (B,T,Np,Dp) -> z (B,T,L,d_bottleneck), mae_mask (B,T,Np,1), keep_prob (B,T,1).

        mae: None = mask only in training mode; True/False forces it on/off. mask: a given MAE mask.
        """
        B, T = patches.shape[:2]
        x = self.patch_proj(patches)  # (B,T,Np,D)
        x, mask, keep_prob = self.mae(x, self.training if mae is None else mae, mask)
        lat = self.latents.to(x.dtype).expand(B, T, -1, -1)  # (B,T,L,D)
        x = add_positions(torch.cat([lat, x], dim=2), self.cfg.scale_pos_embeds)  # (B,T,L+Np,D)
        x = self.transformer(x)
        z = torch.tanh(self.bottleneck_proj(x[:, :, : self.cfg.n_latents]))  # (B,T,L,Db)
        return z, mask, keep_prob


class Decoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        D, L = cfg.d_model, cfg.n_latents
        self.patch_queries = nn.Parameter(torch.randn(cfg.n_patches, D) * 0.02)
        self.up_proj = nn.Linear(cfg.d_bottleneck, D)
        self.patch_head = nn.Linear(D, cfg.patch_dim)
        modality = torch.tensor([LATENT] * L + [IMAGE] * cfg.n_patches)
        self.transformer = Transformer(
            D, cfg.n_heads, cfg.depth, modality, "decoder", cfg.mlp_ratio, cfg.dropout, cfg.time_every, time_slots=L
        )

    def forward(self, z):
        """z (B,T,L,d_bottleneck) -> patches (B,T,Np,Dp) in (0,1)."""
        B, T = z.shape[:2]
        lat = torch.tanh(self.up_proj(z))  # (B,T,L,D)
        q = self.patch_queries.to(lat.dtype).expand(B, T, -1, -1)  # (B,T,Np,D)
        x = add_positions(torch.cat([lat, q], dim=2), self.cfg.scale_pos_embeds)
        x = self.transformer(x)
        return torch.sigmoid(self.patch_head(x[:, :, self.cfg.n_latents :]))  # (B,T,Np,Dp)


class Tokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or TokenizerConfig()
        assert cfg.H % cfg.patch == 0 and cfg.W % cfg.patch == 0, "image size must be a multiple of patch"
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def patchify(self, frames):
        return patchify(frames, self.cfg.patch)

    def unpatchify(self, patches):
        return unpatchify(patches, self.cfg.patch, self.cfg.H, self.cfg.W)

    def encode(self, frames, mae: bool | None = False):
        """frames (B,T,C,H,W) in [0,1] -> z (B,T,L,Db). No MAE unless mae=True/None(train mode)."""
        return self.encoder(self.patchify(frames), mae)[0]

    def decode(self, z):
        """z (B,T,L,Db) -> frames (B,T,C,H,W) in (0,1)."""
        return self.unpatchify(self.decoder(z))

    def forward(self, frames, mae: bool | None = None, mask: torch.Tensor | None = None) -> dict:
        """Full pass for the loss. mae: None = MAE in training mode only; True/False forces it.
        mask (B,T,Np,1) bool: with MAE on, this mask instead of a random one.

        Returns dict: recon (B,T,C,H,W), recon_patches / target_patches (B,T,Np,Dp),
        mae_mask (B,T,Np,1) bool (True = masked), keep_prob (B,T,1), z (B,T,L,Db).
        """
        target = self.patchify(frames)
        z, mask, keep_prob = self.encoder(target, mae, mask)
        pred = self.decoder(z)
        return {
            "recon": self.unpatchify(pred),
            "recon_patches": pred,
            "target_patches": target,
            "mae_mask": mask,
            "keep_prob": keep_prob,
            "z": z,
        }
