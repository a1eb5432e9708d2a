"""Policy-gradient pieces shared by the RL modules (DiFFPO; OPD+ task-reward mixing).

* :func:`group_advantages` - GRPO (Shao et al. 2024, Eq. 3): ``A_i = (r_i - mean_g) / (std_g + eps)``
  within each prompt's group; ``normalize_std=False`` gives Dr. GRPO's un-normalised form.
* :func:`clipped_surrogate` - PPO (Schulman et al. 2017, Eq. 7) with asymmetric clip (DAPO).
* :func:`kl_penalty` - per-token KL(pi || ref) estimators k1/k2/k3 (Schulman, "Approximating KL").
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from src.losses.reduce import ReduceMode, aggregate, masked_mean
from src.losses.types import LossOutput

KLKind = Literal["k1", "k2", "k3"]
KL_KINDS: tuple[str, ...] = ("k1", "k2", "k3")


def group_advantages(rewards: Tensor, *, normalize_std: bool = True, eps: float = 1e-6) -> Tensor:
    """Group-relative advantages.

    Args:
        rewards: ``(G, N)``: G prompts, N samples each.
        normalize_std: divide by the group's (unbiased) std, as GRPO does.

    Returns:
        ``(G, N)`` advantages; a group whose rewards are all equal gets 0 (no signal, no NaN).
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (num_groups, group_size), got {tuple(rewards.shape)}")
    r = rewards.float()
    centred = r - r.mean(-1, keepdim=True)
    if not normalize_std:
        return centred
    std = r.std(-1, keepdim=True, unbiased=True) if r.shape[-1] > 1 else torch.zeros_like(r[:, :1])
    return centred / (std + eps)


def clipped_surrogate(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float | None = None,
    reduce: ReduceMode = "token_mean",
    num_items: Tensor | float | None = None,
    loss_scale: float = 1.0,
) -> LossOutput:
    """PPO clipped objective, negated for minimisation.

    ``L = -min(ratio * A, clip(ratio, 1 - eps_lo, 1 + eps_hi) * A)`` with
    ``ratio = exp(logps - old_logps)``. Works per token (``(B, T)`` inputs, ``A`` broadcast over
    tokens) or per sequence (``(B,)`` inputs).
    """
    eps_hi = clip_eps_low if clip_eps_high is None else clip_eps_high
    if advantages.dim() == 1 and logps.dim() == 2:
        advantages = advantages[:, None].expand_as(logps)
    log_ratio = (logps.float() - old_logps.detach().float()).clamp(-20.0, 20.0)
    ratio = log_ratio.exp()
    adv = advantages.detach().float()
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_eps_low, 1.0 + eps_hi) * adv
    per = -torch.minimum(unclipped, clipped)
    loss = aggregate(per, mask, mode=reduce, num_items=num_items, loss_scale=loss_scale)
    m = mask.to(torch.bool)
    metrics = {
        "ratio_mean": masked_mean(ratio.detach(), m),
        "clip_frac": masked_mean((clipped.detach() != unclipped.detach()).float(), m),
        "advantage_mean": masked_mean(adv, m),
    }
    return LossOutput(loss, metrics)


def kl_penalty(logps: Tensor, ref_logps: Tensor, *, kind: KLKind = "k3") -> Tensor:
    """Per-token estimator of KL(pi || ref) from samples of pi.

    With ``d = log ref - log pi``: k1 = ``-d`` (unbiased, high variance), k2 = ``d^2 / 2``
    (biased, low variance), k3 = ``exp(d) - 1 - d`` (unbiased, non-negative; GRPO's choice).
    """
    if kind not in KL_KINDS:
        raise ValueError(f"unknown KL estimator {kind!r}; valid: {', '.join(KL_KINDS)}")
    d = ref_logps.float() - logps.float()
    if kind == "k1":
        return -d
    if kind == "k2":
        return 0.5 * d**2
    return torch.expm1(d.clamp(max=20.0)) - d
