"""Shortcut-forcing objective with x-prediction (dreamer4_model.md §4) and the inverse-dynamics aux loss.

Rows of a batch: the first B_emp are "empirical" (flow) rows at the finest step d = 1/k_max; the
last B_self = clamp(round(self_fraction * B), 0, B - 1) are "self" (bootstrap) rows with d in
{1, 1/2, ..., 2/k_max}. Every frame gets its own signal level tau on its row's grid:

    z_tilde = (1 - tau) z0 + tau z1,   z0 ~ N(0, I)                                   (§4.3)
    w(tau)  = 0.9 tau + 0.1                                                            (§4.4)
    flow:      w * mean (x1_hat - z1)^2                                                (§4.6)
    bootstrap: w * (1 - tau)^2 * mean (v_hat - sg[(bA + bB) / 2])^2, from step bootstrap_start (§4.7)
    loss = (loss_emp * B_emp + loss_self * B_self) / B                                 (§4.8)

Aux head (issue 12): a_t is predicted from [mean_s h_t, mean_s h_{t+1}] of the spatial hidden
states of the empirical rows, t = 0..T-2, target = the action token of frame t+1, MSE over the
action mask's valid dims, times aux_weight. `leaky` reads the main pass (the published setup: the
action token of frame t+1 is visible to every spatial token of that frame, §11.4); `action_free`
reads extra rows of the same forward call: the empirical rows again with the same noisy latents,
signal and step indices but every action replaced by the null token (zero action, zero mask).

Deviation (values identical): the two bootstrap half-step passes run under no_grad (upstream
builds graphs it then detaches, §11.14), so one forward with one backward serves DDP.
"""

from __future__ import annotations

import torch

AUX_INPUTS = ("leaky", "action_free")


def n_self_rows(B: int, self_fraction: float) -> int:
    """B_self = clamp(round(self_fraction * B), 0, B - 1), Python round (half to even)."""
    return max(0, min(round(self_fraction * B), B - 1))


def sample_levels(B: int, T: int, B_self: int, k_max: int, device=None, generator=None):
    """Step and signal indices + tau (§4.1-2). RNG order: randint (B_self,T) if B_self > 0, then rand (B,T).

    Returns step_idx (B,T) long, signal_idx (B,T) long, tau (B,T) float32.
    """
    emax = k_max.bit_length() - 1
    step_idx = torch.full((B, T), emax, dtype=torch.long, device=device)
    if B_self > 0:
        step_idx[B - B_self :] = torch.randint(0, emax, (B_self, T), device=device, generator=generator)
    K = torch.pow(2, step_idx)  # (B,T) Euler steps from noise to data at this level (d = 1/K)
    j = torch.floor(torch.rand(B, T, device=device, generator=generator) * K).long()
    tau = j.float() / K.float()
    signal_idx = j * (k_max // K)  # (B,T) tau on the finest grid, in units of 1/k_max
    return step_idx, signal_idx, tau


def flow_weight(tau: torch.Tensor) -> torch.Tensor:
    return 0.9 * tau + 0.1


def _per_frame_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,T,N,D) x2 -> (B,T) fp32 mean over tokens and features."""
    return (a.float() - b.float()).pow(2).mean(dim=(-2, -1))


def null_actions(actions: torch.Tensor, act_mask: torch.Tensor | None):
    """The null action token everywhere: zero actions with a zero mask (what frame 0 sees)."""
    mask = torch.zeros_like(act_mask) if act_mask is not None else torch.zeros_like(actions)
    return torch.zeros_like(actions), mask


def aux_action_mse(pred: torch.Tensor, actions: torch.Tensor, act_mask: torch.Tensor | None) -> torch.Tensor:
    """pred (B,T-1,A) vs target actions[:, 1:] over the valid dims of act_mask[:, 1:] (fp32)."""
    target = actions[:, 1:].float()
    mask = torch.ones_like(target) if act_mask is None else act_mask[:, 1:].float()
    return ((pred.float() - target).pow(2) * mask).sum() / mask.sum().clamp_min(1.0)


def shortcut_loss(
    dyn,
    z1: torch.Tensor,
    actions: torch.Tensor | None,
    act_mask: torch.Tensor | None,
    *,
    step: int,
    bootstrap_start: int,
    self_fraction: float = 0.25,
    aux_head=None,
    aux_weight: float = 0.0,
    aux_input: str = "action_free",
):
    """Shortcut-forcing loss of `dyn` (a models.dynamics.Dynamics) on clean packed latents z1 (B,T,N,D).

    actions/act_mask (B,T,A) are aligned with frames (token t = the action that produced frame t).
    Returns (loss, metrics) with detached 0-dim metric tensors: flow_mse, bootstrap_mse, loss_emp,
    loss_self, sigma_mean, b_self, and aux_mse / aux_loss when an aux head is given.
    """
    B, T = z1.shape[:2]
    k_max = dyn.cfg.k_max
    B_self = n_self_rows(B, self_fraction)
    B_emp = B - B_self
    step_idx, signal_idx, tau = sample_levels(B, T, B_self, k_max, z1.device)
    z1 = z1.float()
    z0 = torch.randn_like(z1)
    tau4 = tau[..., None, None]  # (B,T,1,1)
    z_tilde = (1 - tau4) * z0 + tau4 * z1
    w = flow_weight(tau)

    use_aux = aux_head is not None and aux_weight > 0
    if use_aux and aux_input not in AUX_INPUTS:
        raise ValueError(f"aux_input must be one of {AUX_INPUTS}, got {aux_input!r}")
    if use_aux and actions is None:
        raise ValueError("the inverse-dynamics aux head needs actions (use_actions) to predict")
    acts, mask, steps, sigs, zin = actions, act_mask, step_idx, signal_idx, z_tilde
    if use_aux and aux_input == "action_free":  # extra rows, same call
        a0, m0 = null_actions(actions[:B_emp], None if act_mask is None else act_mask[:B_emp])
        acts = torch.cat([actions, a0])
        mask = torch.cat([act_mask, m0]) if act_mask is not None else torch.cat([torch.ones_like(actions), m0])
        steps, sigs = torch.cat([step_idx, step_idx[:B_emp]]), torch.cat([signal_idx, signal_idx[:B_emp]])
        zin = torch.cat([z_tilde, z_tilde[:B_emp]])
    x1_hat_all, _, h_sp = dyn(acts, steps, sigs, zin, act_mask=mask, return_spatial=True)
    x1_hat = x1_hat_all[:B].float()

    flow = _per_frame_mse(x1_hat[:B_emp], z1[:B_emp])  # (B_emp,T)
    loss_emp = (w[:B_emp] * flow).mean()
    zero = x1_hat.new_zeros(())
    loss_self, boot_mse = zero, zero
    if B_self > 0 and step >= bootstrap_start:
        s = slice(B_emp, B)
        e, tau_s, zt = step_idx[s], tau[s], z_tilde[s]
        d_half = (1.0 / torch.pow(2.0, e.float())) / 2  # (B_self,T)
        a_s = None if actions is None else actions[s]
        m_s = None if act_mask is None else act_mask[s]
        with torch.no_grad():
            one_minus = (1 - tau_s).clamp_min(1e-6)[..., None, None]
            xA = dyn(a_s, e + 1, signal_idx[s], zt, act_mask=m_s)[0].float()
            bA = (xA - zt) / one_minus
            z_mid = zt + bA * d_half[..., None, None]
            sig_mid = (signal_idx[s].float() + k_max * d_half).to(torch.long)
            xB = dyn(a_s, e + 1, sig_mid, z_mid, act_mask=m_s)[0].float()
            bB = (xB - z_mid) / (1 - (tau_s + d_half)).clamp_min(1e-6)[..., None, None]
            v_bar = (bA + bB) / 2
        v_hat = (x1_hat[s] - zt) / (1 - tau_s).clamp_min(1e-6)[..., None, None]
        per = (1 - tau_s).pow(2) * _per_frame_mse(v_hat, v_bar)  # (B_self,T)
        loss_self = (w[s] * per).mean()
        boot_mse = per.mean()
    loss = (loss_emp * B_emp + loss_self * B_self) / B

    metrics = {
        "flow_mse": flow.mean().detach(),
        "bootstrap_mse": boot_mse.detach(),
        "loss_emp": loss_emp.detach(),
        "loss_self": loss_self.detach(),
        "sigma_mean": tau.mean().detach(),
        "b_self": torch.tensor(float(B_self)),
    }
    if use_aux:
        rows = slice(B, B + B_emp) if aux_input == "action_free" else slice(0, B_emp)
        pred = aux_head(h_sp[rows])  # (B_emp,T-1,A)
        aux_mse = aux_action_mse(pred, actions[:B_emp], None if act_mask is None else act_mask[:B_emp])
        loss = loss + aux_weight * aux_mse
        metrics.update(aux_mse=aux_mse.detach(), aux_loss=(aux_weight * aux_mse).detach())
    metrics["loss"] = loss.detach()
    return loss, metrics
