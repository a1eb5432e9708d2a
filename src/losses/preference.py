"""Offline preference losses: DPO, IPO, SimPO, hinge, and MallowsPO-theta / MallowsPO-phi.

Papers: DPO (Rafailov et al. 2023, Eq. 7); IPO (Azar et al. 2023, Eq. 17, TRL's per-token form);
SimPO (Meng et al. 2024, Eq. 6); MallowsPO (Chen et al., ICLR 2025, arXiv 2405.14953; notes in
``docs/mallowspo.md``).

With the implicit-reward margin ``Delta = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))``
and a per-prompt neg-log dispersion ``w(x) = -log phi(x) >= 0``:

* ``dpo``            ``-log sigmoid(beta * Delta)``
* ``mallows_theta``  ``-log sigmoid(w * beta * Delta)``  (survey Eq. 53; official ``mallows_dpo``).
  ``w == 1`` (phi = e^-1, the *neutral* dispersion) is exactly DPO.
* ``mallows_phi``    ``-log g_phi(beta * Delta)`` with the Mallows-Kendall pairwise link
  ``g_phi(s) = (s+1)/(1-phi^(s+1)) - s/(1-phi^s)`` (s >= 0), ``g(-s) = 1 - g(s)``. A different link,
  not a reweighting: it has no DPO special case. At ``s = 0`` we use the right limit (g jumps there).
* ``ipo``, ``simpo``, ``hinge``: the usual forms. Passing ``dispersion`` to them applies the
  MallowsPO-theta weight as a *plug-in* (the margin is multiplied by ``w``; RainbowPO's "contextual
  scaling").

The dispersion comes from :func:`dispersion_from_entropy` (reference model's normalised
predictive entropy, official code) or is given per example.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from src.losses.reduce import masked_mean
from src.losses.types import LossOutput

PreferenceLoss = Literal["dpo", "ipo", "simpo", "hinge", "mallows_theta", "mallows_phi"]
PREFERENCE_LOSSES: tuple[str, ...] = ("dpo", "ipo", "simpo", "hinge", "mallows_theta", "mallows_phi")


def _log_q(a: Tensor, lam: Tensor) -> Tensor:
    """``log q(a)`` with ``q(a) = a / (exp(a * lam) - 1)`` and ``q(0) = 1 / lam`` (a >= 0)."""
    u = a * lam
    small = u < 1e-3
    u_safe = torch.where(small, torch.ones_like(u), u)
    # log(u / (e^u - 1)) = -u - log(1 - e^-u) + log u
    big = torch.log(u_safe) - u_safe - torch.log(-torch.expm1(-u_safe))
    # series of log(u / (e^u - 1)) = -u/2 + u^2/24 - u^4/2880 + ...
    series = -0.5 * u + u * u / 24.0 - u**4 / 2880.0
    return torch.where(small, series, big) - torch.log(lam)


def mallows_phi_log_link(s: Tensor, phi: Tensor) -> Tensor:
    """``log g_phi(s)``, the Mallows-Kendall pairwise link, computed stably in log space.

    Uses ``1 - g(a) = q(a) - q(a+1)`` (a >= 0; see module docstring) so there is no 0/0 at
    ``s = 0`` and no cancellation for large ``|s|``. ``s = 0`` takes the right limit
    ``g(0+) = 1/(1-phi) + 1/log(phi)``. Evaluated in float64 (the inputs are per-pair scalars, so
    this costs nothing) because ``q(a) - q(a+1)`` cancels badly in fp32 as ``phi -> 1``.

    Args:
        s: scaled margins, any shape.
        phi: dispersion in (0, 1), broadcastable to ``s``.
    """
    out_dtype = s.dtype if s.is_floating_point() else torch.float32
    s64 = s.double()
    phi = torch.as_tensor(phi, device=s.device).double().clamp(1e-12, 1 - 1e-12)
    lam = -torch.log(phi)
    # not abs(): where() keeps the right-derivative at s = 0 (abs has gradient 0 there, so a
    # policy initialised at the reference, Delta = 0, would never move)
    a = torch.where(s64 >= 0, s64, -s64)
    lq_a, lq_a1 = _log_q(a, lam), _log_q(a + 1.0, lam)
    # log(1 - g(a)) = log q(a) + log(1 - q(a+1)/q(a)); q is decreasing so the ratio is < 1
    log_1mg = lq_a + torch.log(-torch.expm1((lq_a1 - lq_a).clamp(max=-1e-300)))
    log_g = torch.log(-torch.expm1(log_1mg.clamp(max=-1e-300)))
    return torch.where(s64 >= 0, log_g, log_1mg).to(out_dtype)


def dispersion_from_entropy(
    chosen_entropy: Tensor,
    rejected_entropy: Tensor,
    chosen_mask: Tensor,
    rejected_mask: Tensor,
    *,
    vocab_size: int,
    scale: float = 1.0,
    eps: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """Per-prompt dispersion from the reference model's predictive entropy (MallowsPO, Sec. 4).

    ``Hbar(y) = mean_t H_t / log V`` over each response's own tokens, ``Hbar(x) = (Hbar(y_w) +
    Hbar(y_l)) / 2``, ``w(x) = -scale * log Hbar(x)``, ``phi(x) = exp(-w(x))`` (official code;
    ``scale`` is their ``neg_log_dispersion_mean``, 0.29 for Llama-3 + UltraFeedback). Computed
    without gradient: the dispersion is a property of the data under the frozen reference.

    Args:
        chosen_entropy, rejected_entropy: ``(B, T)`` per-position entropies of the reference at
            the positions that predict response tokens.
        chosen_mask, rejected_mask: ``(B, T)`` response-token masks.
        vocab_size: ``V`` (the logits' last dimension).

    Returns:
        ``(w, phi)``, each ``(B,)``.
    """
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    log_v = math.log(vocab_size)
    h_w = masked_mean(chosen_entropy.detach().float(), chosen_mask, dim=-1) / log_v
    h_l = masked_mean(rejected_entropy.detach().float(), rejected_mask, dim=-1) / log_v
    h = (0.5 * (h_w + h_l)).clamp(eps, 1.0)
    w = -scale * torch.log(h)
    return w, torch.exp(-w)


def preference_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None = None,
    ref_rejected_logps: Tensor | None = None,
    *,
    loss_type: PreferenceLoss = "dpo",
    beta: float = 0.1,
    dispersion: Tensor | None = None,
    gamma: float = 0.0,
    label_smoothing: float = 0.0,
    reference_free: bool = False,
    weight: Tensor | None = None,
) -> LossOutput:
    """Per-pair preference loss, averaged over the batch.

    Args:
        policy_chosen_logps, policy_rejected_logps: ``(B,)`` sequence log-probs (sum; per-token
            mean for ``ipo``/``simpo`` is the caller's choice via ``sequence_logprob(average=...)``).
        ref_chosen_logps, ref_rejected_logps: ``(B,)`` reference log-probs; ignored (may be None)
            when ``reference_free`` or ``loss_type == "simpo"``.
        loss_type: one of :data:`PREFERENCE_LOSSES`.
        beta: inverse temperature.
        dispersion: ``(B,)`` neg-log dispersion ``w = -log phi`` for ``mallows_theta`` (and as a
            plug-in weight for dpo/ipo/simpo/hinge); for ``mallows_phi`` it is converted to
            ``phi = exp(-w)``. Required for the two Mallows variants.
        gamma: SimPO target margin (subtracted from ``beta * Delta``; SimPO/Mallows-SimPO's
            ``home_advantage * beta``).
        label_smoothing: cDPO epsilon for the sigmoid losses.
        weight: optional ``(B,)`` per-pair weights (a weighted mean; 0 drops a pair).

    Returns:
        ``LossOutput``; metrics ``rewards/chosen``, ``rewards/rejected``, ``rewards/margin``,
        ``rewards/accuracy`` (``beta * Delta > 0``; a tie counts 1/2), ``logps/chosen``, ``logps/rejected``, and
        ``dispersion/w_mean`` when a dispersion is used. Rewards are ``beta * (log pi - log ref)``,
        not multiplied by ``w`` (as the official code logs them).
    """
    if loss_type not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown preference loss {loss_type!r}; valid: {', '.join(PREFERENCE_LOSSES)}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing}")
    if loss_type.startswith("mallows") and dispersion is None:
        raise ValueError(f"loss_type={loss_type!r} needs a per-example `dispersion` (w = -log phi)")
    pc, pr = policy_chosen_logps.float(), policy_rejected_logps.float()
    no_ref = reference_free or loss_type == "simpo"
    if not no_ref and (ref_chosen_logps is None or ref_rejected_logps is None):
        raise ValueError(f"loss_type={loss_type!r} needs reference log-probs (or reference_free=True)")
    rc = torch.zeros_like(pc) if no_ref else ref_chosen_logps.detach().float()
    rr = torch.zeros_like(pr) if no_ref else ref_rejected_logps.detach().float()
    delta = (pc - rc) - (pr - rr)
    w = None if dispersion is None else dispersion.detach().float()

    if loss_type == "mallows_phi":
        phi = torch.exp(-w)
        z = beta * delta - gamma
        losses = -(1 - label_smoothing) * mallows_phi_log_link(z, phi) - label_smoothing * mallows_phi_log_link(
            -z, phi
        )
        losses = losses.float()
    else:
        scale = 1.0 if w is None else w
        if loss_type == "ipo":
            # (w * Delta - 1 / (2 beta))^2: IPO Eq. 17; w == 1 is TRL's ipo
            losses = (scale * delta - 1.0 / (2.0 * beta)) ** 2
        else:
            z = scale * (beta * delta - gamma)
            if loss_type == "hinge":
                losses = F.relu(1.0 - z)
            else:  # dpo, simpo, mallows_theta: the sigmoid link
                losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)

    ones = torch.ones_like(losses, dtype=torch.bool)
    loss = (losses * weight).sum() / weight.sum().clamp_min(1e-12) if weight is not None else masked_mean(losses, ones)
    chosen_r, rejected_r = beta * (pc - rc).detach(), beta * (pr - rr).detach()
    metrics = {
        "rewards/chosen": chosen_r.mean(),
        "rewards/rejected": rejected_r.mean(),
        "rewards/margin": (chosen_r - rejected_r).mean(),
        # ties (e.g. policy == reference at step 0) count 1/2, so chance level is 0.5
        "rewards/accuracy": ((chosen_r > rejected_r).float() + 0.5 * (chosen_r == rejected_r).float()).mean(),
        "logps/chosen": pc.detach().mean(),
        "logps/rejected": pr.detach().mean(),
    }
    if w is not None:
        metrics["dispersion/w_mean"] = w.mean()
    return LossOutput(loss, metrics)


__all__ = [
    "PREFERENCE_LOSSES",
    "dispersion_from_entropy",
    "mallows_phi_log_link",
    "preference_loss",
]
