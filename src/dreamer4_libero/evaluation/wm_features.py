"""World-model features for the action probe (evaluation.md §1.3): no noise, no leakage.

Context latents are the tokenizer's encodings of ground-truth frames, each window encoded in one
causal call, or in independent chunks of the run's `tokenizer_chunk` frames (as in training;
models/tokenizer_chunks.py); every block is clean context (step index e_max, signal index
k_max − 1); eval mode, fp32, no noise, so extraction is deterministic. Windows hold at most C
frames (the dynamics run's seq_len); positions restart at 0 in every window.

Action tokens (the `null` token = zero action with zero mask, as block 0 of every training window):
- `past_actions`: block j of a window starting at frame w carries raw actions[w+j] (the action that
  produced o_{w+j}), block 0 the null token. Policy mode: one causal pass per window serves all
  targets (windows of C frames, stride C/2, the last aligned to the episode end; each target is read
  from the window with the most preceding context). Idm mode: one pass per target, the window ends
  at the read-out block t+1, whose token (it carries the target a_t) is nulled.
- `video_only`: every action token is the null token; one pass per window in both modes.

Feature sets from the read-out block (block t in policy mode, t+1 in idm mode), last layer output
(the residual stream after the final block; the dynamics transformer has no final norm):
`wm_agent` = agent token output(s) flattened (n_agent × d_model); `wm_spatial` = mean over the
spatial-token outputs (d_model). The aux head is never loaded.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from ..data.loader import model_frames, window_actions
from ..models.dynamics import pack_latents
from ..models.tokenizer_chunks import encode_chunked
from .features import FeatureSet, check_mode, readout_frame, readout_window, window_plan

EXTRACTIONS = ("past_actions", "video_only")
WM_FEATURES = ("wm_agent", "wm_spatial")
NULL_ACTION = "zero action vector with zero mask through the action MLP (block 0 of every training window)"


def check_extraction(extraction: str) -> str:
    if extraction not in EXTRACTIONS:
        raise ValueError(f"extraction mode must be one of {EXTRACTIONS}, got {extraction!r}")
    return extraction


def window_jobs(T: int, t: np.ndarray, mode: str, extraction: str, C: int) -> list[tuple[int, int, bool, list[int]]]:
    """Model passes needed for targets t: (start, length, null_last_block, [target indices read at its last
    relevant block]) — the read-out block of target i is readout_frame(t[i]) − start."""
    b = readout_frame(t, mode)
    if extraction == "past_actions" and mode == "idm":
        jobs = []
        for i, bi in enumerate(b.tolist()):
            s = max(0, bi + 1 - C)
            jobs.append((s, bi - s + 1, True, [i]))
        return jobs
    starts = window_plan(T, C)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, bi in enumerate(b.tolist()):
        groups[readout_window(bi, starts, C)].append(i)
    L = min(C, T)
    return [(s, L, False, idx) for s, idx in sorted(groups.items())]


class WorldModelFeatures:
    """Extracts wm_agent / wm_spatial for one episode at a time (batched model passes)."""

    def __init__(
        self,
        tokenizer,
        dyn,
        *,
        packing: int,
        window: int,
        resolution: int,
        batch: int = 16,
        device: str | torch.device = "cpu",
        tokenizer_chunk: int | None = None,
    ):
        self.tok = tokenizer.eval()
        self.dyn = dyn.eval()
        self.packing = packing
        self.tok_chunk = tokenizer_chunk  # frames per encoder call (None = the whole window)
        self.C = int(window)
        self.res = resolution
        self.batch = batch
        self.device = torch.device(device)
        self.n_agent = dyn.cfg.n_agent
        self.n_calls = 0  # model passes (windows) run, for tests and logs

    @torch.no_grad()
    def _pass(self, frames: torch.Tensor, act: torch.Tensor, mask: torch.Tensor):
        """frames (B,L,3,r,r), act/mask (B,L,16) -> (h_agent (B,L,n_agent*D) or None, h_spatial mean (B,L,D))."""
        cfg = self.dyn.cfg
        z = pack_latents(encode_chunked(self.tok, frames, self.tok_chunk).float(), self.packing)  # (B,L,N,D)
        B, L = z.shape[:2]
        step = torch.full((B, L), cfg.emax, dtype=torch.long, device=z.device)
        sig = torch.full((B, L), cfg.k_max - 1, dtype=torch.long, device=z.device)
        _, h_agent, h_sp = self.dyn(act, step, sig, z, act_mask=mask, return_spatial=True)
        self.n_calls += B
        agent = None if h_agent is None else h_agent.float().flatten(2)  # (B,L,n_agent*D)
        return agent, h_sp.float().mean(dim=2)  # (B,L,D)

    def extract(self, frames_u8: np.ndarray, raw: np.ndarray, t: np.ndarray, mode: str, extraction: str) -> dict:
        """{"wm_agent": (n, n_agent*D) or None, "wm_spatial": (n, D)} for targets t of one episode."""
        check_mode(mode)
        check_extraction(extraction)
        t = np.asarray(t, dtype=np.int64)
        T = len(frames_u8)
        jobs = window_jobs(T, t, mode, extraction, self.C)
        need = max(s + L for s, L, _, _ in jobs)
        x = torch.from_numpy(model_frames(np.asarray(frames_u8[:need]), self.res))  # (need,3,r,r)
        b = readout_frame(t, mode)
        D = self.dyn.cfg.d_model
        out_sp = np.zeros((len(t), D), np.float64)
        out_ag = None if not self.n_agent else np.zeros((len(t), self.n_agent * D), np.float64)
        by_len: dict[int, list] = defaultdict(list)
        for job in jobs:
            by_len[job[1]].append(job)
        for L, js in sorted(by_len.items()):
            for k in range(0, len(js), self.batch):
                chunk = js[k : k + self.batch]
                fr = torch.stack([x[s : s + L] for s, _, _, _ in chunk]).to(self.device)
                acts, masks = [], []
                for s, _, null_last, _ in chunk:
                    a, m = window_actions(raw, s, L)
                    if extraction == "video_only":
                        a[:], m[:] = 0.0, 0.0
                    elif null_last:
                        a[-1], m[-1] = 0.0, 0.0  # the read-out block carries the target a_t
                    acts.append(a)
                    masks.append(m)
                act = torch.from_numpy(np.stack(acts)).to(self.device)
                mask = torch.from_numpy(np.stack(masks)).to(self.device)
                h_ag, h_sp = self._pass(fr, act, mask)
                for j, (s, _, _, idx) in enumerate(chunk):
                    pos = b[idx] - s
                    out_sp[idx] = h_sp[j, pos].cpu().double().numpy()
                    if out_ag is not None:
                        out_ag[idx] = h_ag[j, pos].cpu().double().numpy()
        return {"wm_agent": out_ag, "wm_spatial": out_sp}

    def feature_sets(self, extraction: str) -> dict[str, FeatureSet]:
        """FeatureSet views (for the leak tests); wm_agent only when the model has agent tokens."""
        sens = "change" if extraction == "past_actions" else "no_change"
        sets = {
            "wm_spatial": FeatureSet(
                "wm_spatial",
                lambda f, r, t, m: self.extract(f, r, t, m, extraction)["wm_spatial"],
                needs_model=True,
                action_sensitivity=sens,
            )
        }
        if self.n_agent:
            sets["wm_agent"] = FeatureSet(
                "wm_agent",
                lambda f, r, t, m: self.extract(f, r, t, m, extraction)["wm_agent"],
                needs_model=True,
                action_sensitivity=None,
            )
        return sets


class TokenizerFeatures:
    """`tok_latent`: the tokenizer bottleneck z of the read-out frame, encoded in the probe windows (one call each)."""

    def __init__(self, tokenizer, *, resolution: int, batch: int = 16, device: str | torch.device = "cpu"):
        self.tok = tokenizer.eval()
        self.res = resolution
        self.batch = batch
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, frames_u8: np.ndarray, t: np.ndarray, mode: str, C: int) -> np.ndarray:
        t = np.asarray(t, dtype=np.int64)
        jobs = window_jobs(len(frames_u8), t, mode, "video_only", C)
        need = max(s + L for s, L, _, _ in jobs)
        x = torch.from_numpy(model_frames(np.asarray(frames_u8[:need]), self.res))
        b = readout_frame(t, mode)
        out = None
        for k in range(0, len(jobs), self.batch):
            chunk = jobs[k : k + self.batch]
            L = chunk[0][1]
            fr = torch.stack([x[s : s + L] for s, _, _, _ in chunk]).to(self.device)
            z = self.tok.encode(fr, mae=False).float().flatten(2).cpu()
            if out is None:
                out = np.zeros((len(t), z.shape[-1]), np.float64)
            for j, (s, _, _, idx) in enumerate(chunk):
                out[idx] = z[j, b[idx] - s].double().numpy()
        return out
