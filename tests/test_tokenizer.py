"""Causal video tokenizer, shared blocks, upstream state-dict layout and MAE loss
(dreamer4_model.md §1, §2, §7, §12)."""

from __future__ import annotations

import math

import pytest
import torch

from dreamer4_libero.models import blocks
from dreamer4_libero.models.blocks import (
    AGENT,
    IMAGE,
    LATENT,
    MLP,
    Attention,
    Layer,
    RMSNorm,
    SpaceAttention,
    TimeAttention,
    Transformer,
    add_positions,
    sinusoid_table,
    space_mask,
)
from dreamer4_libero.models.tokenizer import Tokenizer, TokenizerConfig, patchify, sample_mae_mask, unpatchify
from dreamer4_libero.models.upstream import (
    add_prefix,
    load_tokenizer_checkpoint,
    save_upstream_tokenizer_checkpoint,
    strip_prefixes,
    to_upstream_state_dict,
    tokenizer_config_from_state_dict,
    upstream_tokenizer_checkpoint,
)
from dreamer4_libero.objectives.mae import masked_mse, tokenizer_loss

TINY = TokenizerConfig(H=32, W=32, patch=4, d_model=64, n_heads=4, depth=2, n_latents=4, d_bottleneck=8, dropout=0.0)


def tiny(**kw) -> Tokenizer:
    torch.manual_seed(0)
    return Tokenizer(TokenizerConfig(**{**TINY.to_dict(), **kw}))


def spec_keys(D=256, h=1024, depth=8, time_layers=None, L=16, Db=32, Dp=48, Np=1024) -> list[tuple[str, tuple]]:
    """The tokenizer key list of §7.1, written out from the spec (independent of the model code)."""
    time_layers = range(depth) if time_layers is None else time_layers

    def layer(prefix, i):
        out = [
            (f"{prefix}.norm1.scale", (D,)),
            (f"{prefix}.space.attn.qkv.weight", (3 * D, D)),
            (f"{prefix}.space.attn.qkv.bias", (3 * D,)),
            (f"{prefix}.space.attn.out.weight", (D, D)),
            (f"{prefix}.space.attn.out.bias", (D,)),
        ]
        if i in time_layers:
            out += [
                (f"{prefix}.norm2.scale", (D,)),
                (f"{prefix}.time.attn.qkv.weight", (3 * D, D)),
                (f"{prefix}.time.attn.qkv.bias", (3 * D,)),
                (f"{prefix}.time.attn.out.weight", (D, D)),
                (f"{prefix}.time.attn.out.bias", (D,)),
            ]
        return out + [
            (f"{prefix}.norm3.scale", (D,)),
            (f"{prefix}.mlp.fc_in.weight", (2 * h, D)),
            (f"{prefix}.mlp.fc_in.bias", (2 * h,)),
            (f"{prefix}.mlp.fc_out.weight", (D, h)),
            (f"{prefix}.mlp.fc_out.bias", (D,)),
        ]

    keys = [
        ("encoder.latents", (L, D)),
        ("encoder.patch_proj.weight", (D, Dp)),
        ("encoder.patch_proj.bias", (D,)),
        ("encoder.bottleneck_proj.weight", (Db, D)),
        ("encoder.bottleneck_proj.bias", (Db,)),
    ]
    for i in range(depth):
        keys += layer(f"encoder.transformer.layers.{i}", i)
    keys += [
        ("encoder.mae.mask_token", (D,)),
        ("decoder.patch_queries", (Np, D)),
        ("decoder.up_proj.weight", (D, Db)),
        ("decoder.up_proj.bias", (D,)),
        ("decoder.patch_head.weight", (Dp, D)),
        ("decoder.patch_head.bias", (Dp,)),
    ]
    for i in range(depth):
        keys += layer(f"decoder.transformer.layers.{i}", i)
    return keys


def random_upstream_dict(keys, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*shape, generator=g) * 0.1 + (1.0 if k.endswith("scale") else 0.0) for k, shape in keys}


TINY_KEYS = dict(D=64, h=256, depth=2, L=4, Db=8, Dp=48, Np=64)


def dependency(fn, x):
    """dep[i, j] = output token i depends on input token j (tokens = all dims but the last)."""
    J = torch.autograd.functional.jacobian(fn, x)  # (*tok, D, *tok, D)
    n = x[..., 0].numel()
    return J.reshape(n, x.shape[-1], n, x.shape[-1]).abs().sum((1, 3)) > 0


# --------------------------------------------------------------------------------------------- blocks


def test_rmsnorm_and_mlp_formulas():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8)
    n = RMSNorm(8)
    with torch.no_grad():
        n.scale.copy_(torch.randn(8))
    ref = x * n.scale / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(n(x), ref)
    assert [k for k, _ in n.named_parameters()] == ["scale"]

    m = MLP(8, 4.0).eval()
    assert m.fc_in.weight.shape == (64, 8) and m.fc_out.weight.shape == (8, 32)
    a = m.fc_in(x)
    u, v = a[..., :32], a[..., 32:]  # second half gates
    torch.testing.assert_close(m(x), m.fc_out(u * torch.nn.functional.silu(v)))


def test_attention_heads_and_shapes():
    torch.manual_seed(0)
    att = Attention(16, 4).eval()
    x = torch.randn(3, 5, 16)
    q, k, v = att.qkv(x).split(16, -1)
    heads = []
    for h in range(4):
        s = slice(4 * h, 4 * h + 4)
        w = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / 2.0, -1)
        heads.append(w @ v[..., s])
    torch.testing.assert_close(att(x), att.out(torch.cat(heads, -1)), atol=1e-6, rtol=1e-5)
    assert sorted(k for k, _ in att.named_parameters()) == ["out.bias", "out.weight", "qkv.bias", "qkv.weight"]
    x4 = torch.randn(2, 3, 6, 16)
    mask = torch.ones(6, 6, dtype=torch.bool)
    assert SpaceAttention(16, 4)(x4, mask).shape == x4.shape
    assert TimeAttention(16, 4)(x4).shape == x4.shape
    assert TimeAttention(16, 4, n_slots=2)(x4).shape == x4.shape
    assert Layer(16, 4)(x4, mask).shape == x4.shape


def test_space_mask_patterns_exact():
    T, F = True, False
    tok = torch.tensor([LATENT, LATENT, IMAGE, IMAGE, IMAGE])
    enc = [[T, T, T, T, T]] * 2 + [[F, F, T, T, T]] * 3  # patches do not see latents
    dec = [[T, T, F, F, F]] * 2 + [[T, T, T, T, T]] * 3  # latents see latents only
    assert space_mask(tok, "encoder").tolist() == enc
    assert space_mask(tok, "decoder").tolist() == dec
    dyn = torch.tensor([1, 5, 6, 4, 4, 3, AGENT])  # action, sig, step, spatial x2, reg, agent
    assert space_mask(dyn, "wm_agent").all()
    iso = space_mask(dyn, "wm_agent_isolated")
    assert iso[:6, :6].all() and not iso[:6, 6].any() and not iso[6, :6].any() and iso[6, 6]
    assert space_mask(tok, lambda q, k: q == k).tolist() == [[T, T, F, F, F]] * 2 + [[F, F, T, T, T]] * 3
    assert set(blocks.SPACE_MASKS) >= {"encoder", "decoder", "wm_agent", "wm_agent_isolated"}


def test_space_attention_effective_pattern():
    torch.manual_seed(0)
    tok = torch.tensor([LATENT, LATENT, IMAGE, IMAGE, IMAGE])
    att = SpaceAttention(8, 2).eval()
    x = torch.randn(1, 1, 5, 8)
    for mode in ("encoder", "decoder"):
        m = space_mask(tok, mode)
        assert torch.equal(dependency(lambda y: att(y, m), x), m)


def test_time_attention_causal_per_slot():
    torch.manual_seed(0)
    T_, S, n = 3, 4, 2
    x = torch.randn(1, T_, S, 8)
    t = torch.arange(T_).repeat_interleave(S)
    s = torch.arange(S).repeat(T_)
    causal = (s[:, None] == s[None, :]) & (t[None, :] <= t[:, None])  # (t,s) sees (t'<=t, s)
    full = TimeAttention(8, 2).eval()
    assert torch.equal(dependency(full, x), causal)
    part = TimeAttention(8, 2, n_slots=n).eval()
    dep = dependency(part, x)
    latent = s < n
    assert torch.equal(dep[latent], causal[latent])
    assert torch.equal(dep[~latent], torch.eye(T_ * S, dtype=torch.bool)[~latent])
    assert torch.equal(part(x)[:, :, n:], x[:, :, n:])  # non-latent slots: copy of input


def test_layer_keys_and_latents_only_time_quirk():
    torch.manual_seed(0)
    with_t, without = Layer(8, 2, has_time=True, time_slots=2), Layer(8, 2, has_time=False)
    assert len(with_t.state_dict()) == 15 and len(without.state_dict()) == 10
    assert not any(k.startswith(("norm2", "time")) for k in without.state_dict())
    x = torch.randn(2, 3, 5, 8)
    mask = torch.ones(5, 5, dtype=torch.bool)
    layer = with_t.eval()
    x1 = x + layer.space(layer.norm1(x), mask)
    x2 = x1 + layer.time(layer.norm2(x1))
    torch.testing.assert_close(x2[:, :, 2:], x1[:, :, 2:] + layer.norm2(x1)[:, :, 2:])  # §11.8: x + norm2(x)
    torch.testing.assert_close(layer(x, mask), x2 + layer.mlp(layer.norm3(x2)))
    tr = Transformer(8, 2, 4, torch.tensor([LATENT] * 2 + [IMAGE] * 3), "encoder", time_every=2, time_slots=2)
    assert [hasattr(layer, "time") for layer in tr.layers] == [False, True, False, True]
    assert len(tr.state_dict()) == 2 * 15 + 2 * 10  # no buffers persisted
    assert {n for n, _ in tr.named_buffers()} == {"modality", "space_mask"}


def test_sinusoid_table_and_positions():
    tab = sinusoid_table(5, 6)
    assert tab[0].tolist() == [0.0, 1.0] * 3
    p = torch.arange(5.0)
    torch.testing.assert_close(tab[:, 0], torch.sin(p))
    torch.testing.assert_close(tab[:, 1], torch.cos(p))
    torch.testing.assert_close(tab[:, 3], torch.cos(p * math.exp(-(2 / 6) * math.log(10000))))
    x = torch.zeros(2, 3, 4, 6)
    pos = tab[:3, None, :] + sinusoid_table(4, 6)[None]
    torch.testing.assert_close(add_positions(x, scale=False), pos.expand_as(x))
    torch.testing.assert_close(add_positions(x, scale=True), (pos / math.sqrt(6)).expand_as(x))


# --------------------------------------------------------------------------------------------- tokenizer


def test_patchify_vectors():
    x = torch.arange(2 * 3 * 128 * 128, dtype=torch.float32).view(1, 2, 3, 128, 128)
    p = patchify(x, 4)
    assert p.shape == (1, 2, 1024, 48)
    f = x[0, 0]
    assert p[0, 0, 0, 1] == f[0, 0, 1] and p[0, 0, 0, 4] == f[0, 1, 0] and p[0, 0, 0, 16] == f[1, 0, 0]
    assert p[0, 0, 1, 0] == f[0, 0, 4] and p[0, 0, 32, 0] == f[0, 4, 0]  # patch 1 at x=4; row-major
    assert p[0, 1, 0, 0] == x[0, 1, 0, 0, 0]
    assert torch.equal(p[0, 0, 33], f[:, 4:8, 4:8].reshape(48))  # (channel, row, col) order
    assert torch.equal(unpatchify(p, 4, 128, 128), x)


def test_default_config_counts_and_keys():
    assert TokenizerConfig() == TokenizerConfig(
        H=128,
        W=128,
        C=3,
        patch=4,
        d_model=256,
        n_heads=4,
        depth=8,
        n_latents=16,
        d_bottleneck=32,
        dropout=0.05,
        mlp_ratio=4.0,
        time_every=1,
        mae_p_min=0.0,
        mae_p_max=0.9,
        scale_pos_embeds=False,
    )
    with torch.device("meta"):
        m = Tokenizer()
    sd = m.state_dict()
    assert len(sd) == 251
    assert sum(p.numel() for p in m.parameters()) == 21_361_488
    assert sum(p.numel() for p in m.encoder.parameters()) == 10_551_840
    assert sum(p.numel() for p in m.decoder.parameters()) == 10_809_648
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == spec_keys()  # names, shapes and order of §7.1
    with torch.device("meta"):
        m4 = Tokenizer(TokenizerConfig(time_every=4))
    assert sum(p.numel() for p in m4.parameters()) == 18_200_400
    assert [(k, tuple(v.shape)) for k, v in m4.state_dict().items()] == spec_keys(time_layers={3, 7})


def test_default_shapes_table():
    """§12 shapes for B=1, T=2 at the default config (eval mode: no MAE)."""
    torch.manual_seed(0)
    m = Tokenizer().eval()
    seen = {}
    m.encoder.transformer.register_forward_hook(lambda mod, a, o: seen.__setitem__("enc", a[0].shape))
    m.decoder.transformer.register_forward_hook(lambda mod, a, o: seen.__setitem__("dec", a[0].shape))
    x = torch.rand(1, 2, 3, 128, 128)
    with torch.no_grad():
        out = m(x)
    assert out["target_patches"].shape == (1, 2, 1024, 48)
    assert seen == {"enc": (1, 2, 1040, 256), "dec": (1, 2, 1040, 256)}
    assert out["z"].shape == (1, 2, 16, 32) and out["z"].abs().max() < 1
    assert out["recon_patches"].shape == (1, 2, 1024, 48) and out["recon"].shape == (1, 2, 3, 128, 128)
    assert 0 < out["recon"].min() and out["recon"].max() < 1
    assert not out["mae_mask"].any() and out["mae_mask"].shape == (1, 2, 1024, 1)


def test_causality_encoder_and_decoder():
    m = tiny().eval()
    x = torch.rand(2, 4, 3, 32, 32)
    with torch.no_grad():
        z = m.encode(x)
        torch.testing.assert_close(m.encode(x[:, :3]), z[:, :3], atol=1e-6, rtol=1e-5)
        y = x.clone()
        y[:, 3] = torch.rand(2, 3, 32, 32)
        torch.testing.assert_close(m.encode(y)[:, :3], z[:, :3], atol=1e-6, rtol=1e-5)
        rec = m.decode(z)
        torch.testing.assert_close(m.decode(z[:, :2]), rec[:, :2], atol=1e-6, rtol=1e-5)
        assert not torch.allclose(m.decode(z[:, 1:]), rec[:, 1:])  # positions restart per window


def test_mae_off_in_eval_on_in_train():
    m = tiny(mae_p_min=0.0, mae_p_max=0.9).eval()
    x = torch.rand(2, 3, 3, 32, 32)
    rng = torch.get_rng_state()
    with torch.no_grad():
        a, b = m(x), m(x)
    assert torch.equal(torch.get_rng_state(), rng)  # no random draws in eval
    assert torch.equal(a["recon"], b["recon"]) and not a["mae_mask"].any()
    assert torch.equal(a["keep_prob"], torch.ones(2, 3, 1))
    with torch.no_grad():
        forced = m(x, mae=True)
    assert forced["mae_mask"].any()  # explicit switch in eval
    m.train()
    with torch.no_grad():
        out = m(x)
        off = m(x, mae=False)
    assert not off["mae_mask"].any()
    frac = out["mae_mask"].float().mean((2, 3))  # (B,T)
    assert out["mae_mask"].any() and (frac <= 0.9 + 0.2).all()
    assert ((out["keep_prob"] >= 0.1 - 1e-6) & (out["keep_prob"] <= 1.0)).all()
    torch.manual_seed(1)
    mask, keep = sample_mae_mask(4, 8, 4096, 0.3, 0.6)
    p = 1 - keep[..., 0]
    assert ((p >= 0.3) & (p <= 0.6)).all()
    assert (mask.float().mean((2, 3)) - p).abs().max() < 0.05
    disabled = tiny(mae_p_min=0.0, mae_p_max=0.0).train()
    rng = torch.get_rng_state()
    assert not disabled(x)["mae_mask"].any() and torch.equal(torch.get_rng_state(), rng)


def test_mae_replaces_projected_tokens_by_mask_token():
    m = tiny()
    tok = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    out, mask, keep = m.encoder.mae(tok, enabled=True)
    mk = mask[..., 0]
    assert mk.any() and (~mk).any()
    assert torch.equal(out[mk], m.encoder.mae.mask_token.detach().expand(int(mk.sum()), -1))
    assert torch.equal(out[~mk], tok[~mk])


# --------------------------------------------------------------------------------------------- upstream layout


def test_upstream_layout_strict_load_and_roundtrip():
    keys = spec_keys(**TINY_KEYS)
    up = random_upstream_dict(keys)
    m = tiny()
    m.load_state_dict(up, strict=True)  # dict built from §7.1 loads
    back = to_upstream_state_dict(m)
    assert list(back) == [k for k, _ in keys] and all(torch.equal(back[k], up[k]) for k in up)
    m2, report = load_tokenizer_checkpoint(upstream_tokenizer_checkpoint(m))
    x = torch.rand(1, 2, 3, 32, 32)
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(x)["recon"], m2(x)["recon"])  # ours -> dict -> ours
    assert m2.cfg == m.cfg and not m2.training and report["fallbacks"] == []


def test_orig_mod_and_module_prefixes(tmp_path):
    m = tiny()
    sd = m.state_dict()
    assert list(strip_prefixes(add_prefix(add_prefix(sd, "_orig_mod."), "module."))) == list(sd)
    path = tmp_path / "latest.pt"
    save_upstream_tokenizer_checkpoint(path, m, step=7, compiled=True)
    raw = torch.load(path, weights_only=True)
    assert all(k.startswith("_orig_mod.") for k in raw["model"])
    with pytest.raises(RuntimeError):
        Tokenizer(m.cfg).load_state_dict(raw["model"], strict=True)  # upstream loaders fail here
    m2, report = load_tokenizer_checkpoint(path)
    assert report["step"] == 7
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_config_from_foreign_state_dict_and_fallbacks():
    up = random_upstream_dict(spec_keys(**{**TINY_KEYS, "depth": 4}, time_layers={1, 3}))
    cfg, report = tokenizer_config_from_state_dict(add_prefix(up))  # no args at all
    assert (cfg.d_model, cfg.depth, cfg.time_every, cfg.n_latents, cfg.d_bottleneck) == (64, 4, 2, 4, 8)
    assert (cfg.H, cfg.W, cfg.C, cfg.patch, cfg.mlp_ratio) == (32, 32, 3, 4, 4.0)
    assert cfg.scale_pos_embeds is True and report["source"]["scale_pos_embeds"] == "default"
    assert any(f.startswith("n_heads") for f in report["fallbacks"])
    assert any(f.startswith("scale_pos_embeds=True") for f in report["fallbacks"])
    args = {
        "n_heads": 8,
        "time_every": 1,
        "scale_pos_embeds": False,
        "H": 32,
        "W": 32,
        "C": 3,
        "patch": 4,
        "dropout": 0.0,
        "mae_p_min": 0.0,
        "mae_p_max": 0.5,
    }
    cfg, report = tokenizer_config_from_state_dict(up, args, explicit={"n_heads": 2, "dropout": None})
    assert cfg.n_heads == 2 and report["source"]["n_heads"] == "explicit"
    assert cfg.dropout == 0.0 and report["source"]["dropout"] == "args"
    assert cfg.time_every == 2 and any("time_every" in n for n in report["notes"])  # keys beat args
    assert cfg.scale_pos_embeds is False and cfg.mae_p_max == 0.5 and report["fallbacks"] == []
    model, _ = load_tokenizer_checkpoint({"model": up, "args": {"n_heads": 4}, "scale_pos_embeds": False, "step": 3})
    assert model.cfg.scale_pos_embeds is False  # top-level duplicate used
    assert sum(p.numel() for p in model.parameters()) == sum(v.numel() for v in up.values())


# --------------------------------------------------------------------------------------------- loss


def test_masked_mse_target():
    pred, tgt = torch.rand(2, 3, 10, 48), torch.rand(2, 3, 10, 48)
    mask = torch.rand(2, 3, 10, 1) < 0.4
    ref = ((pred - tgt) ** 2)[mask.expand_as(pred)].sum() / (mask.sum() * 48)
    torch.testing.assert_close(masked_mse(pred, tgt, mask), ref)
    pred2 = torch.where(mask, pred, tgt + 5)  # visible-patch errors are ignored
    torch.testing.assert_close(masked_mse(pred2, tgt, mask), ref)
    assert masked_mse(pred, tgt, torch.zeros_like(mask)) == 0


def test_tokenizer_loss_lpips_term_and_gradients():
    m = tiny(mae_p_min=0.2, mae_p_max=0.9).train()
    torch.manual_seed(0)
    x = torch.rand(2, 5, 3, 32, 32)
    out = m(x)
    calls = []

    def fake_lpips(a, b):
        calls.append((a.detach().clone(), b.detach().clone()))
        return (a - b).abs().mean((1, 2, 3))

    loss, met = tokenizer_loss(
        out["recon"],
        x,
        out["mae_mask"],
        lpips_fn=fake_lpips,
        lpips_weight=0.2,
        lpips_frac=0.5,
        keep_prob=out["keep_prob"],
    )
    ((a, b),) = calls
    assert a.shape == (2 * 3, 3, 32, 32)  # frames 0, 2, 4 of each clip
    assert a.min() >= 0 and a.max() <= 1  # [0,1]; the callable maps to [-1,1]
    torch.testing.assert_close(b, x[:, ::2].reshape(-1, 3, 32, 32))
    comp = torch.where(out["mae_mask"], out["recon_patches"], out["target_patches"]).detach()
    torch.testing.assert_close(a, unpatchify(comp, 4, 32, 32)[:, ::2].reshape(-1, 3, 32, 32))
    mse = masked_mse(out["recon_patches"], out["target_patches"], out["mae_mask"])
    torch.testing.assert_close(met["mse"], mse.detach())
    torch.testing.assert_close(loss, mse + 0.2 * (a - b).abs().mean())
    torch.testing.assert_close(met["psnr"], 10 * torch.log10(1 / mse.detach()))
    assert {"loss", "mse", "lpips", "psnr", "mse_all", "masked_frac", "keep_prob"} <= set(met)
    loss.backward()
    for name in (
        "encoder.latents",
        "encoder.mae.mask_token",
        "encoder.patch_proj.weight",
        "encoder.transformer.layers.1.time.attn.qkv.weight",
        "decoder.patch_queries",
        "decoder.patch_head.weight",
        "decoder.up_proj.weight",
    ):
        g = m.get_parameter(name).grad
        assert g is not None and g.abs().sum() > 0, name
    no_lp, met2 = tokenizer_loss(out["recon"].detach(), x, out["mae_mask"])
    torch.testing.assert_close(no_lp, mse.detach())
    assert met2["lpips"] == 0


def test_visible_mse_weight_adds_the_visible_patch_term_only():
    """issue 27: visible_mse_weight w adds w * MSE over the unmasked patches; w = 0 is upstream's loss exactly."""
    pred, tgt = torch.rand(2, 3, 4, 8, 8), torch.rand(2, 3, 4, 8, 8)  # (B,T,C,H,W) frames, patch 4 -> Np 4
    mask = torch.tensor([True, False, False, True]).view(1, 1, 4, 1).expand(2, 3, 4, 1)
    pp, tp = patchify(pred, 4), patchify(tgt, 4)  # (B,T,4,48)
    masked_ref = ((pp - tp) ** 2)[:, :, [0, 3]].mean()
    visible_ref = ((pp - tp) ** 2)[:, :, [1, 2]].mean()
    up, met = tokenizer_loss(pred, tgt, mask)
    torch.testing.assert_close(up, masked_ref)  # upstream: masked patches only
    torch.testing.assert_close(met["mse_visible"], visible_ref)  # logged either way
    ours, _ = tokenizer_loss(pred, tgt, mask, visible_weight=0.5)
    torch.testing.assert_close(ours, masked_ref + 0.5 * visible_ref)
    # gradients reach the visible patches only when the weight is on
    for w, expect in ((0.0, 0.0), (1.0, None)):
        p = pred.clone().requires_grad_(True)
        tokenizer_loss(p, tgt, mask, visible_weight=w)[0].backward()
        g_visible = patchify(p.grad, 4)[:, :, [1, 2]].abs().sum().item()
        assert (g_visible == 0.0) if expect == 0.0 else (g_visible > 0), (w, g_visible)


def test_tiny_train_step_reduces_loss():
    m = tiny(dropout=0.05, mae_p_max=0.5).train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    torch.manual_seed(0)
    x = torch.rand(2, 2, 3, 32, 32)
    losses = []
    for _ in range(6):
        out = m(x)
        loss, _ = tokenizer_loss(out["recon"], x, torch.ones_like(out["mae_mask"]))  # full-frame MSE
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
