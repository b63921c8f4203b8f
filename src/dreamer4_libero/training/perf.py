"""What one training step costs: counted FLOPs, tokens, and a per-GPU memory plan.

Everything here runs a real training step (the trainers' own losses) on the **meta** device, where
tensors have shapes and dtypes but no storage: counting the 276M variant at its paper batch takes
seconds and no memory. `bench/` times the same steps on real devices.

FLOPs (``count_step_flops``): ``torch.utils.flop_counter.FlopCounterMode`` over the whole step:
every forward (for the world model: the main pass, the aux head, the bootstrap's two no-grad half
steps) and the backward. Matmuls and attention count 2 FLOPs per multiply-add; elementwise ops are
not counted. Count on the meta device: on real CPU tensors SDPA runs a fused flash kernel the
counter does not know, and its attention FLOPs would be missed. It is checked against the closed form
(``transformer_step_flops``), per transformer
with D = width, S = tokens per frame, T = frames, R = rows (batch entries) through it, L layers of
which L_t have time attention, m = mlp_ratio:

    forward  = R*T*S * L * (2 * (4 + 3m) * D^2)        # qkv + out of space attention, SwiGLU MLP
             + R*T*S_t * L_t * (2 * 4 * D^2)           # qkv + out of time attention on S_t slots
             + L * 4 * R*T * S^2 * D                   # space attention: q k^T and p v
             + L_t * 4 * R*S_t * T^2 * D               # time attention (causal, counted as full)
    step     = 3 * forward(rows with grad) + forward(rows without grad)    # backward = 2 x forward

(World model: rows with grad = batch, plus the batch's non-bootstrap rows again for the
``action_free`` aux input; rows without grad = 2 x the bootstrap rows, from ``bootstrap_start`` on.
Tokenizer: encoder and decoder, R = batch; LPIPS convolutions are counted by the counter only.)
MFU = counted FLOPs per step x steps/s / the GPU's dense bf16 peak (``GPU_BF16_PEAK``).

Memory (``memory_plan``), per GPU at a given batch (documented in docs/memory.md):

    static      = 16 B x trainable params (fp32 weights 4, grads 4, AdamW exp_avg + exp_avg_sq 8)
                + 4 B x trainable params for DDP's gradient buckets (world size > 1)
                + 4 B x frozen params (the world model's tokenizer, LPIPS)
                + 2 B x trainable params under bf16 autocast (its cached bf16 weight copies)
    activations = bytes of the tensors autograd saves for backward in one step, counted with
                  ``torch.autograd.graph.saved_tensors_hooks`` (storages counted once, parameters
                  excluded), in fp32 and with the model in bf16; attention probabilities (S x S,
                  T x T) are only stored by the math kernel, not by the flash / memory-efficient
                  kernels SDPA uses on GPUs, and are reported separately
    with activation checkpointing: the layers' inputs (R x T x S x D per layer) + what is saved
                  outside the layers + one layer's activations (recomputed in backward)
    plan        = static + activations (bf16, fused attention); largest batch per GPU =
                  floor((0.9 x 80 GB - static) / activations per batch entry)

Activations are linear in the batch (checked: ``activation_bytes`` at the batch and twice it), so the
largest batch follows from one count.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn as nn

from ..models.blocks import Transformer, set_activation_checkpointing
from ..models.dynamics import InverseDynamicsHead
from ..models.tokenizer import Tokenizer
from ..objectives.mae import tokenizer_loss
from ..objectives.shortcut import n_self_rows
from .dynamics_task import WorldModel, build_dynamics
from .tokenizer_task import tokenizer_model_config

GiB = 2**30
GPU_MEMORY_GB = 80  # the plan's GPU (A100 / H100 80 GB)
USABLE_FRACTION = 0.9  # allocator fragmentation, CUDA context, workspaces
#: dense bf16 tensor-core peak, FLOP/s, by a substring of torch.cuda.get_device_name()
GPU_BF16_PEAK = {
    "H200": 989.4e12,
    "H100 PCIe": 756.5e12,
    "H100 NVL": 835.5e12,
    "H100": 989.4e12,
    "A100": 312e12,
    "L40S": 362.1e12,
    "A10G": 70e12,
    "L4": 121e12,
    "RTX 4090": 165.2e12,
    "V100": 125e12,
}


def gpu_bf16_peak(name: str | None) -> float | None:
    for k, v in GPU_BF16_PEAK.items():
        if name and k in name:
            return v
    return None


# ----------------------------------------------------------------------------------------------
# the trainers' steps, on any device


class TrainStep:
    """One training step of a run: ``model`` (the trained module), ``frozen`` (modules used but not
    trained), ``loss(module=None)`` (forward of every pass through ``module``, default ``model``, e.g. its
    DDP wrapper; returns the scalar loss), ``tokens`` per step."""

    def __init__(
        self,
        model: nn.Module,
        frozen: list[nn.Module],
        loss: Callable[[], torch.Tensor],
        tokens: int,
        batch: int,
        seq_len: int,
        grad_rows: int,
        nograd_rows: int,
    ):
        self.model, self.frozen, self.loss = model, frozen, loss
        self.tokens, self.batch, self.seq_len = tokens, batch, seq_len
        self.grad_rows, self.nograd_rows = grad_rows, nograd_rows

    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def frozen_params(self) -> int:
        return sum(p.numel() for m in self.frozen for p in m.parameters())


def tokenizer_step(
    tok_cfg: dict,
    resolution: int,
    batch: int,
    seq_len: int,
    device="meta",
    lpips: nn.Module | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> TrainStep:
    """The tokenizer trainer's step (MAE + optional LPIPS, tokenizer_task.TokenizerTask.loss)."""
    mcfg = tokenizer_model_config(tok_cfg, resolution)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Tokenizer(mcfg).to(dtype).train()
    x = torch.rand(batch, seq_len, 3, resolution, resolution, device=device, dtype=dtype)
    lp = lpips.to(device) if lpips is not None else None

    def loss(module=None):
        out = (module or model)(x)
        value, _ = tokenizer_loss(
            out["recon"],
            x,
            out["mae_mask"],
            lpips_fn=lp,
            lpips_weight=tok_cfg["lpips_weight"] if lp is not None else 0.0,
            lpips_frac=tok_cfg["lpips_frac"],
            keep_prob=out["keep_prob"],
            visible_weight=tok_cfg.get("visible_mse_weight", 0.0),
        )
        return value

    return TrainStep(
        model,
        [lp] if lp is not None else [],
        loss,
        tokens=batch * seq_len * mcfg.n_patches,
        batch=batch,
        seq_len=seq_len,
        grad_rows=batch,
        nograd_rows=0,
    )


def dynamics_step(
    run: dict,
    tok_cfg: dict,
    resolution: int,
    batch: int | None = None,
    seq_len: int | None = None,
    device="meta",
    dtype: torch.dtype = torch.float32,
    bootstrap: bool = True,
    seed: int = 0,
) -> TrainStep:
    """A world-model variant's step (dynamics_task.WorldModel: shortcut forcing + bootstrap + aux head)
    on random clean latents; the frozen tokenizer's encode is not in the step (it is in ``frozen``)."""
    run = copy.deepcopy(run)
    run["init_paths"] = None  # the architecture from the config (a DMControl init's must match it)
    batch = batch or run["batch_size"]
    seq_len = seq_len or run["seq_len"]
    tcfg = tokenizer_model_config(tok_cfg, resolution)
    torch.manual_seed(seed)
    with torch.device(device):
        dyn, _ = build_dynamics(run, tcfg)
        aux = InverseDynamicsHead(dyn.cfg.d_model, dyn.cfg.action_dim) if run["aux_weight"] > 0 else None
        model = WorldModel(dyn, aux, run).to(dtype).train()
        frozen = Tokenizer(tcfg)
    c = dyn.cfg
    z1 = torch.randn(batch, seq_len, c.n_spatial, c.d_spatial, device=device, dtype=dtype).tanh()
    act = torch.rand(batch, seq_len, c.action_dim, device=device, dtype=dtype) * 2 - 1
    mask = torch.ones_like(act)
    step = run["bootstrap_start"] if bootstrap else -1

    def loss(module=None):
        return (module or model)(z1, act, mask, step)[0]

    b_self = n_self_rows(batch, run["self_fraction"])
    extra = (batch - b_self) if (run["aux_weight"] > 0 and run["aux_input"] == "action_free") else 0
    return TrainStep(
        model,
        [frozen],
        loss,
        tokens=batch * seq_len * c.n_tokens,
        batch=batch,
        seq_len=seq_len,
        grad_rows=batch + extra,
        nograd_rows=2 * b_self if bootstrap else 0,
    )


# ----------------------------------------------------------------------------------------------
# FLOPs


def count_step_flops(step: TrainStep) -> int:
    """Counted FLOPs of one forward + backward of ``step`` (run it on the meta device: free)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        step.loss().backward()
    step.model.zero_grad(set_to_none=True)
    return int(fc.get_total_flops())


def transformer_fwd_flops(tr: Transformer, rows: int, T: int) -> int:
    """The closed form above for one forward of ``tr`` on (rows, T, S, D)."""
    S = int(tr.modality.numel())
    layer = tr.layers[0]
    D = layer.norm1.scale.numel()
    m = layer.mlp.fc_out.in_features / D
    L = len(tr.layers)
    timed = [layer for layer in tr.layers if layer.has_time]
    Lt = len(timed)
    St = (timed[0].time.n_slots or S) if timed else 0  # slots with time attention (tokenizer: the latents)
    n = rows * T * S
    return int(
        n * L * 2 * (4 + 3 * m) * D * D
        + rows * T * St * Lt * 2 * 4 * D * D
        + L * 4 * rows * T * S * S * D
        + Lt * 4 * rows * St * T * T * D
    )


def formula_step_flops(step: TrainStep) -> int:
    trs = [m for m in step.model.modules() if isinstance(m, Transformer)]
    grad = sum(transformer_fwd_flops(t, step.grad_rows, step.seq_len) for t in trs)
    nograd = sum(transformer_fwd_flops(t, step.nograd_rows, step.seq_len) for t in trs) if step.nograd_rows else 0
    return 3 * grad + nograd


# ----------------------------------------------------------------------------------------------
# memory


def activation_bytes(step: TrainStep) -> dict:
    """Bytes autograd saves for backward in one forward of ``step`` (storages counted once,
    parameters excluded); ``attn_probs`` = the part that is attention probabilities (math kernel only)."""
    params = {p.untyped_storage()._cdata for p in step.model.parameters()}
    trs = [m for m in step.model.modules() if isinstance(m, Transformer)]
    square = {int(t.modality.numel()) for t in trs} | {step.seq_len}
    seen: dict[int, tuple[int, bool]] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        key = s._cdata
        if key not in params:
            probs = t.dim() >= 3 and t.shape[-1] == t.shape[-2] and int(t.shape[-1]) in square
            nb = s.nbytes() if s.nbytes() else t.numel() * t.element_size()
            prev = seen.get(key)
            seen[key] = (max(nb, prev[0] if prev else 0), probs or (prev[1] if prev else False))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step.loss()
    total = sum(nb for nb, _ in seen.values())
    probs = sum(nb for nb, p in seen.values() if p)
    return {"total": total, "attn_probs": probs, "fused": total - probs}


def layer_input_bytes(step: TrainStep, dtype_bytes: int) -> int:
    """The (R,T,S,D) input each checkpointed layer keeps, summed over layers and transformers."""
    out = 0
    for t in (m for m in step.model.modules() if isinstance(m, Transformer)):
        D = t.layers[0].norm1.scale.numel()
        out += len(t.layers) * step.grad_rows * step.seq_len * int(t.modality.numel()) * D * dtype_bytes
    return out


def checkpointed_activation_bytes(step: TrainStep, full: dict, dtype_bytes: int) -> dict:
    """Activations with per-layer activation checkpointing: counted outside the layers, plus the
    layers' inputs, plus one layer's activations (recomputed in backward, one at a time)."""
    set_activation_checkpointing(step.model, True)
    try:
        outside = activation_bytes(step)  # the checkpointed layers' own saved tensors are not seen
    finally:
        set_activation_checkpointing(step.model, False)
    n_layers = sum(len(m.layers) for m in step.model.modules() if isinstance(m, Transformer))
    inner = max(full["fused"] - outside["fused"], 0)
    one = inner / max(n_layers, 1)
    inputs = layer_input_bytes(step, dtype_bytes)
    fused = outside["fused"] + inputs + one
    return {"outside_layers": outside["fused"], "layer_inputs": inputs, "one_layer": int(one), "fused": int(fused)}


def memory_plan(
    make_step: Callable[..., TrainStep], batch: int, world_size: int = 1, gpu_gb: float = GPU_MEMORY_GB
) -> dict:
    """The per-GPU plan of a run at ``batch`` (see the module docstring). ``make_step(batch=, dtype=)``
    builds its step on the meta device."""
    f32, b16 = make_step(batch=batch, dtype=torch.float32), make_step(batch=batch, dtype=torch.bfloat16)
    P, P_frozen = f32.params(), f32.frozen_params()
    static32 = 16 * P + (4 * P if world_size > 1 else 0) + 4 * P_frozen
    static16 = static32 + 2 * P
    act32, act16 = activation_bytes(f32), activation_bytes(b16)
    ckpt16 = checkpointed_activation_bytes(b16, act16, 2)
    usable = USABLE_FRACTION * gpu_gb * 1e9

    def largest(static, per_sample):
        return max(int((usable - static) // per_sample), 0) if per_sample > 0 else None

    # linear in the batch: the per-entry cost from a second count at twice the batch
    act16_2 = activation_bytes(make_step(batch=2 * batch, dtype=torch.bfloat16))
    per16 = (act16_2["fused"] - act16["fused"]) / batch
    per16_ckpt = ckpt16["fused"] / batch
    per32 = act32["fused"] / batch
    return {
        "batch": batch,
        "world_size": world_size,
        "params": P,
        "frozen_params": P_frozen,
        "static_fp32_GiB": static32 / GiB,
        "static_bf16_GiB": static16 / GiB,
        "activations_fp32_GiB": act32["fused"] / GiB,
        "activations_fp32_math_attention_GiB": act32["total"] / GiB,
        "activations_bf16_GiB": act16["fused"] / GiB,
        "activations_bf16_ckpt_GiB": ckpt16["fused"] / GiB,
        "total_bf16_GiB": (static16 + act16["fused"]) / GiB,
        "total_bf16_ckpt_GiB": (static16 + ckpt16["fused"]) / GiB,
        "total_fp32_GiB": (static32 + act32["fused"]) / GiB,
        "activation_bytes_per_batch_entry_bf16": per16,
        "linear_in_batch_check": abs(per16 * batch - act16["fused"]) / max(act16["fused"], 1),
        f"largest_batch_per_{gpu_gb:g}GB_bf16": largest(static16, per16),
        f"largest_batch_per_{gpu_gb:g}GB_bf16_ckpt": largest(static16, per16_ckpt),
        f"largest_batch_per_{gpu_gb:g}GB_fp32": largest(static32, per32),
        "checkpointing_detail_bf16_bytes": ckpt16,
    }


def model_flops_summary(step: TrainStep) -> dict:
    counted = count_step_flops(step)
    formula = formula_step_flops(step)
    return {
        "flops_per_step": counted,
        "formula_flops_per_step": formula,
        "formula_over_counted": formula / counted if counted else math.nan,
        "tokens_per_step": step.tokens,
        "params": step.params(),
    }
