"""World-model evaluation windows: the 8 -> 24 rollout PSNR protocol (evaluation.md §2) and one-step metrics.

A window of an episode: frames o_s .. o_{s+L-1} (L = context + horizon = 32) at the model
resolution, action tokens exactly as in training (block 0 null, block j = raw actions[s+j],
evaluation.md §0/§2). Protocol (`evaluate_rollouts`):

- window list (`rollout_windows`): tasks sorted; per task the first `eps_per_task` demos in numeric
  order with T >= L; starts 0, 40, 80, ... with s + L - 1 <= T - 1, at most 2 per episode. Window
  id = "<episode>@<start>", stable under any capping of the list;
- the frozen tokenizer encodes the context o_s..o_{s+7} in one causal call (no MAE); the dynamics
  model generates latents of o_{s+8}..o_{s+31} with the shortcut sampler (K = 1/d Euler steps, the
  KV cache), each generated frame fed back as clean context; the 32 latents of a window are decoded
  in ONE decoder call, clamped to [0, 1], never quantised;
- initial noise of generated frame u (u = window frame index 8..31) is drawn on the CPU from a
  torch.Generator seeded by sha256(rollout_seed | window id | u): every row (true, shuffled and
  null actions) and every variant gets the same noise (common random numbers);
- rows: `model` (true actions), `action_shuffled` (blocks 1..31 carry the actions and masks of the
  paired window pi(w), a derangement across tasks, `shuffle_pairing`), `null_actions` (every
  block the null token: zero action, zero mask), `copy_last_context` (every prediction = o_{s+7}),
  `tokenizer_ceiling` (all 32 ground-truth frames encoded in one call and decoded in one call;
  the last 24 scored), `tokenizer_ceiling_chunked` (the same frames encoded and decoded in
  independent chunks of `ceiling_chunk` frames, the tokenizer's training seq_len; issue 27);
- the context and the generated latents are encoded / decoded in chunks of `tokenizer_chunk`
  frames (the run's `tokenizer_chunk`, models/tokenizer_chunks.py; None = one call each, as
  published);
- metrics per row (`row_metrics`): per (window, step) MSE over H x W x 3 in float64, PSNR =
  10 log10(1 / max(MSE, 1e-10)) (cap 100 dB, capped frames counted), psnr_frame_mean (headline),
  psnr_pooled, psnr_pooled_h16, per-step and per-task means, episode-cluster bootstrap CI
  (`bootstrap.resample_counts`; one count matrix per set, shared by all rows, so differences
  between rows are paired);
- paired deltas model − action_shuffled / copy_last_context / null_actions over the whole horizon,
  and model − copy_last_context / action_shuffled per bin of predicted frames (`horizon_bins`:
  thirds, frames 1-8, 9-16, 17-24 at horizon 24), all from the same count matrix (`binned_delta`).

Several windows (and the three model rows of a window) run as one batch; batching changes results
only at float round-off.

`evaluate_windows` (used by the dynamics quality test) keeps the older quick metrics: one-step
latent MSE against copying the last latent, and a rollout PSNR with noise seeded by (seed, window
index).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict

import numpy as np
import torch

from ..data.loader import model_frames, window_actions
from ..data.shards import ShardStore, parse_episode_id
from ..fileio import sha256_file, write_json
from ..models.dynamics import pack_latents, unpack_latents
from ..models.sampling import rollout
from ..models.tokenizer_chunks import decode_chunked, encode_chunked
from .bootstrap import mean_replicates, percentile_ci, resample_counts
from .horizon_bins import horizon_bins
from .tokenizer_psnr import PSNR_CAP, psnr, psnr_of_mse, rollout_episode_list

PROTOCOL = "eval-protocol-v1"
NULL_ACTION = "zero action, zero mask (as block 0 of every training window)"
NOISE_RULE = (
    "initial noise of generated frame u (window frame index) ~ N(0, I) from a CPU torch.Generator "
    "seeded by sha256('<rollout_seed>|<window id>|<u>'); identical for every row and variant"
)
ROWS = (
    "model",
    "action_shuffled",
    "null_actions",
    "copy_last_context",
    "tokenizer_ceiling",
    "tokenizer_ceiling_chunked",
)


def window_starts(T: int, length: int, stride: int = 40, per_episode: int = 2) -> list[int]:
    """evaluation.md §2: s = 0, stride, 2*stride, ... with s + length <= T, at most per_episode."""
    return [s for s in range(0, T - length + 1, stride)][:per_episode]


def load_window(store: ShardStore, episode: str, start: int, length: int, resolution: int):
    """(frames (1,L,3,r,r) float in [0,1], actions (1,L,16), act_mask (1,L,16))."""
    frames, raw = store.episode(episode)
    x = torch.from_numpy(model_frames(frames[start : start + length], resolution))[None]
    act, mask = window_actions(raw, start, length)
    return x, torch.from_numpy(act)[None], torch.from_numpy(mask)[None]


@torch.no_grad()
def evaluate_windows(
    tokenizer,
    dyn,
    store: ShardStore,
    episodes: list[str],
    *,
    resolution: int,
    packing: int,
    context: int = 8,
    horizon: int = 24,
    d: float = 0.25,
    seed: int = 0,
    max_windows: int | None = None,
    use_cache: bool = True,
) -> dict:
    """One-step and rollout metrics over the windows of `episodes` (length context + horizon).

    Returns dict with: n_windows; one_step_mse / copy_last_mse (latents of frame `context` given
    frames < context; mean over windows) and their ratio; rollout_psnr_frame_mean,
    rollout_psnr_pooled, copy_last_psnr_frame_mean, copy_last_psnr_pooled (decoded frames
    context..context+horizon-1 vs ground truth, data range 1), and per_step_psnr (horizon values).
    """
    L = context + horizon
    wins = [(e, s) for e in episodes for s in window_starts(store.episodes[e].T, L)]
    if max_windows is not None:
        wins = wins[:max_windows]
    if not wins:
        raise ValueError(f"no episode has a window of {L} frames")
    one, copy, mse_roll, mse_copy = [], [], [], []
    psnr_roll, psnr_copy = [], []
    for w, (e, s) in enumerate(wins):
        frames, act, mask = load_window(store, e, s, L, resolution)
        z = pack_latents(tokenizer.encode(frames, mae=False).float(), packing)  # (1,L,N,D) one call
        g = torch.Generator().manual_seed(seed * 1_000_003 + w)
        pred1 = rollout(
            dyn,
            z[:, :context],
            act[:, : context + 1],
            mask[:, : context + 1],
            1,
            d=d,
            window=L,
            use_cache=use_cache,
            generator=g,
        )[:, context]
        one.append(float((pred1 - z[:, context]).pow(2).mean()))
        copy.append(float((z[:, context - 1] - z[:, context]).pow(2).mean()))
        g = torch.Generator().manual_seed(seed * 1_000_003 + w)
        lat = rollout(dyn, z[:, :context], act, mask, horizon, d=d, window=L, use_cache=use_cache, generator=g)
        video = tokenizer.decode(unpack_latents(lat, packing)).clamp(0, 1)  # one decoder call
        gt = frames[:, context:]
        err = (video[:, context:] - gt).pow(2).mean(dim=(0, 2, 3, 4))  # (horizon,)
        err_c = (frames[:, context - 1 : context] - gt).pow(2).mean(dim=(0, 2, 3, 4))
        mse_roll.append(err.numpy())
        mse_copy.append(err_c.numpy())
        psnr_roll.append([psnr(v) for v in err.tolist()])
        psnr_copy.append([psnr(v) for v in err_c.tolist()])
    mse_roll, mse_copy = np.stack(mse_roll), np.stack(mse_copy)
    return {
        "n_windows": len(wins),
        "context": context,
        "horizon": horizon,
        "euler_steps": round(1 / d),
        "one_step_mse": float(np.mean(one)),
        "copy_last_mse": float(np.mean(copy)),
        "one_step_over_copy": float(np.mean(one) / max(np.mean(copy), 1e-12)),
        "rollout_psnr_frame_mean": float(np.mean(psnr_roll)),
        "rollout_psnr_pooled": psnr(mse_roll.mean()),
        "copy_last_psnr_frame_mean": float(np.mean(psnr_copy)),
        "copy_last_psnr_pooled": psnr(mse_copy.mean()),
        "per_step_psnr": [float(v) for v in np.mean(psnr_roll, axis=0)],
    }


# ---------------------------------------------------------------------------------------------
# The protocol of evaluation.md §2


def window_id(episode: str, start: int) -> str:
    return f"{episode}@{int(start)}"


def rollout_windows(
    store: ShardStore,
    episodes: list[str],
    eps_per_task: int = 4,
    context: int = 8,
    horizon: int = 24,
    stride: int = 40,
    per_episode: int = 2,
) -> list[dict]:
    """The deterministic window list of evaluation.md §2.

    Tasks sorted; per task the first `eps_per_task` demos in numeric order with T >= context +
    horizon; starts 0, stride, 2*stride, ... with s + L - 1 <= T - 1, at most `per_episode` per
    episode. `store` only needs `.episodes[id].T`. Returns [{"id", "episode", "task", "start"}].
    """
    L = context + horizon
    out = []
    for e in rollout_episode_list(list(episodes), store, eps_per_task, min_len=L):
        task, _ = parse_episode_id(e)
        for s in window_starts(store.episodes[e].T, L, stride, per_episode):
            out.append({"id": window_id(e, s), "episode": e, "task": task, "start": int(s)})
    return out


def cap_windows(windows: list[dict], max_windows: int | None) -> list[dict]:
    """At most `max_windows` windows, drawn round-robin across tasks (the first window of every task,
    then the second, ...), kept in list order; None keeps all. Keeps the tasks balanced, so the
    shuffle pairing stays possible."""
    if max_windows is None or max_windows >= len(windows):
        return list(windows)
    if max_windows < 1:
        raise ValueError(f"max_windows must be >= 1 or null, got {max_windows}")
    rank, seen = [], Counter()
    tasks = sorted({w["task"] for w in windows})
    for w in windows:
        rank.append((seen[w["task"]], tasks.index(w["task"])))
        seen[w["task"]] += 1
    keep = set(sorted(range(len(windows)), key=lambda i: rank[i])[:max_windows])
    return [w for i, w in enumerate(windows) if i in keep]


def write_windows(path, windows: list[dict], meta: dict | None = None) -> str:
    """Write the window list as canonical JSON (`{"protocol", ..meta, "n_windows", "windows"}`); returns its sha256.

    Put only data-derived values in `meta` (no absolute paths), so the same list gives the same hash."""
    doc = {
        "protocol": PROTOCOL,
        **(meta or {}),
        "n_windows": len(windows),
        "windows": [{k: w[k] for k in ("id", "episode", "task", "start")} for w in windows],
    }
    write_json(path, doc)
    return sha256_file(path)


def shuffle_pairing(windows: list[dict]) -> list[int]:
    """The derangement pi of §2 as partner indices: windows[i] takes the actions of windows[pi[i]].

    Sort by (task, demo number, start), shift cyclically by ceil(n/2). Raises ValueError naming the
    per-task window counts if a pair shares a task (i.e. one task holds more than half the windows).
    """
    n = len(windows)
    if n == 0:
        raise ValueError("shuffle_pairing: empty window list")
    order = sorted(
        range(n), key=lambda i: (windows[i]["task"], parse_episode_id(windows[i]["episode"])[1], windows[i]["start"])
    )
    shift = math.ceil(n / 2)
    partner = [0] * n
    for r, i in enumerate(order):
        partner[i] = order[(r + shift) % n]
    if any(windows[i]["task"] == windows[partner[i]]["task"] for i in range(n)):
        counts = dict(sorted(Counter(w["task"] for w in windows).items()))
        top = max(counts, key=counts.get)
        raise ValueError(
            f"action_shuffled: no cross-task derangement of {n} windows: task {top!r} holds "
            f"{counts[top]} of them (more than half); per-task window counts: {counts}"
        )
    return partner


def window_noise(rollout_seed: int, wid: str, frames: range, shape: tuple[int, ...]) -> torch.Tensor:
    """(len(frames), *shape) float32 initial noise, one generator per frame u seeded by (rollout_seed, window id, u)."""
    out = []
    for u in frames:
        digest = hashlib.sha256(f"{int(rollout_seed)}|{wid}|{int(u)}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
        out.append(torch.randn(*shape, generator=g))
    return torch.stack(out)


def frame_mse(pred: torch.Tensor, gt: torch.Tensor) -> np.ndarray:
    """(B,T,3,H,W) x2 -> (B,T) float64 MSE over H x W x 3 (computed in float64)."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape")
    return (pred.double() - gt.double()).pow(2).mean(dim=(2, 3, 4)).cpu().numpy()


def _episodes(windows: list[dict]) -> tuple[list[str], list[str], np.ndarray]:
    """(episodes in list order, their tasks, episode index of every window)."""
    eps: dict[str, int] = {}
    tasks = []
    idx = []
    for w in windows:
        if w["episode"] not in eps:
            eps[w["episode"]] = len(eps)
            tasks.append(w["task"])
        idx.append(eps[w["episode"]])
    return list(eps), tasks, np.asarray(idx, dtype=np.int64)


def _episode_sums(values: np.ndarray, ep_idx: np.ndarray, n_eps: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-episode sums of a (windows, steps) array and the per-episode frame counts."""
    sums = np.zeros(n_eps)
    np.add.at(sums, ep_idx, values.sum(axis=1))
    n = np.zeros(n_eps)
    np.add.at(n, ep_idx, values.shape[1])
    return sums, n


def bootstrap_counts(windows: list[dict], B: int, seed: int, set_name: str) -> np.ndarray:
    """(B, episodes) counts of the episode-cluster bootstrap of a window set (seeded by (seed, "boot", set_name))."""
    _, tasks, _ = _episodes(windows)
    return resample_counts("episode", tasks, B, seed, set_name)


def row_metrics(
    mse: np.ndarray,
    windows: list[dict],
    *,
    B: int = 1000,
    bootstrap_seed: int = 0,
    set_name: str = "rollout",
    counts: np.ndarray | None = None,
    short: int = 16,
) -> dict:
    """The ROW block of docs/results_format.md from a (windows, horizon) array of per-frame MSE."""
    mse = np.asarray(mse, dtype=np.float64)
    if mse.ndim != 2 or mse.shape[0] != len(windows):
        raise ValueError(f"per-window MSE must be (n_windows={len(windows)}, horizon), got {mse.shape}")
    p = psnr_of_mse(mse)
    eps, _, ep_idx = _episodes(windows)
    if counts is None:
        counts = bootstrap_counts(windows, B, bootstrap_seed, set_name)
    sums, n = _episode_sums(p, ep_idx, len(eps))
    by_task: dict[str, list[np.ndarray]] = defaultdict(list)
    for w, row in zip(windows, p):
        by_task[w["task"]].append(row)
    return {
        "psnr_frame_mean": float(p.mean()),
        "psnr_pooled": psnr(mse.mean()),
        "psnr_pooled_h16": psnr(mse[:, :short].mean()),
        "per_step_psnr": [float(v) for v in p.mean(axis=0)],
        "per_step_psnr_pooled": [psnr(v) for v in mse.mean(axis=0)],
        "per_task": {t: float(np.mean(v)) for t, v in sorted(by_task.items())},
        "ci": percentile_ci(mean_replicates(counts, sums, n)),
        "n_frames": int(p.size),
        "n_capped_frames": int((p >= PSNR_CAP).sum()),
        "per_window_mse": [[float(v) for v in row] for row in mse],
    }


def paired_delta(mse_a: np.ndarray, mse_b: np.ndarray, windows: list[dict], counts: np.ndarray) -> dict:
    """psnr_frame_mean(a) - psnr_frame_mean(b) with the paired episode-bootstrap CI (same counts)."""
    diff = psnr_of_mse(mse_a) - psnr_of_mse(mse_b)
    eps, _, ep_idx = _episodes(windows)
    sums, n = _episode_sums(diff, ep_idx, len(eps))
    return {"mean": float(diff.mean()), "ci": percentile_ci(mean_replicates(counts, sums, n))}


def binned_delta(
    mse_a: np.ndarray, mse_b: np.ndarray, windows: list[dict], counts: np.ndarray, bins: list[tuple[int, int]]
) -> list[dict]:
    """`paired_delta` on the predicted frames of each bin: [{"frames": [first, last], "mean", "ci"}].

    mse_a, mse_b: (windows, horizon); bins as `horizon_bins` (1-based, inclusive); the same count
    matrix as the whole-horizon delta, so every bin is paired over the same episode resamples."""
    mse_a, mse_b = np.asarray(mse_a, dtype=np.float64), np.asarray(mse_b, dtype=np.float64)
    out = []
    for first, last in bins:
        if not 1 <= first <= last <= mse_a.shape[1]:
            raise ValueError(f"bin frames {first}..{last} outside the horizon 1..{mse_a.shape[1]}")
        d = paired_delta(mse_a[:, first - 1 : last], mse_b[:, first - 1 : last], windows, counts)
        out.append({"frames": [int(first), int(last)], **d})
    return out


def score_predictions(pred: torch.Tensor, gt: torch.Tensor, windows: list[dict], **kw) -> dict:
    """Score predicted frames (n_windows, horizon, 3, H, W) in [0,1] against ground truth: a ROW.

    The hook for the protocol's test: pred := gt gives 100 dB on every frame and psnr_pooled = 100."""
    return row_metrics(frame_mse(pred, gt), windows, **kw)


def _batch_windows(store: ShardStore, windows: list[dict], L: int, resolution: int):
    """(frames (b,L,3,r,r), actions (b,L,16), masks (b,L,16)) of a list of windows."""
    fr, ac, ma = [], [], []
    for w in windows:
        x, a, m = load_window(store, w["episode"], w["start"], L, resolution)
        fr.append(x)
        ac.append(a)
        ma.append(m)
    return torch.cat(fr), torch.cat(ac), torch.cat(ma)


def _batch_actions(store: ShardStore, windows: list[dict], L: int):
    """(actions (b,L,16), masks (b,L,16)) of a list of windows, without reading frames."""
    pairs = [window_actions(store.episode(w["episode"])[1], w["start"], L) for w in windows]
    return torch.from_numpy(np.stack([a for a, _ in pairs])), torch.from_numpy(np.stack([m for _, m in pairs]))


@torch.no_grad()
def evaluate_rollouts(
    tokenizer,
    dyn,
    store: ShardStore,
    windows: list[dict],
    *,
    resolution: int,
    packing: int,
    context: int = 8,
    horizon: int = 24,
    d: float = 0.25,
    rollout_seed: int = 0,
    B: int = 1000,
    bootstrap_seed: int = 0,
    set_name: str = "test_ood",
    batch_size: int = 8,
    n_examples: int = 0,
    use_cache: bool = True,
    progress=None,
    tokenizer_chunk: int | None = None,
    ceiling_chunk: int | None = None,
) -> tuple[dict, list[dict]]:
    """All rows of evaluation.md §2 on `windows` (see the module docstring).

    tokenizer_chunk: chunk length of the run's encoding and decoding (None = the whole window in one call);
    ceiling_chunk: chunk length of the `tokenizer_ceiling_chunked` row (the tokenizer's training seq_len;
    None = the whole window, i.e. the same as `tokenizer_ceiling`).

    Returns (block, examples): block = {"n_windows", "n_episodes", "n_tasks", "episodes", "rows",
    "delta_action", "delta_copy_last", "delta_copy_last_bins", "delta_action_bins", "shuffle_pairs", ...}
    as in docs/results_format.md (the caller
    adds the windows file and hash); examples = the first `n_examples` windows' frames (numpy float32
    (L,3,H,W) in [0,1]: "gt", "model", "action_shuffled") for pictures.
    `progress.update(k)` is called after every batch of k windows.
    """
    if not windows:
        raise ValueError(f"{set_name}: no rollout windows (need episodes with >= {context + horizon} frames)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    L = context + horizon
    partner = shuffle_pairing(windows)
    dev = next(dyn.parameters()).device
    cfg = dyn.cfg
    tokenizer.eval()
    dyn.eval()
    n = len(windows)
    mse = {r: np.zeros((n, horizon)) for r in ROWS}
    examples: list[dict] = []
    for b0 in range(0, n, batch_size):
        idx = list(range(b0, min(n, b0 + batch_size)))
        b = len(idx)
        frames, act, mask = _batch_windows(store, [windows[i] for i in idx], L, resolution)
        act_p, mask_p = _batch_actions(store, [windows[partner[i]] for i in idx], L)
        frames, act, mask, act_p, mask_p = (t.to(dev) for t in (frames, act, mask, act_p, mask_p))
        gt = frames[:, context:]
        # reference rows: copy the last context frame; tokenizer round trip of the whole window
        mse["copy_last_context"][idx] = frame_mse(frames[:, context - 1 : context].expand_as(gt), gt)
        for row, c in (("tokenizer_ceiling", None), ("tokenizer_ceiling_chunked", ceiling_chunk)):
            ceiling = decode_chunked(tokenizer, encode_chunked(tokenizer, frames, c), c).float().clamp(0, 1)
            mse[row][idx] = frame_mse(ceiling[:, context:], gt)
        # model rows: true / shuffled / null actions, one batch, identical context and noise
        z_ctx = pack_latents(encode_chunked(tokenizer, frames[:, :context], tokenizer_chunk).float(), packing)
        noise = torch.stack(
            [
                window_noise(rollout_seed, windows[i]["id"], range(context, L), (cfg.n_spatial, cfg.d_spatial))
                for i in idx
            ]
        ).to(dev)
        zeros = torch.zeros_like(act)
        lat = rollout(
            dyn,
            z_ctx.repeat(3, 1, 1, 1),
            torch.cat([act, act_p, zeros]),
            torch.cat([mask, mask_p, zeros]),
            horizon,
            d=d,
            window=L,
            use_cache=use_cache,
            noise=noise.repeat(3, 1, 1, 1),
        )
        video = decode_chunked(tokenizer, unpack_latents(lat, packing), tokenizer_chunk).float().clamp(0, 1)
        for k, row in enumerate(("model", "action_shuffled", "null_actions")):
            mse[row][idx] = frame_mse(video[k * b : (k + 1) * b, context:], gt)
        for j, i in enumerate(idx):
            if i < n_examples:
                examples.append(
                    {
                        "id": windows[i]["id"],
                        "gt": frames[j].cpu().numpy(),
                        "model": video[j].cpu().numpy(),
                        "action_shuffled": video[b + j].cpu().numpy(),
                    }
                )
        if progress is not None:
            progress.update(b)
    counts = bootstrap_counts(windows, B, bootstrap_seed, f"rollout:{set_name}")
    eps, tasks, _ = _episodes(windows)
    rows = {r: row_metrics(mse[r], windows, counts=counts) for r in ROWS}
    bins = horizon_bins(horizon)
    block = {
        "n_windows": n,
        "n_episodes": len(eps),
        "n_tasks": len(set(tasks)),
        "episodes": eps,
        "rows": rows,
        "delta_action": paired_delta(mse["model"], mse["action_shuffled"], windows, counts),
        "delta_copy_last": paired_delta(mse["model"], mse["copy_last_context"], windows, counts),
        "delta_null_actions": paired_delta(mse["model"], mse["null_actions"], windows, counts),
        # issue 27: the same paired deltas per bin of predicted frames (thirds of the horizon)
        "delta_copy_last_bins": binned_delta(mse["model"], mse["copy_last_context"], windows, counts, bins),
        "delta_action_bins": binned_delta(mse["model"], mse["action_shuffled"], windows, counts, bins),
        "shuffle_pairs": [[windows[i]["id"], windows[partner[i]]["id"]] for i in range(n)],
        "bootstrap": {"B": int(B), "seed": int(bootstrap_seed), "set_name": f"rollout:{set_name}", "level": "episode"},
        "batch_size": int(batch_size),
        "tokenizer_chunk": tokenizer_chunk,
        "ceiling_chunk": ceiling_chunk,
    }
    return block, examples
