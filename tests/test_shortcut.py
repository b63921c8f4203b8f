"""Shortcut-forcing objective (dreamer4_model.md §4) and the inverse-dynamics aux loss (issue 12)."""

import pytest
import torch

from dreamer4_libero.models.dynamics import Dynamics, DynamicsConfig, InverseDynamicsHead
from dreamer4_libero.objectives.shortcut import n_self_rows, sample_levels, shortcut_loss

CFG = dict(d_model=32, depth=2, n_heads=2, n_spatial=4, d_spatial=16)


def _model(**kw):
    torch.manual_seed(0)
    m = Dynamics(DynamicsConfig(**{**CFG, **kw}))
    with torch.no_grad():
        m.flow_x_head.weight.normal_(0, 0.1)  # non-zero outputs
    return m


def _batch(B=4, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    act = torch.rand(B, T, 16, generator=g) * 2 - 1
    mask = torch.zeros(B, T, 16)
    mask[:, 1:, :7] = 1
    return torch.randn(B, T, 4, 16, generator=g).tanh(), act * mask, mask


@pytest.mark.parametrize("B,expected", [(1, 0), (2, 0), (4, 1), (10, 2), (18, 4), (24, 6)])
def test_self_row_count_rounds_half_to_even(B, expected):
    assert n_self_rows(B, 0.25) == expected


def test_levels_grid_and_rng_order():
    torch.manual_seed(5)
    step, sig, tau = sample_levels(8, 50, 2, 8)
    assert (step[:6] == 3).all() and set(step[6:].unique().tolist()) <= {0, 1, 2}
    K = 2**step
    assert torch.equal(sig, (tau * 8).round().long()) and (tau < 1).all()
    assert torch.allclose(tau * K, (tau * K).round())  # tau on its row's grid
    torch.manual_seed(5)
    r = torch.randint(0, 3, (2, 50))  # randint first ...
    u = torch.rand(8, 50)  # ... then rand
    assert torch.equal(step[6:], r)
    assert torch.equal(sig[:6], torch.floor(u[:6] * 8).long())


def test_loss_composition_and_bootstrap_switch():
    m = _model()
    z1, act, mask = _batch()
    torch.manual_seed(1)
    before, mb = shortcut_loss(m, z1, act, mask, step=9, bootstrap_start=10)
    torch.manual_seed(1)
    after, ma = shortcut_loss(m, z1, act, mask, step=10, bootstrap_start=10)
    assert mb["loss_self"] == 0 and mb["bootstrap_mse"] == 0 and mb["b_self"] == 1
    assert torch.isclose(before, mb["loss_emp"] * 3 / 4)  # flow loss scaled by B_emp/B
    assert ma["loss_self"] > 0 and ma["bootstrap_mse"] > 0
    assert torch.isclose(after, (ma["loss_emp"] * 3 + ma["loss_self"]) / 4)
    assert torch.isclose(ma["loss_emp"], mb["loss_emp"])  # same draws, same flow part
    # B = 2 has no self rows: the bootstrap never runs
    torch.manual_seed(1)
    _, m2 = shortcut_loss(m, z1[:2], act[:2], mask[:2], step=100, bootstrap_start=0)
    assert m2["loss_self"] == 0 and m2["b_self"] == 0


def test_flow_loss_is_weighted_x_prediction_mse():
    m = _model()
    z1, act, mask = _batch(B=2)
    torch.manual_seed(3)
    loss, met = shortcut_loss(m, z1, act, mask, step=0, bootstrap_start=0, self_fraction=0.0)
    torch.manual_seed(3)
    step, sig, tau = sample_levels(2, 6, 0, 8)
    z0 = torch.randn_like(z1)
    zt = (1 - tau[..., None, None]) * z0 + tau[..., None, None] * z1
    x1 = m(act, step, sig, zt, act_mask=mask)[0]
    per = (x1 - z1).pow(2).mean(dim=(-2, -1))
    assert torch.isclose(loss, ((0.9 * tau + 0.1) * per).mean(), atol=1e-7)
    assert torch.isclose(met["flow_mse"], per.mean(), atol=1e-7)


class Recorder(InverseDynamicsHead):
    def forward(self, h):
        self.last = super().forward(h)
        return self.last


def _aux_pred(m, head, z1, act, mask, aux_input):
    torch.manual_seed(7)
    shortcut_loss(m, z1, act, mask, step=0, bootstrap_start=100, aux_head=head, aux_weight=0.05, aux_input=aux_input)
    return head.last.detach()


def test_action_free_aux_never_sees_actions_and_leaky_does():
    m = _model()
    head = Recorder(32)
    z1, act, mask = _batch()
    for aux_input, should_change in (("action_free", False), ("leaky", True)):
        base = _aux_pred(m, head, z1, act, mask, aux_input)
        assert base.shape == (3, 5, 16)  # empirical rows, t = 0..T-2
        for t in (1, 3, 5):  # a_t lives in the token of frame t
            act2 = act.clone()
            act2[:, t, :7] = -act2[:, t, :7] + 0.3
            changed = not torch.allclose(_aux_pred(m, head, z1, act2, mask, aux_input), base, atol=1e-6)
            assert changed == should_change, (aux_input, t)


def test_aux_loss_adds_weighted_masked_mse_and_trains_the_transformer():
    m = _model()
    head = InverseDynamicsHead(32)
    z1, act, mask = _batch()
    torch.manual_seed(2)
    loss_aux, met = shortcut_loss(m, z1, act, mask, step=0, bootstrap_start=100, aux_head=head, aux_weight=0.5)
    torch.manual_seed(2)
    loss_plain, _ = shortcut_loss(m, z1, act, mask, step=0, bootstrap_start=100)
    assert torch.isclose(loss_aux, loss_plain + 0.5 * met["aux_mse"], atol=1e-6)
    m.zero_grad()
    (met["aux_mse"] * 0 + loss_aux - loss_plain.detach()).backward()
    assert m.transformer.layers[0].space.attn.qkv.weight.grad.abs().sum() > 0  # gradients reach the transformer
    assert head.fc1.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="aux_input"):
        shortcut_loss(m, z1, act, mask, step=0, bootstrap_start=0, aux_head=head, aux_weight=0.1, aux_input="x")


def test_bootstrap_target_is_detached():
    """Only the main pass carries gradient: passes A/B feed a stop-gradient target."""
    m = _model()
    z1, act, mask = _batch()
    torch.manual_seed(4)
    loss, met = shortcut_loss(m, z1, act, mask, step=5, bootstrap_start=0, self_fraction=0.5)
    assert met["b_self"] == 2 and met["loss_self"] > 0
    loss.backward()
    g = m.flow_x_head.weight.grad.clone()
    assert torch.isfinite(g).all() and g.abs().sum() > 0
