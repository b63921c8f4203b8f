"""LPIPS(alex, v0.1) as a small frozen torch module (no ``lpips`` / torchvision import).

The network, per ``spec/lpips_offline.md``: images in [-1, 1] are shifted by (-0.030, -0.088,
-0.188) and divided by (0.458, 0.448, 0.450) per RGB channel, then go through the five AlexNet
feature convolutions

    conv 11x11/4 pad 2 -> ReLU (tap 1) -> maxpool 3/2 -> conv 5x5 pad 2 -> ReLU (tap 2) -> maxpool 3/2
    -> conv 3x3 pad 1 -> ReLU (tap 3) -> conv 3x3 pad 1 -> ReLU (tap 4) -> conv 3x3 pad 1 -> ReLU (tap 5).

At each tap the feature vector of every spatial position is divided by its channel L2 norm (+1e-10),
the two images' normalised features are subtracted and squared, a 1x1 linear head without bias
weighs the channels, and the result is averaged over space; the five taps are summed.

Usage (the tokenizer loss, ``spec/dreamer4_model.md`` §2.5)::

    lpips = LPIPS.from_cache()                      # fetches/converts the weights once per machine
    lpips = LPIPS.from_asset(dir)                   # in a job: weights made beforehand, no download
    d = lpips(recon.clamp(0, 1), target)            # images in [0, 1], (N, 3, H, W) -> (N,)

Inputs are taken in **[0, 1]** and mapped to [-1, 1] inside ``forward`` (the caller clamps; clamping
here would cut gradients).  The module is always in eval mode, all parameters are frozen, and the
computation runs in float32 with autocast disabled whatever the caller's dtype or autocast state.
The smallest usable input is 31x31 (a 32x32 frame gives 7x7 at tap 1 and 1x1 from tap 3 on).

Keep the module outside any model whose ``state_dict`` is checkpointed and record
``network``, ``version``, ``weights_sha256`` (and the input resolution) in the run's record instead.
"""

from __future__ import annotations

import os
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from dreamer4_libero.assets.lpips_files import NETWORK, VERSION
from dreamer4_libero.assets.lpips_weights import (
    ALEX_CONVS,
    TAP_CHANNELS,
    ensure_lpips_weights,
    load_state_dict,
    read_sidecar,
    state_dict_sha256,
)

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10
MIN_SIZE = 31
_STRIDES = (4, 1, 1, 1, 1)
_PADS = (2, 2, 1, 1, 1)


def autocast_off(device: torch.device):
    """A region without autocast on ``device`` (the meta device, used for FLOP / memory counting, has none)."""
    return torch.autocast(device_type=device.type if device.type in ("cuda", "cpu") else "cpu", enabled=False)


class LPIPS(nn.Module):
    """Frozen LPIPS(alex, v0.1) distance between two batches of [0, 1] images."""

    network: str = NETWORK
    version: str = VERSION

    def __init__(self, state_dict: Mapping[str, torch.Tensor]):
        super().__init__()
        self.features = nn.ModuleList(
            nn.Conv2d(cin, cout, k, stride=s, padding=p) for (cout, cin, k), s, p in zip(ALEX_CONVS, _STRIDES, _PADS)
        )
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in TAP_CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.load_state_dict(dict(state_dict), strict=True)
        for p in self.parameters():
            p.requires_grad_(False)
        self.weights_sha256: str = state_dict_sha256(self.state_dict())
        self.weights_path: str | None = None
        super().train(False)

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_file(cls, path: str | os.PathLike, expected_file_sha256: str | None = None) -> "LPIPS":
        """Load a converted state dict; with ``expected_file_sha256`` the file is verified first."""
        m = cls(load_state_dict(path, expected_file_sha256))
        m.weights_path = str(path)
        return m

    @classmethod
    def from_cache(cls, cache_dir: str | os.PathLike | None = None, **ensure_kwargs) -> "LPIPS":
        """Build from the cached converted weights (fetching and converting them on first use)."""
        path = ensure_lpips_weights(cache_dir, **ensure_kwargs)
        return cls.from_file(path, read_sidecar(path)["file_sha256"])

    @classmethod
    def from_asset(cls, asset_dir: str | os.PathLike | None = None, lpips_weight: float | None = None) -> "LPIPS":
        """Build from weights already materialised in ``asset_dir`` (what jobs use: never downloads).

        Raises ``lpips_asset.LpipsAssetMissing`` naming the missing file and how to make it."""
        from dreamer4_libero.assets.lpips_asset import require_lpips_weights

        path = require_lpips_weights(asset_dir, lpips_weight=lpips_weight)
        return cls.from_file(path, read_sidecar(path)["file_sha256"])

    def describe(self) -> dict:
        """What to record in a checkpoint / run record (add the resolution LPIPS ran at)."""
        return {"network": self.network, "version": self.version, "weights_sha256": self.weights_sha256}

    # ----------------------------------------------------------------- always frozen, always eval

    def train(self, mode: bool = True) -> "LPIPS":
        """No-op: LPIPS is a fixed metric and stays in eval mode."""
        return super().train(False)

    # ----------------------------------------------------------------- computation

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, conv in enumerate(self.features):
            if i in (1, 2):
                x = F.max_pool2d(x, kernel_size=3, stride=2)
            w = conv.weight.float()
            b = conv.bias.float() if conv.bias is not None else None
            x = F.relu(F.conv2d(x, w, b, stride=conv.stride, padding=conv.padding))
            taps.append(x)
        return taps

    @staticmethod
    def _unit(f: torch.Tensor) -> torch.Tensor:
        # vector_norm's backward is 0 (not NaN) where a position's features are all zero.
        return f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + EPS)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """LPIPS distance per image.

        Args:
            x, y: images in [0, 1], shape (N, 3, H, W), H and W >= 31; any float dtype (cast to fp32).
        Returns:
            (N,) float32 distances; differentiable w.r.t. ``x`` and ``y``.
        """
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS expects two (N, 3, H, W) batches of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if min(x.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"LPIPS(alex) needs H, W >= {MIN_SIZE}, got {tuple(x.shape[-2:])}")
        with autocast_off(x.device):
            shift = self.shift.float()
            scale = self.scale.float()
            # Two separate passes (not one concatenated batch) so that LPIPS(x, x) is exactly 0.
            fx = self._taps(((x.float() * 2 - 1) - shift) / scale)
            fy = self._taps(((y.float() * 2 - 1) - shift) / scale)
            total = x.new_zeros(x.shape[0], dtype=torch.float32)
            for a, b, lin in zip(fx, fy, self.lins):
                d = (self._unit(a) - self._unit(b)) ** 2
                total = total + F.conv2d(d, lin.weight.float()).mean(dim=(1, 2, 3))
        return total
