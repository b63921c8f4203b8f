"""The `tokenizer_eval` job (evaluation.md §3): reconstruction PSNR on held-out episodes, plus a PNG strip.

`run_tokenizer_eval` scores the test_ood rollout episode list and val (capped by
`tokenizer.eval.max_val_episodes`) in causal chunks of the tokenizer's training length, writes the
record and draws originals against reconstructions of each set's first episode.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..data.loader import episode_list
from ..data.shards import ShardStore
from ..fileio import read_json, write_json
from ..models.upstream import load_tokenizer_checkpoint
from ..reporting.plots import frame_grid
from .runtime import eval_autocast, precision_name, run_amp
from .tokenizer_psnr import evaluate_tokenizer, rollout_episode_list, strip_frames


def run_tokenizer_eval(
    ev: dict,
    *,
    checkpoint_json: str,
    manifest: str,
    test_ood: str,
    val: str,
    resolution: int,
    out_json: str,
    out_png: str,
    device: torch.device,
    batch: int = 16,
    amp: str | None = None,
) -> dict:
    """The whole job; `ev` is the validated `tokenizer.eval` config section. Returns the record written."""
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    ck = read_json(checkpoint_json)
    amp = amp or run_amp(checkpoint_json)
    model, report = load_tokenizer_checkpoint(ck["path"])
    model = model.to(device)
    print(
        f"[tokenizer_eval] device {device}, precision {precision_name(device, amp)} (amp {amp}), "
        f"{batch} chunks per pass",
        flush=True,
    )
    chunk = int(read_json(ck["config"])["task"]["tokenizer"]["seq_len"])
    store = ShardStore(manifest)
    ood = rollout_episode_list(episode_list(test_ood), store, ev["eps_per_task"], ev["min_len"])
    val_eps = episode_list(val)
    if ev.get("max_val_episodes"):
        val_eps = val_eps[: ev["max_val_episodes"]]
    sets = {"test_ood_rollout_list": ood, "val": val_eps}
    with tqdm(total=len(ood) + len(val_eps), desc="tokenizer eval", unit="ep") as bar, eval_autocast(device, amp):
        res = evaluate_tokenizer(
            model, store, sets, resolution=resolution, chunk=chunk, seed=ev["seed"], progress=bar, batch=batch
        )
    out = {
        "run": ck["run_name"],
        "checkpoint": ck["path"],
        "checkpoint_sha256": ck["sha256"],
        "step": ck["step"],
        "resolution": resolution,
        "chunk": chunk,
        "mae": "off (eval mode)",
        "sets": res,
        "episodes": sets,
        "loader_report": report,
        "device": device.type,
        "precision": precision_name(device, amp),
        "batch_chunks": batch,
    }
    write_json(out_json, out)
    for name, r in res.items():
        print(
            f"{name:22s} PSNR frame-mean {r['tok_psnr_frame_mean']:.2f} dB, pooled {r['tok_psnr_pooled']:.2f} dB, "
            f"mean-frame baseline {r['mean_frame_baseline_psnr_frame_mean']:.2f} dB "
            f"(gain {r['gain_over_mean_frame_db']:+.2f} dB), "
            f"masked train-style {r['tok_psnr_masked_train_style']:.2f} dB"
        )
    rows = {}
    for name, eps in sets.items():
        with eval_autocast(device, amp):
            orig, rec = strip_frames(model, store, eps[0], resolution, chunk, batch=batch)
        rows[f"{name}: {eps[0]} original"] = orig
        rows[f"{name}: reconstruction"] = rec
    frame_grid(rows, out_png, f"{ck['run_name']} step {ck['step']}: originals vs reconstructions")
    return out
