"""Dynamics model (dreamer4_model.md §3, §7.2, §8, §11.3): parameter counts, upstream layout,
foreign-checkpoint loading, space masks of the three agent modes, causality, KV-cached sampling."""

import math

import pytest
import torch

from dreamer4_libero.models.blocks import AGENT, space_mask
from dreamer4_libero.models.dynamics import Dynamics, DynamicsConfig, KVCache, n_params, pack_latents, unpack_latents
from dreamer4_libero.models.sampling import rollout, tau_schedule
from dreamer4_libero.models.upstream import (
    add_prefix,
    dynamics_config_from_state_dict,
    load_dynamics_checkpoint,
    upstream_dynamics_checkpoint,
)
from dreamer4_libero.training.dynamics_task import build_dynamics

TINY = dict(d_model=32, depth=2, n_heads=2, n_spatial=4, d_spatial=16)


def _spec_state_dict(D=512, depth=8, time_every=1, n_register=4, d_sp=64, k_max=8) -> dict:
    """A state dict written from the key list of dreamer4_model.md §7.2 alone (zeros)."""
    h = 4 * D
    sd = {
        "register_tokens": (n_register, D),
        "spatial_proj.weight": (D, d_sp),
        "spatial_proj.bias": (D,),
        "action_encoder.base": (D,),
        "action_encoder.fc1.weight": (2 * D, 16),
        "action_encoder.fc1.bias": (2 * D,),
        "action_encoder.fc2.weight": (D, 2 * D),
        "action_encoder.fc2.bias": (D,),
        "step_embed.weight": (int(math.log2(k_max)) + 1, D),
        "signal_embed.weight": (k_max + 1, D),
    }
    for i in range(depth):
        p = f"transformer.layers.{i}."
        sd.update(
            {
                p + "norm1.scale": (D,),
                p + "space.attn.qkv.weight": (3 * D, D),
                p + "space.attn.qkv.bias": (3 * D,),
                p + "space.attn.out.weight": (D, D),
                p + "space.attn.out.bias": (D,),
            }
        )
        if (i + 1) % time_every == 0:
            sd.update(
                {
                    p + "norm2.scale": (D,),
                    p + "time.attn.qkv.weight": (3 * D, D),
                    p + "time.attn.qkv.bias": (3 * D,),
                    p + "time.attn.out.weight": (D, D),
                    p + "time.attn.out.bias": (D,),
                }
            )
        sd.update(
            {
                p + "norm3.scale": (D,),
                p + "mlp.fc_in.weight": (2 * h, D),
                p + "mlp.fc_in.bias": (2 * h,),
                p + "mlp.fc_out.weight": (D, h),
                p + "mlp.fc_out.bias": (D,),
            }
        )
    sd.update({"flow_x_head.weight": (d_sp, D), "flow_x_head.bias": (d_sp,)})
    return {k: torch.randn(s) * 0.02 for k, s in sd.items()}


def test_parameter_counts_match_spec():
    m = Dynamics()
    assert n_params(m) == 42_642_496 and len(m.state_dict()) == 132
    assert n_params(Dynamics(DynamicsConfig(time_every=4))) == 36_335_680
    with torch.device("meta"):
        big = Dynamics(DynamicsConfig(d_model=1024, depth=12))
    assert n_params(big) == 254_187_584
    assert n_params(big) + 21_361_488 == 275_549_072  # "276M total" with the default tokenizer


def test_spec_layout_loads_strictly_and_round_trips():
    sd = _spec_state_dict()
    m = Dynamics()
    m.load_state_dict(sd, strict=True)
    assert list(m.state_dict()) == list(sd)  # same key order (registration order)
    ck = upstream_dynamics_checkpoint(m)
    m2, rep = load_dynamics_checkpoint({**ck, "dynamics": add_prefix(ck["dynamics"])})  # compiled-run keys
    for k, v in m2.state_dict().items():
        assert torch.equal(v, sd[k])
    assert rep["n_params"] == 42_642_496


def test_time_every_4_checkpoint_without_args_builds_right_architecture(tmp_path):
    """Neither time_every nor n_agent in the args: time layers from the keys, one agent token."""
    sd = _spec_state_dict(D=64, depth=8, time_every=4, d_sp=16)
    path = tmp_path / "dyn.pt"
    torch.save(
        {
            "step": 100,
            "epoch": 0,
            "dynamics": add_prefix(sd),
            "opt": {},
            "scaler": {},
            "args": {"d_model_dyn": 64, "n_heads": 4},
        },
        path,
    )
    run = {
        "name": "x",
        "init_paths": {"dynamics": str(path), "tokenizer": None},
        "model": {
            "n_heads": None,
            "k_max": None,
            "space_mode": None,
            "n_agent": None,
            "dropout": 0.0,
            "packing_factor": 2,
        },
    }
    tok_cfg = type("T", (), {"n_latents": 8, "d_bottleneck": 8})()
    dyn, rep = build_dynamics(run, tok_cfg)
    c = dyn.cfg
    assert (c.depth, c.time_every, c.n_agent, c.d_model, c.n_spatial) == (8, 4, 1, 64, 4)
    assert [layer.has_time for layer in dyn.transformer.layers] == [False, False, False, True] * 2
    assert any("n_agent=1" in f for f in rep["fallbacks"]) and any("space_mode" in f for f in rep["fallbacks"])
    assert c.n_tokens == 3 + 4 + 4 + 1 and c.scale_pos_embeds  # agent slot present; no key -> scaled
    x1, h = dyn(torch.zeros(1, 2, 16), torch.full((1, 2), 3), torch.full((1, 2), 7), torch.zeros(1, 2, 4, 16))
    assert h.shape == (1, 2, 1, 64)
    with pytest.raises(FileNotFoundError, match="not found"):
        build_dynamics({**run, "init_paths": {"dynamics": str(tmp_path / "missing.pt")}}, tok_cfg)


def test_checkpoint_args_win_over_defaults_and_config_wins_over_args():
    sd = _spec_state_dict(D=64, depth=2, d_sp=16, k_max=16)
    cfg, rep = dynamics_config_from_state_dict(sd, {"n_heads": 8, "k_max": 16})
    assert (cfg.n_heads, cfg.k_max, cfg.emax) == (8, 16, 4)
    assert rep["source"]["n_heads"] == "args['n_heads']"
    cfg, rep = dynamics_config_from_state_dict(sd, {"n_heads": 8, "k_max": 16}, {"n_heads": 2})
    assert cfg.n_heads == 2 and rep["source"]["n_heads"] == "explicit"
    with pytest.raises(ValueError, match="k_max"):
        dynamics_config_from_state_dict(sd, {"k_max": 8})


def _modes():
    cfg = DynamicsConfig(**TINY)
    return Dynamics(cfg).transformer.modality


@pytest.mark.parametrize("mode", ["wm_agent_isolated", "wm_agent", "agent_reads"])
def test_space_masks_of_agent_modes(mode):
    mod = _modes()
    m = space_mask(mod, mode)
    ag, other = mod == AGENT, mod != AGENT
    if mode == "wm_agent_isolated":
        assert (
            m[ag][:, ag].all() and not m[ag][:, other].any() and not m[other][:, ag].any() and m[other][:, other].all()
        )
    elif mode == "wm_agent":
        assert m.all()
    else:
        assert m[ag].all() and not m[other][:, ag].any() and m[other][:, other].all()


def _rand_model(**kw):
    torch.manual_seed(0)
    m = Dynamics(DynamicsConfig(**{**TINY, **kw})).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m


def _inputs(B=3, T=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, T, 16, generator=g),
        torch.randint(0, 4, (B, T), generator=g),
        torch.randint(0, 8, (B, T), generator=g),
        torch.randn(B, T, 4, 16, generator=g),
    )


def test_fresh_model_outputs_zero_and_agent_modes():
    x1, h = Dynamics(DynamicsConfig(**TINY))(*_inputs())
    assert x1.shape == (3, 4, 4, 16) and torch.count_nonzero(x1) == 0 and h.shape == (3, 4, 1, 32)
    iso = _rand_model()
    _, h = iso(*_inputs())
    assert torch.allclose(h, h[:1].expand_as(h), atol=1e-6)  # inert: same for every batch element
    assert not torch.allclose(h[:, 0], h[:, 1])  # ... but varies with t
    reads = _rand_model(space_mode="agent_reads")
    a, s, g, z = _inputs()
    x1a, ha = reads(a, s, g, z)
    assert not torch.allclose(ha, ha[:1].expand_as(ha), atol=1e-4)  # the agent reads its frame
    x1b, _ = reads(a, s, g, z, agent_tokens=torch.randn(3, 4, 1, 32))
    assert torch.allclose(x1a, x1b, atol=1e-6)  # and no token reads the agent


def test_causality_and_packing():
    m = _rand_model(time_every=2, depth=2)
    a, s, g, z = _inputs(T=5)
    full = m(a, s, g, z)[0]
    pre = m(a[:, :3], s[:, :3], g[:, :3], z[:, :3])[0]
    assert torch.allclose(full[:, :3], pre, atol=1e-5)
    zz = torch.randn(2, 3, 8, 32)
    p = pack_latents(zz, 2)
    assert torch.equal(p[..., 1, :32], zz[..., 2, :]) and torch.equal(p[..., 1, 32:], zz[..., 3, :])
    assert torch.equal(unpack_latents(p, 2), zz)


def test_tau_schedules():
    assert tau_schedule(8, "shortcut", 0.5)[:3] == (2, 1, [0, 4])
    assert tau_schedule(8, "finest")[0] == 8
    with pytest.raises(ValueError):
        tau_schedule(8, "shortcut", 0.3)


@pytest.mark.parametrize("window,time_every", [(None, 1), (6, 1), (None, 2)])
def test_kv_cached_rollout_matches_uncached(window, time_every):
    m = _rand_model(time_every=time_every)
    ctx = torch.randn(2, 4, 4, 16)
    act, mask = torch.randn(2, 10, 16), torch.ones(2, 10, 16)
    kw = dict(schedule="shortcut", d=0.25, window=window)
    a = rollout(m, ctx, act, mask, 6, use_cache=True, generator=torch.Generator().manual_seed(3), **kw)
    b = rollout(m, ctx, act, mask, 6, use_cache=False, generator=torch.Generator().manual_seed(3), **kw)
    assert a.shape == (2, 10, 4, 16) and torch.equal(a[:, :4], ctx)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_sampler_calls_model_k_times_per_frame():
    m = _rand_model()
    calls = []
    h = m.register_forward_hook(lambda *_: calls.append(1))
    rollout(m, torch.randn(1, 3, 4, 16), None, None, 2, schedule="shortcut", d=0.5, use_cache=False)
    h.remove()
    assert len(calls) == 2 * 2
    cache = KVCache()
    assert cache.length == 0


def test_demo_variants_are_tiny_and_the_paper_ones_are_not():
    from dreamer4_libero.config import demo_config, dynamics_variants, load_config

    demo = dynamics_variants(demo_config())
    run = sorted(n for n, r in demo.items() if r["runnable"])
    assert run == [
        "dynamics_aux_agent_reads_leakfree",
        "dynamics_aux_dmcontrol_pretrained",
        "dynamics_aux_param_matched_276M",
        "dynamics_aux_phase6",
        "dynamics_aux_phase6_leakfree",
        "dynamics_dmcontrol_pretrained",
        "dynamics_phase3",
    ]
    long = {"dynamics_phase3": 3000, "dynamics_aux_agent_reads_leakfree": 1500}  # issue 27: positive controls
    assert all(
        r["max_steps"] <= long.get(n, 300) and r["seq_len"] == 32 and r["model"]["d_model"] <= 96
        for n, r in demo.items()
        if r["enabled"] and r["model"]["d_model"] != 1024
    )
    assert all(r["tokenizer_chunk"] == "train" for r in demo.values())
    # only the demo's dynamics_phase3 decays its lr; the paper variants keep upstream's constant lr
    assert [n for n, r in demo.items() if r["lr_schedule"] != "constant"] == ["dynamics_phase3"]
    assert all(r["lr_schedule"] == "constant" for r in dynamics_variants(load_config()).values())
    assert all(r["tokenizer_chunk"] is None for r in dynamics_variants(load_config()).values())  # published
    assert demo["dynamics_aux_param_matched_276M"]["stand_in_for"]
    assert demo["dynamics_aux_phase6"]["bootstrap_start"] == 20 and demo["dynamics_phase3"]["batch_size"] >= 4
    paper = dynamics_variants(load_config())
    assert paper["dynamics_aux_param_matched_276M"]["model"]["d_model"] == 1024
    assert (
        paper["dynamics_aux_phase6"]["aux_input"] == "leaky"
        and paper["dynamics_aux_phase6_leakfree"]["aux_input"] == "action_free"
    )
    assert paper["dynamics_aux_agent_reads_leakfree"]["model"]["space_mode"] == "agent_reads"
    assert (
        paper["dynamics_dmcontrol_pretrained"]["aux_weight"] == 0
        and paper["dynamics_dmcontrol_pretrained"]["bootstrap_start"] == 0
    )
    # the paper config starts from the released DMControl files (dmcontrol_init.source released; make fetch-dmcontrol)
    assert (
        paper["dynamics_dmcontrol_pretrained"]["runnable"]
        and paper["dynamics_dmcontrol_pretrained"]["init_source"] == "released"
    )
    assert [
        paper[n]["max_steps"] for n in ("dynamics_phase3", "dynamics_aux_phase6", "dynamics_aux_param_matched_276M")
    ] == [30000, 30000, 20000]
    assert (
        paper["dynamics_phase3"]["gpus"] == 5
        and paper["dynamics_phase3"]["batch_size"] == 4
        and paper["dynamics_phase3"]["save_every"] == 10000
    )


def test_variant_typos_are_errors_naming_the_key():
    from dreamer4_libero.config import ConfigError, deep_merge, dynamics_variants, load_config

    cfg = deep_merge(load_config(), {"dynamics": {"variants": {"mine": {"aux_wieght": 0.1}}}})
    with pytest.raises(ConfigError, match="dynamics.variants.mine"):
        dynamics_variants(cfg)
