"""Likelihood estimators for masked-diffusion LMs, as used by DiFFPO.

A masked-diffusion LM (LLaDA) has no tractable sequence likelihood. DiFFPO trains a *surrogate*
policy whose likelihood is tractable and corrects the mismatch with importance sampling:

* **one-step** surrogate (d1 / diffu-GRPO): ``log pi(y|x) ~ sum_i log p(y_i | x, all of y masked)``,
  one forward pass.
* **two-stage** approximation: tokens that the sampler decoded in the first part of the trajectory
  are scored against the fully-masked state, the rest against the intermediate state recorded at the
  stage boundary (two forward passes). With ``S`` stages equal to the number of decoding steps this
  is the exact likelihood of the decoding trajectory; ``S = 1`` is the one-step surrogate.
* the **importance ratio** ``pi_theta / pi_behaviour`` between the surrogate under the current
  parameters and the behaviour likelihood recorded at rollout time, per token or per sequence,
  optionally truncated (TIS) to bound variance.

These are pure tensor functions; the sampler (which records stage assignments) and the module
(which runs the forward passes) live in ``src/models`` and ``src/modules``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from src.losses.reduce import masked_mean, masked_sum
from src.losses.types import LossOutput

RatioLevel = Literal["token", "sequence"]


def stage_assignment(decode_step: Tensor, mask: Tensor, *, num_stages: int, num_steps: Tensor) -> Tensor:
    """Map each token's decoding step to a likelihood stage in ``[0, num_stages)``.

    Args:
        decode_step: ``(B, T)`` step (0-based) at which the sampler unmasked each token.
        mask: ``(B, T)`` completion tokens.
        num_stages: 1 (one-step surrogate), 2 (two-stage), ... .
        num_steps: ``(B,)`` total decoding steps (NFEs) of each rollout.

    Returns:
        ``(B, T)`` long tensor: stage ``k`` covers steps ``[k * n / S, (k + 1) * n / S)``.
    """
    if num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}")
    n = num_steps.to(decode_step.device).clamp_min(1)[:, None].float()
    stage = torch.floor(decode_step.float() * num_stages / n).long().clamp(0, num_stages - 1)
    return torch.where(mask.to(torch.bool), stage, torch.zeros_like(stage))


def staged_token_logps(stage_logps: Tensor, assignment: Tensor) -> Tensor:
    """Pick, for every token, the log-prob computed at its assigned stage.

    Args:
        stage_logps: ``(S, B, T)``: ``stage_logps[k]`` = log-probs of the completion tokens given the
            state at the start of stage ``k`` (stage 0 = fully masked completion).
        assignment: ``(B, T)`` from :func:`stage_assignment`.
    """
    if stage_logps.dim() != 3 or stage_logps.shape[1:] != assignment.shape:
        raise ValueError(
            f"stage_logps must be (S, B, T) matching assignment {tuple(assignment.shape)}, "
            f"got {tuple(stage_logps.shape)}"
        )
    return stage_logps.gather(0, assignment[None].long()).squeeze(0)


def surrogate_sequence_logp(stage_logps: Tensor, assignment: Tensor, mask: Tensor) -> Tensor:
    """``(B,)`` surrogate log-likelihood ``sum_i log p(y_i | state at stage(i))``."""
    return masked_sum(staged_token_logps(stage_logps, assignment), mask, dim=-1)


def importance_ratio(
    logps: Tensor,
    behaviour_logps: Tensor,
    mask: Tensor,
    *,
    level: RatioLevel = "token",
    truncate: float | None = None,
) -> LossOutput:
    """Importance weights ``pi_theta / pi_behaviour`` of the surrogate (no gradient).

    Args:
        logps: ``(B, T)`` surrogate token log-probs under the current parameters.
        behaviour_logps: ``(B, T)`` behaviour log-probs recorded at rollout time.
        level: ``token`` gives ``(B, T)`` per-token ratios; ``sequence`` the product per row ``(B,)``.
        truncate: clamp the ratio from above (truncated IS); ``None`` keeps it unbiased.

    Returns:
        ``LossOutput(loss=ratio, metrics)``; ``ratio`` is detached. Equal inputs give exactly 1.
    """
    lr = torch.where(mask.to(torch.bool), logps.detach().float() - behaviour_logps.float(), 0.0)
    if level == "sequence":
        lr = lr.sum(-1)
    ratio = lr.clamp(max=30.0).exp()
    if truncate is not None:
        ratio = ratio.clamp(max=truncate)
    m = mask.to(torch.bool) if level == "token" else mask.to(torch.bool).any(-1)
    return LossOutput(ratio, {"is_ratio_mean": masked_mean(ratio, m), "is_ratio_max": torch.where(m, ratio, 0).max()})
