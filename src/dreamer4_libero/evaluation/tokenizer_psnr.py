"""Tokenizer reconstruction PSNR (evaluation.md §3) and the episode lists it scores.

Eval mode, MAE off, every frame of each episode encoded causally in non-overlapping chunks of the
run's training seq_len and decoded; per-frame PSNR with data range 1 at the model resolution
(ground truth = upright frames area-downsampled exactly as the loader does). Also:
`tok_psnr_masked_train_style` (masked patches only, with the run's training mask schedule; what
upstream's training log prints) and a per-episode mean-frame baseline on the same frames.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from ..data.loader import model_frames
from ..data.shards import ShardStore, parse_episode_id
from ..models.tokenizer import sample_mae_mask

PSNR_CAP = 100.0


MSE_FLOOR = 1e-10


def psnr_of_mse(mse) -> np.ndarray:
    """Elementwise 10 log10(1 / max(mse, 1e-10)); the floor caps PSNR at 100 dB (never +inf)."""
    return 10.0 * np.log10(1.0 / np.maximum(np.asarray(mse, dtype=np.float64), MSE_FLOOR))


def psnr(mse: float) -> float:
    """PSNR (data range 1) of one MSE, capped at 100 dB."""
    return float(psnr_of_mse(mse))


def rollout_episode_list(episodes: list[str], store: ShardStore, eps_per_task: int = 4, min_len: int = 32) -> list[str]:
    """evaluation.md §2: tasks sorted; per task the first `eps_per_task` demos in numeric order with T >= min_len."""
    by_task: dict[str, list[int]] = defaultdict(list)
    for e in episodes:
        t, k = parse_episode_id(e)
        if store.episodes[e].T >= min_len:
            by_task[t].append(k)
    return [f"{t}/demo_{k}" for t in sorted(by_task) for k in sorted(by_task[t])[:eps_per_task]]


def chunk_groups(T: int, chunk: int, batch: int) -> list[list[tuple[int, int]]]:
    """The causal chunks [s, e) of a T-frame episode, in order, grouped for batched passes: at most
    `batch` chunks of the same length per group (the full chunks, then the shorter last one alone)."""
    spans = [(s, min(s + chunk, T)) for s in range(0, T, chunk)]
    full = [sp for sp in spans if sp[1] - sp[0] == chunk]
    groups = [full[k : k + batch] for k in range(0, len(full), max(int(batch), 1))]
    return groups + [[sp] for sp in spans if sp[1] - sp[0] != chunk]


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def reconstruct(model, frames: torch.Tensor, chunk: int, batch: int = 1) -> torch.Tensor:
    """(T,3,H,W) in [0,1] (CPU) -> reconstruction (T,3,H,W) fp32 in [0,1] (CPU), causal chunks of
    `chunk` frames, up to `batch` chunks per pass on the model's device (under the caller's autocast)."""
    dev = _device(model)
    out = {}
    for group in chunk_groups(frames.shape[0], chunk, batch):
        x = torch.stack([frames[s:e] for s, e in group]).to(dev)  # (b,chunk,3,H,W)
        rec = model.decode(model.encode(x, mae=False)).float().clamp(0, 1).cpu()
        for j, (s, _) in enumerate(group):
            out[s] = rec[j]
    return torch.cat([out[s] for s in sorted(out)])


@torch.no_grad()
def masked_patch_sq_error(
    model, frames: torch.Tensor, chunk: int, generator: torch.Generator, batch: int = 1
) -> tuple[float, int]:
    """Sum of squared errors over masked patch features and their count, masks drawn with the
    run's training schedule (encoder MAE forced on). Each chunk's mask is drawn on the CPU from its
    own seed (the next draw of `generator`, in chunk order), so the masks do not depend on `batch`."""
    dev = _device(model)
    mae = model.encoder.mae
    n_patches = model.cfg.n_patches
    spans = [(s, min(s + chunk, frames.shape[0])) for s in range(0, frames.shape[0], chunk)]
    seeds = {s: int(torch.randint(0, 2**62, (1,), generator=generator)) for s, _ in spans}
    sse, n = {}, {}
    for group in chunk_groups(frames.shape[0], chunk, batch):
        masks = []
        for s, e in group:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seeds[s])
                masks.append(sample_mae_mask(1, e - s, n_patches, mae.p_min, mae.p_max)[0][0])  # (Tc,Np,1)
        x = torch.stack([frames[s:e] for s, e in group]).to(dev)
        out = model(x, mae=True, mask=torch.stack(masks).to(dev))
        m = out["mae_mask"].expand_as(out["target_patches"])
        d = (out["recon_patches"].float().clamp(0, 1) - out["target_patches"].float()) ** 2
        for j, (s, _) in enumerate(group):  # per chunk, as one chunk per pass sums it
            sse[s] = float(d[j][m[j]].sum())
            n[s] = int(m[j].sum())
    tot_sse, tot_n = 0.0, 0
    for s, _ in spans:  # chunk order: the same float sum whatever the batching
        tot_sse, tot_n = tot_sse + sse[s], tot_n + n[s]
    return tot_sse, tot_n


def evaluate_tokenizer(
    model,
    store: ShardStore,
    sets: dict[str, list[str]],
    *,
    resolution: int,
    chunk: int,
    seed: int = 0,
    progress=None,
    batch: int = 1,
) -> dict:
    """Per set: tok_psnr_frame_mean (headline), tok_psnr_pooled, per-suite means, masked train-style
    PSNR, and the per-episode mean-frame baseline on the same frames. The model runs on its own
    device, `batch` chunks per pass, under the caller's autocast; the metrics are computed on the CPU."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    res = {}
    for name, eps in sets.items():
        frame_psnr, frame_mse, base_psnr, base_mse = [], [], [], []
        suite_psnr: dict[str, list[float]] = defaultdict(list)
        sse_m, n_m = 0.0, 0
        for e in eps:
            raw, _ = store.episode(e)
            x = torch.from_numpy(model_frames(raw, resolution))  # (T,3,r,r)
            rec = reconstruct(model, x, chunk, batch)
            mse = ((rec - x) ** 2).flatten(1).mean(1).double().numpy()
            bmse = ((x.mean(0, keepdim=True) - x) ** 2).flatten(1).mean(1).double().numpy()
            frame_mse += mse.tolist()
            base_mse += bmse.tolist()
            p = [psnr(v) for v in mse]
            frame_psnr += p
            base_psnr += [psnr(v) for v in bmse]
            suite_psnr[e.split("/", 1)[0]] += p
            s, n = masked_patch_sq_error(model, x, chunk, gen, batch)
            sse_m, n_m = sse_m + s, n_m + n
            if progress is not None:
                progress.update()
        res[name] = {
            "n_episodes": len(eps),
            "n_frames": len(frame_psnr),
            "tok_psnr_frame_mean": float(np.mean(frame_psnr)),
            "tok_psnr_pooled": psnr(np.mean(frame_mse)),
            "tok_psnr_per_suite": {k: float(np.mean(v)) for k, v in sorted(suite_psnr.items())},
            "tok_psnr_masked_train_style": psnr(sse_m / n_m) if n_m else None,
            "n_capped_frames": int(sum(v >= PSNR_CAP for v in frame_psnr)),
            "mean_frame_baseline_psnr_frame_mean": float(np.mean(base_psnr)),
            "mean_frame_baseline_psnr_pooled": psnr(np.mean(base_mse)),
            "mse": float(np.mean(frame_mse)),
        }
        res[name]["gain_over_mean_frame_db"] = (
            res[name]["tok_psnr_frame_mean"] - res[name]["mean_frame_baseline_psnr_frame_mean"]
        )
    return res


def strip_frames(model, store: ShardStore, episode: str, resolution: int, chunk: int, n: int = 8, batch: int = 1):
    """(originals, reconstructions) as uint8 (n, r, r, 3) for a picture."""
    raw, _ = store.episode(episode)
    x = torch.from_numpy(model_frames(raw, resolution))
    rec = reconstruct(model, x, chunk, batch)
    idx = np.linspace(0, len(x) - 1, n).astype(int)
    to8 = lambda t: (t[idx].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # noqa: E731
    return to8(x), to8(rec)
