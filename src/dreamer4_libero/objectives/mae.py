"""Tokenizer (masked-autoencoder) loss, dreamer4_model.md §2.4-2.5. Pure functions of tensors.

loss = MSE over the *masked* patches only + lpips_weight * LPIPS(composite, target), where the
composite image is the prediction at masked patches and the ground truth at visible ones, on every
int(1/lpips_frac)-th frame. The LPIPS network is passed in as a callable (models/lpips.py).

Ours (issue 27, off by default): `visible_weight` w > 0 adds w * MSE over the *visible* patches, so the
decoder is also trained to reconstruct what the encoder saw (upstream trains it on masked patches only,
so a visible patch is learnt only through the times it is masked). The demo uses w = 1.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..models.lpips import autocast_off
from ..models.tokenizer import patchify, sample_mae_mask, unpatchify

__all__ = ["sample_mae_mask", "masked_mse", "composite", "lpips_term", "psnr", "tokenizer_loss"]


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """fp32 MSE over masked patches: pred/target (B,T,Np,Dp), mask (B,T,Np,1) bool, True = masked.

    sum over masked patches and all Dp features of (pred - target)^2 / (max(n_masked, 1) * Dp);
    visible patches contribute nothing (0 when nothing is masked).
    """
    m = mask.to(torch.float32)
    se = ((pred.float() - target.float()).pow(2) * m).sum()
    return se / (m.sum().clamp_min(1.0) * pred.shape[-1])


def composite(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Prediction at masked patches, ground truth at visible ones (patch tensors (B,T,Np,Dp))."""
    return torch.where(mask, pred, target)


def lpips_term(
    recon_frames: torch.Tensor, target_frames: torch.Tensor, lpips_fn: Callable, lpips_frac: float = 0.5
) -> torch.Tensor:
    """Mean LPIPS over frames 0, s, 2s, ... (s = int(1/lpips_frac)) of (B,T,C,H,W) images in [0,1].

    Images are clamped to [0,1] and compared in fp32 with autocast off. lpips_fn(x, y) takes
    (N,C,H,W) images in **[0,1]** and maps them to [-1,1] itself (as models/lpips.LPIPS does, and
    the `lpips` package with normalize=True); it returns one distance per image.
    """
    stride = max(1, int(1.0 / lpips_frac))
    x, y = recon_frames[:, ::stride], target_frames[:, ::stride]
    x = x.reshape(-1, *x.shape[2:]).float().clamp(0, 1)  # (B*T',C,H,W)
    y = y.reshape(-1, *y.shape[2:]).float().clamp(0, 1)
    with autocast_off(x.device):
        return lpips_fn(x, y).float().mean()


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """10 log10(1 / mse) for images in [0,1]."""
    return 10.0 * torch.log10(1.0 / mse.detach().float().clamp_min(1e-10))


def tokenizer_loss(
    recon: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    lpips_fn: Callable | None = None,
    lpips_weight: float = 0.2,
    lpips_frac: float = 0.5,
    patch: int | None = None,
    keep_prob: torch.Tensor | None = None,
    visible_weight: float = 0.0,
):
    """Tokenizer training loss (§2.5).

    recon, target: frames (B,T,C,H,W) (recon = decoder output, target = input in [0,1]);
    mask: MAE mask (B,T,Np,1) bool, True = masked; patch: patch size (default: inferred from Np);
    lpips_fn: callable (x, y) -> per-image distance for images in [0,1] (it maps to [-1,1]
    itself, like models/lpips.LPIPS); None = no LPIPS term;
    visible_weight: weight of the MSE over visible patches (0 = upstream: none; `mse_visible` is logged).
    Returns (loss, metrics); metrics are detached 0-dim tensors: loss, mse (masked patches),
    mse_all (all patches), lpips, psnr (from the masked mse), masked_frac, keep_prob (if given).
    """
    B, T, C, H, W = target.shape
    if patch is None:
        patch = math.isqrt(H * W // mask.shape[2])
    pred_p, tgt_p = patchify(recon, patch), patchify(target, patch)  # (B,T,Np,Dp)
    mse = masked_mse(pred_p, tgt_p, mask)
    if lpips_fn is not None and lpips_weight != 0 and lpips_frac > 0:
        comp = unpatchify(composite(pred_p, tgt_p, mask), patch, H, W)  # (B,T,C,H,W)
        lp = lpips_term(comp, target, lpips_fn, lpips_frac)
    else:
        lp = torch.zeros((), device=recon.device)
    vis = masked_mse(pred_p, tgt_p, ~mask)  # MSE over the visible patches
    loss = mse + lpips_weight * lp
    if visible_weight:
        loss = loss + visible_weight * vis
    metrics = {
        "loss": loss.detach(),
        "mse": mse.detach(),
        "lpips": lp.detach(),
        "psnr": psnr(mse),
        "mse_visible": vis.detach(),
        "mse_all": (recon.detach().float() - target.float()).pow(2).mean(),
        "masked_frac": mask.float().mean(),
    }
    if keep_prob is not None:
        metrics["keep_prob"] = keep_prob.detach().float().mean()
    return loss, metrics
