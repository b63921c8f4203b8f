#!/usr/bin/env python
"""Tokenizer evaluation throughput (rule tokenizer_eval's network work): frames/s and achieved TFLOP/s.

Per frame, tokenizer_eval runs encode + decode (MAE off) and the MAE-masked forward
(evaluation/tokenizer_psnr.py); both are timed here on random frames with a randomly initialised
tokenizer of the demo and the paper config, ``batch`` causal chunks per pass, under the run's autocast
(``auto``: bf16 on CUDA, fp32 on CPU). FLOPs are the counted ones (evaluation/cost.py), so achieved
TFLOP/s = counted FLOPs x frames/s. The paper tokenizer runs on CPU with chunks of 4 frames (FLOPs per
frame differ from seq_len 16's by the time attention only: < 0.1 %) to keep the bench short.
"""

from __future__ import annotations

import time

import torch

from dreamer4_libero.config import demo_config, load_config
from dreamer4_libero.evaluation.cost import ASSUMED_GPU_TFLOPS, tokenizer_flops_per_frame
from dreamer4_libero.evaluation.runtime import eval_autocast, precision_name
from dreamer4_libero.evaluation.tokenizer_psnr import masked_patch_sq_error, reconstruct
from dreamer4_libero.models.tokenizer import Tokenizer
from dreamer4_libero.training.tokenizer_task import tokenizer_model_config

PAPER_EVAL_FRAMES = 179_000  # val (1,040 demos) + the test_ood rollout list (104 demos) of full LIBERO


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def eval_case(name: str, cfg: dict, device: str, chunk: int, n_chunks: int, batch: int) -> dict:
    tok_cfg, res = cfg["tokenizer"], cfg["data"]["model_resolution"]
    torch.manual_seed(0)
    model = Tokenizer(tokenizer_model_config(tok_cfg, res)).to(device).eval()
    frames = torch.rand(chunk * n_chunks, 3, res, res)
    dev = torch.device(device)
    times = []
    with eval_autocast(dev, "auto"):
        for _ in range(2):  # the second round is timed (warm-up: allocator, kernels)
            _sync(device)
            t0 = time.perf_counter()
            reconstruct(model, frames, chunk, batch)
            masked_patch_sq_error(model, frames, chunk, torch.Generator().manual_seed(0), batch)
            _sync(device)
            times.append(time.perf_counter() - t0)
    fl = tokenizer_flops_per_frame(tok_cfg, res, chunk)["tokenizer_eval"]
    fps = len(frames) / times[-1]
    return {
        "case": name,
        "device": device,
        "precision": precision_name(dev, "auto"),
        "resolution": res,
        "chunk": chunk,
        "batch": batch,
        "frames": len(frames),
        "frames_per_s": fps,
        "gflop_per_frame": fl / 1e9,
        "achieved_tflops": fl * fps / 1e12,
        "paper_eval_hours_at_this_rate": PAPER_EVAL_FRAMES * fl / (fl * fps) / 3600 if name.endswith("paper") else None,
    }


def run_all(device: str, log=print) -> dict:
    paper_chunk = 4 if device == "cpu" else 16
    rows = [
        eval_case("tokenizer_eval_demo", demo_config(), device, 2, 16, 16),
        eval_case("tokenizer_eval_paper", load_config(), device, paper_chunk, 2, 2),
    ]
    for r in rows:
        log(
            f"  eval {r['case']:22s} {r['device']} ({r['precision']}): {r['frames_per_s']:8.2f} frames/s, "
            f"{r['gflop_per_frame']:.3g} GFLOP/frame, {r['achieved_tflops']:.3g} TFLOP/s"
        )
    fl = rows[1]["gflop_per_frame"] * 1e9
    return {
        "rows": rows,
        "paper_frames": PAPER_EVAL_FRAMES,
        "paper_pflop": PAPER_EVAL_FRAMES * fl / 1e15,
        "assumed_gpu_tflops": ASSUMED_GPU_TFLOPS,
        "paper_minutes_at_assumed_gpu": PAPER_EVAL_FRAMES * fl / (ASSUMED_GPU_TFLOPS * 1e12) / 60,
    }
