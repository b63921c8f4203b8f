"""Counted forward FLOPs of the evaluation networks, and the job size they imply.

The evaluation jobs are sized from these counts (config.yaml comments, docs/slurm.md "Evaluation jobs"):

* ``tokenizer_eval`` (evaluation.md §3) passes every frame of its episodes through the tokenizer twice:
  encode + decode with MAE off (the reconstruction PSNR) and once more with the training-style MAE mask
  (``tok_psnr_masked_train_style``): 2 x (encode + decode) per frame.
* ``probe_baselines``' ``tok_latent`` encodes the probe windows (encoder only).
* ``probe`` / ``rollout_eval`` run the world model; its forward per frame is counted the same way.

Counting is done like ``training/perf.py``: ``torch.utils.flop_counter.FlopCounterMode`` over a real
forward on the **meta** device (shapes only: free, and SDPA's attention FLOPs are counted, which the
fused CPU kernel would hide). Matmuls and attention count 2 FLOPs per multiply-add; elementwise ops are
not counted. Per frame = the count of one causal chunk of ``chunk`` frames / ``chunk``.

Runtime = FLOPs / an *effective* throughput. ``ASSUMED_GPU_TFLOPS`` is an assumption, not a measurement
(no GPU on the machine that wrote it): 40 TFLOP/s, i.e. 13 % of an A100's and 4 % of an H100's dense bf16
peak, because a d_model-256 transformer with per-frame attention over 1,040 tokens and batches fed from the
CPU (shard reads, area-downsampling) stays far from peak. CPU throughput is measured (``make bench``,
section ``eval``: bench/results/bench.json).
"""

from __future__ import annotations

import torch

from ..models.tokenizer import Tokenizer
from ..training.tokenizer_task import tokenizer_model_config

#: effective bf16 FLOP/s assumed for one GPU running the evaluation networks (see the module docstring)
ASSUMED_GPU_TFLOPS = 40.0


def _count(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def tokenizer_flops_per_frame(tok_cfg: dict, resolution: int, chunk: int) -> dict:
    """Counted forward FLOPs per frame of the tokenizer of config section ``tok_cfg`` at ``resolution``,
    on causal chunks of ``chunk`` frames: ``encode``, ``decode``, ``encode_decode`` (one reconstruction),
    ``masked_pass`` (the MAE-masked forward of the train-style PSNR) and ``tokenizer_eval`` (both passes:
    what rule tokenizer_eval spends per frame)."""
    mcfg = tokenizer_model_config(tok_cfg, resolution)
    with torch.device("meta"):
        model = Tokenizer(mcfg).eval()
        x = torch.rand(1, chunk, 3, resolution, resolution)
        z = torch.rand(1, chunk, mcfg.n_latents, mcfg.d_bottleneck)
        mask = torch.zeros(1, chunk, mcfg.n_patches, 1, dtype=torch.bool)
    enc = _count(lambda: model.encode(x, mae=False)) / chunk
    dec = _count(lambda: model.decode(z)) / chunk
    masked = _count(lambda: model(x, mae=True, mask=mask)) / chunk
    return {
        "encode": enc,
        "decode": dec,
        "encode_decode": enc + dec,
        "masked_pass": masked,
        "tokenizer_eval": enc + dec + masked,
        "tokens_per_frame": mcfg.n_latents + mcfg.n_patches,
        "params": sum(p.numel() for p in model.parameters()),
    }


def tokenizer_fwd_formula(
    d_model: int,
    depth: int,
    mlp_ratio: float,
    n_latents: int,
    n_patches: int,
    patch_dim: int,
    d_bottleneck: int,
    T: int,
    time_every: int = 1,
) -> dict:
    """Hand count of one encode and one decode per frame, for checking the counter (training/perf.py's
    closed form per transformer, plus the projections): S = latents + patches tokens per frame, D = width,
    L = depth (every ``time_every``-th layer has time attention over the latents), m = mlp_ratio.

        transformer = S*L*2*(4 + 3m)*D^2 + L*4*S^2*D                 (space attention qkv/out + SwiGLU, q k^T, p v)
                    + n_latents*L_t*2*4*D^2 + L_t*4*n_latents*T*D    (time attention on the latents, per frame)
        encode      = transformer + n_patches*2*patch_dim*D + n_latents*2*D*d_bottleneck
        decode      = transformer + n_latents*2*d_bottleneck*D + n_patches*2*D*patch_dim
    """
    S, D, L = n_latents + n_patches, d_model, depth
    Lt = sum((i + 1) % time_every == 0 for i in range(depth))  # models/blocks.has_time
    tr = (
        S * L * 2 * (4 + 3 * mlp_ratio) * D * D
        + L * 4 * S * S * D
        + n_latents * Lt * 2 * 4 * D * D
        + Lt * 4 * n_latents * T * D
    )
    enc = tr + n_patches * 2 * patch_dim * D + n_latents * 2 * D * d_bottleneck
    dec = tr + n_latents * 2 * d_bottleneck * D + n_patches * 2 * D * patch_dim
    return {"encode": enc, "decode": dec}


def probe_tok_latent_frames(n_episodes: int, mean_len: float) -> float:
    """Upper bound of the frames ``probe_baselines``' tok_latent encodes: each probe episode, in both probe
    modes (policy, idm), in the video_only windows of C frames at stride C/2 (features.window_plan): every
    frame about twice per mode."""
    return 2 * 2 * n_episodes * mean_len


def job_minutes(total_flops: float, tflops: float = ASSUMED_GPU_TFLOPS) -> float:
    """Minutes of pure network time for ``total_flops`` at ``tflops`` effective TFLOP/s."""
    return total_flops / (tflops * 1e12) / 60.0


def activation_bytes_estimate(tokens: int, d_model: int, mlp_ratio: float, bytes_per: int = 2) -> int:
    """Peak transient activation memory of one no-grad transformer layer over ``tokens`` tokens: the
    residual stream, qkv, attention output and the SwiGLU hidden pair (fused attention: no S x S)."""
    return int(tokens * d_model * bytes_per * (1 + 3 + 1 + 2 * mlp_ratio + 1))
