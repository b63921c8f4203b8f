"""Cost models of a training step (training/perf.py) and activation checkpointing.

Counted FLOPs and saved-activation bytes on the meta device must equal the same counts on real CPU
tensors (the meta device is what makes counting the paper-scale variants free), the closed-form
FLOP formula must agree with the counter, and activation checkpointing must give the same loss and
gradients while saving less for backward.
"""

from __future__ import annotations

import copy

import pytest
import torch

from dreamer4_libero.config import demo_config, dynamics_variants, load_config
from dreamer4_libero.models.blocks import set_activation_checkpointing, set_attention_backend
from dreamer4_libero.training import perf
from dreamer4_libero.training.engine_config import EngineConfig, add_engine_args, engine_config_from_args


@pytest.fixture(scope="module")
def demo():
    cfg = demo_config()
    return cfg, dynamics_variants(cfg), cfg["data"]["model_resolution"]


def _dyn_step(demo, name, device, **kw):
    cfg, runs, res = demo
    return perf.dynamics_step(runs[name], cfg["tokenizer"], res, device=device, **kw)


@pytest.mark.parametrize("name", ["dynamics_phase3", "dynamics_aux_phase6_leakfree"])
def test_meta_counts_equal_real_cpu_counts(demo, name):
    # on CPU, SDPA runs a fused flash kernel the FLOP counter does not know (it would miss the
    # attention FLOPs): real tensors are counted with the explicit attention, meta with either
    meta = _dyn_step(demo, name, "meta")
    f_meta, a_meta = perf.count_step_flops(meta), perf.activation_bytes(meta)
    set_attention_backend("explicit")
    try:
        assert perf.count_step_flops(meta) == f_meta
        cpu = _dyn_step(demo, name, "cpu")
        f_cpu, a_cpu = perf.count_step_flops(cpu), perf.activation_bytes(cpu)
        a_meta_explicit = perf.activation_bytes(meta)
    finally:
        set_attention_backend("sdpa")
    assert f_meta == f_cpu > 1e9
    assert a_meta_explicit == a_cpu and a_cpu["total"] > 1e6
    print(
        f"\n{name}: {f_cpu / 1e9:.3f} GFLOP/step, {a_cpu['total'] / 2**20:.1f} MiB saved for backward "
        f"(explicit attention; SDPA: {a_meta['total'] / 2**20:.1f} MiB), meta == cpu"
    )


def test_formula_matches_the_counter_at_paper_scale():
    cfg = load_config()
    runs, res = dynamics_variants(cfg), cfg["data"]["model_resolution"]
    ratios = {}
    for name in ("dynamics_phase3", "dynamics_aux_param_matched_276M", "dynamics_aux_phase6_leakfree"):
        s = perf.dynamics_step(runs[name], cfg["tokenizer"], res)
        ratios[name] = perf.formula_step_flops(s) / perf.count_step_flops(s)
    tok = perf.tokenizer_step(cfg["tokenizer"], res, cfg["tokenizer"]["batch_size"], cfg["tokenizer"]["seq_len"])
    ratios["tokenizer"] = perf.formula_step_flops(tok) / perf.count_step_flops(tok)
    print("\nformula / counted FLOPs:", {k: round(v, 4) for k, v in ratios.items()})
    for k, v in ratios.items():
        assert 0.99 < v < 1.01, (k, v)  # the rest: embeddings, heads, norms' reductions are not in the formula


def test_bootstrap_and_aux_rows_are_in_the_count(demo):
    plain = perf.count_step_flops(_dyn_step(demo, "dynamics_phase3", "meta", bootstrap=False))
    boot = perf.count_step_flops(_dyn_step(demo, "dynamics_phase3", "meta", bootstrap=True))
    aux = perf.count_step_flops(_dyn_step(demo, "dynamics_aux_phase6_leakfree", "meta", bootstrap=True))
    # 2 no-grad half steps on a quarter of the rows ~ +1/6 of a 3-pass step; action_free aux rows
    # repeat the 3/4 non-bootstrap rows in the grad pass (~ +3/4 of the main pass)
    assert 1.10 < boot / plain < 1.25, boot / plain
    assert 1.5 < aux / boot < 1.8, aux / boot


def test_memory_plan_is_linear_and_checkpointing_shrinks_it(demo):
    cfg, runs, res = demo
    run = runs["dynamics_aux_param_matched_276M"]
    plan = perf.memory_plan(
        lambda batch, dtype: perf.dynamics_step(run, cfg["tokenizer"], res, batch=batch, dtype=dtype), 4
    )
    assert plan["linear_in_batch_check"] < 1e-3
    assert plan["activations_bf16_ckpt_GiB"] < 0.6 * plan["activations_bf16_GiB"]
    assert plan["activations_bf16_GiB"] < 0.6 * plan["activations_fp32_GiB"]
    P = plan["params"]
    assert plan["static_fp32_GiB"] * perf.GiB == pytest.approx(16 * P + 4 * plan["frozen_params"])
    big = plan["largest_batch_per_80GB_bf16"]
    # the largest batch fits the usable budget and one more entry does not
    per = plan["activation_bytes_per_batch_entry_bf16"]
    static = plan["static_bf16_GiB"] * perf.GiB
    usable = perf.USABLE_FRACTION * 80e9
    assert static + big * per <= usable < static + (big + 1) * per


@pytest.mark.parametrize("which", ["dynamics", "tokenizer"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(demo, which):
    cfg, runs, res = demo
    if which == "dynamics":
        run = copy.deepcopy(runs["dynamics_aux_phase6_leakfree"])
        run["model"]["dropout"] = 0.1  # the recomputation must replay the dropout masks
        step = perf.dynamics_step(run, cfg["tokenizer"], res, device="cpu", batch=3, seq_len=6)
    else:
        tok = copy.deepcopy(cfg["tokenizer"])
        tok["model"]["dropout"] = 0.1
        step = perf.tokenizer_step(tok, res, batch=2, seq_len=3, device="cpu")
    results = {}
    for on in (False, True):
        assert set_activation_checkpointing(step.model, on) >= 1
        step.model.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        loss = step.loss()
        loss.backward()
        results[on] = (
            loss.detach(),
            {n: p.grad.clone() for n, p in step.model.named_parameters() if p.grad is not None},
        )
    (l0, g0), (l1, g1) = results[False], results[True]
    assert torch.equal(l0, l1), (l0, l1)
    assert g0.keys() == g1.keys() and len(g0) > 10
    worst = max(float((g0[k] - g1[k]).abs().max()) for k in g0)
    assert worst < 1e-6, worst
    set_activation_checkpointing(step.model, False)
    full = perf.activation_bytes(step)["total"]
    set_activation_checkpointing(step.model, True)
    outside = perf.activation_bytes(step)["total"]
    set_activation_checkpointing(step.model, False)
    assert outside < 0.5 * full
    print(
        f"\n[{which}] checkpointing: loss {float(l0):.6f} equal, max |Δgrad| {worst:.1e}; "
        f"saved outside the layers {outside / 2**20:.2f} of {full / 2**20:.2f} MiB"
    )


def test_activation_checkpointing_is_an_engine_and_config_switch():
    import argparse

    ap = add_engine_args(argparse.ArgumentParser())
    assert engine_config_from_args(ap.parse_args(["--activation-checkpointing", "true"])).activation_checkpointing
    assert not EngineConfig().activation_checkpointing
    cfg = load_config()
    assert cfg["tokenizer"]["activation_checkpointing"] is False
    assert all(r["activation_checkpointing"] is False for r in dynamics_variants(cfg).values())
    on = load_config(
        overrides={"dynamics": {"variants": {"dynamics_aux_param_matched_276M": {"activation_checkpointing": True}}}}
    )
    assert dynamics_variants(on)["dynamics_aux_param_matched_276M"]["activation_checkpointing"] is True
