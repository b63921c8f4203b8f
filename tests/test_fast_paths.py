"""Fast training paths against the plain fp32 path on CPU: SDPA vs the explicit attention reference with
the spec's masks (module and whole models, forward and gradients), gradient accumulation vs the larger
batch, torch.compile checkpoints without the `_orig_mod.` prefix, fused AdamW / AMP degrading to
fp32 foreach AdamW on CPU, the AMP choice (bf16 where supported, else fp16 with a grad scaler), and
bf16 / fp16 autocast numerics against fp32 (through CPU autocast). Activation checkpointing and the
FLOP / memory counts are in tests/test_perf.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dreamer4_libero.models.blocks import SPACE_MASKS, explicit_attention, set_attention_backend, space_mask
from dreamer4_libero.models.dynamics import Dynamics, DynamicsConfig
from dreamer4_libero.models.tokenizer import Tokenizer, TokenizerConfig
from dreamer4_libero.training.checkpoints import load_checkpoint, latest_checkpoint
from dreamer4_libero.training.engine import train
from dreamer4_libero.training.engine_config import EngineConfig

from engine_toy import ToyTask, make_model

TINY_DYN = dict(d_model=32, depth=2, n_heads=2, d_spatial=16, n_spatial=4, action_dim=16, k_max=8, time_every=1)


@pytest.fixture(autouse=True)
def _sdpa_after():
    yield
    set_attention_backend("sdpa")


@pytest.mark.parametrize("mode", sorted(SPACE_MASKS))
def test_explicit_attention_matches_sdpa_with_every_space_mask(mode):
    g = torch.Generator().manual_seed(0)
    mod = torch.tensor([-1] * 4 + [0] * 3 + [1, 7, 5, 6])  # latents, patches, action, agent, signal, step
    mask = space_mask(mod, mode)
    q, k, v = (torch.randn(3, 2, len(mod), 8, generator=g, requires_grad=True) for _ in range(3))
    ref = explicit_attention(q, k, v, mask=mask)
    fast = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(ref, fast, atol=1e-6), (ref - fast).abs().max()
    gr = torch.autograd.grad(ref.square().sum(), (q, k, v))
    gf = torch.autograd.grad(fast.square().sum(), (q, k, v))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(gr, gf))


def test_explicit_attention_causal_and_additive_masks():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 6, 4, generator=g) for _ in range(3))
    assert torch.allclose(
        explicit_attention(q, k, v, is_causal=True), F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6
    )
    add = torch.randn(6, 6, generator=g)
    assert torch.allclose(
        explicit_attention(q, k, v, mask=add), F.scaled_dot_product_attention(q, k, v, attn_mask=add), atol=1e-6
    )
    # causality really holds: the first query ignores every later key
    v2 = v.clone()
    v2[:, :, 1:] += 100.0
    assert torch.allclose(
        explicit_attention(q, k, v2, is_causal=True)[:, :, 0], explicit_attention(q, k, v, is_causal=True)[:, :, 0]
    )


def _fwd_bwd(model, inputs, out_fn):
    model.zero_grad()
    out = out_fn(model(*inputs))
    out.square().mean().backward()
    return out.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("which", ["tokenizer", "dynamics"])
def test_whole_models_agree_across_attention_backends(which):
    torch.manual_seed(0)
    if which == "tokenizer":
        m = Tokenizer(
            TokenizerConfig(
                H=16, W=16, patch=4, d_model=32, n_heads=2, depth=2, n_latents=4, d_bottleneck=8, dropout=0.0
            )
        ).eval()
        inputs = (torch.rand(2, 3, 3, 16, 16),)
        out_fn = lambda o: o["recon"]  # noqa: E731
    else:
        m = Dynamics(DynamicsConfig(**TINY_DYN)).eval()
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 0.2)
        g = torch.Generator().manual_seed(1)
        inputs = (
            torch.randn(2, 5, 16, generator=g),
            torch.randint(0, 4, (2, 5), generator=g),
            torch.randint(0, 8, (2, 5), generator=g),
            torch.randn(2, 5, 4, 16, generator=g),
        )
        out_fn = lambda o: o[0]  # noqa: E731
    set_attention_backend("sdpa")
    torch.manual_seed(5)
    y_fast, g_fast = _fwd_bwd(m, inputs, out_fn)
    set_attention_backend("explicit")
    torch.manual_seed(5)
    y_ref, g_ref = _fwd_bwd(m, inputs, out_fn)
    assert torch.allclose(y_fast, y_ref, atol=1e-5), (y_fast - y_ref).abs().max()
    assert g_fast.keys() == g_ref.keys() and len(g_ref) > 10
    worst = max(float((g_fast[n] - g_ref[n]).abs().max()) for n in g_ref)
    assert worst < 1e-4, worst
    print(f"\n[{which}] sdpa vs explicit: max |Δy| {float((y_fast - y_ref).abs().max()):.2e}, max |Δgrad| {worst:.2e}")


def test_attention_backend_switch_is_validated():
    with pytest.raises(ValueError, match="attention backend"):
        set_attention_backend("flash")
    with pytest.raises(ValueError, match="attention must be"):
        EngineConfig(attention="flash")
    with pytest.raises(ValueError, match="fused_adamw"):
        EngineConfig(fused_adamw="yes")


class _HalvesTask(ToyTask):
    """Every update sees the same 16 samples: whole (grad_accum 1) or as two halves of 8 (grad_accum 2)."""

    def __init__(self, halves: bool):
        super().__init__()
        self.halves = halves

    def build_model(self):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))

    def batches(self, start_step, rank, world_size):
        from engine_toy import make_batch

        s = start_step // (2 if self.halves else 1)
        while True:
            b = make_batch(0, s, 0)
            if self.halves:
                for h in (slice(0, 8), slice(8, 16)):
                    yield {"x": b["x"][h], "y": b["y"][h], "index": s}
            else:
                yield b
            s += 1


def test_gradient_accumulation_gives_the_larger_batch_update(tmp_path):
    finals = {}
    for name, accum in (("big", 1), ("accum", 2)):
        cfg = EngineConfig(
            run_name=name,
            ckpt_dir=str(tmp_path / name),
            max_steps=5,
            save_every=5,
            lr=1e-2,
            grad_accum=accum,
            progress=False,
            model_key="model",
            grad_clip=None,
        )
        assert train(_HalvesTask(halves=accum == 2), cfg) == 0
        finals[name] = load_checkpoint(latest_checkpoint(tmp_path / name))["model"]
    diff = max(float((finals["big"][k] - finals["accum"][k]).abs().max()) for k in finals["big"])
    assert diff < 1e-6, diff
    print(f"\ngrad_accum 2 x 8 vs batch 16: max |Δw| after 5 AdamW updates {diff:.1e}")


def test_compiled_training_writes_plain_checkpoints(tmp_path):
    cfg = EngineConfig(
        run_name="c",
        ckpt_dir=str(tmp_path / "c"),
        max_steps=3,
        save_every=3,
        progress=False,
        compile=True,
        fused_adamw="on",
        amp="bf16",
    )
    assert train(ToyTask(), cfg) == 0
    ck = load_checkpoint(latest_checkpoint(tmp_path / "c"))
    assert not any(k.startswith("_orig_mod.") for k in ck["model"]), list(ck["model"])
    make_model().load_state_dict(ck["model"], strict=True)
    assert ck["config"]["runtime"]["amp"] == "fp32"  # bf16 asked for, CPU runs fp32
    log = (tmp_path / "c" / "train.log").read_text()
    assert "fused_adamw=on requested but not on CUDA" in log


def test_amp_resolution_bf16_where_supported_else_fp16_with_scaler(monkeypatch):
    from dreamer4_libero.training.optim import resolve_amp

    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_amp("auto", cuda) == (torch.bfloat16, False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_amp("auto", cuda) == (torch.float16, True)
    assert resolve_amp("fp16", cuda) == (torch.float16, True)
    assert resolve_amp("off", cuda) == (None, False)
    for amp in ("auto", "bf16", "fp16"):
        assert resolve_amp(amp, torch.device("cpu")) == (None, False)  # CPU always fp32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_autocast_stays_close_to_fp32(dtype):
    """The reduced-precision forward + backward the GPU runs (here through CPU autocast) against fp32."""
    from dreamer4_libero.objectives.shortcut import shortcut_loss

    torch.manual_seed(0)
    m = Dynamics(DynamicsConfig(**TINY_DYN))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1)
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(4, 6, 4, 16, generator=g).tanh()
    act = torch.rand(4, 6, 16, generator=g) * 2 - 1
    out = {}
    for name, ctx in (("fp32", torch.autocast("cpu", enabled=False)), ("low", torch.autocast("cpu", dtype=dtype))):
        m.zero_grad()
        torch.manual_seed(3)
        with ctx:
            loss, _ = shortcut_loss(m, z1, act, torch.ones_like(act), step=10, bootstrap_start=0)
        loss.float().backward()
        out[name] = (float(loss.detach()), torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    rel_loss = abs(out["low"][0] - out["fp32"][0]) / abs(out["fp32"][0])
    ga, gb = out["low"][1], out["fp32"][1]
    cos = float(torch.nn.functional.cosine_similarity(ga, gb, dim=0))
    assert rel_loss < 0.03, rel_loss
    assert cos > 0.99, cos
    print(f"\n{dtype}: loss rel. diff {rel_loss:.1e}, gradient cosine {cos:.5f} against fp32")
