"""Likelihood estimators for masked-diffusion LMs, as used by DiFFPO (``docs/diffpo.md``).

A masked-diffusion LM (LLaDA) has no tractable sequence likelihood. DiFFPO trains a *surrogate*
policy whose likelihood is tractable and corrects the mismatch with importance sampling:

* **one-step** surrogate (d1 / diffu-GRPO): ``log pi(y|x) ~ sum_i log p(y_i | x, all of y masked)``,
  one forward pass.
* **two-stage** ("two-times mean field"): a cut ``tau`` in the rollout's decoding steps; tokens
  unmasked at steps ``<= tau`` are scored against the fully-masked completion, later ones against
  the rollout's own state after step ``tau`` (two forward passes). The paper draws
  ``tau ~ U{0..n-1}`` per rollout and per update (:func:`draw_cut`); ``midpoint`` is the fixed cut.
* **exact token likelihood of the trajectory** (:func:`trajectory_assignment`): every token scored
  in the state just before the step that unmasked it (one pass per step). This is the likelihood of
  the *tokens given the realised unmasking order*; the probability of *which* positions the sampler
  chose to unmask is not part of it (with a threshold or entropy rule that choice is a deterministic
  function of the step's distribution, but at ``temperature > 0`` it depends on the sampled tokens).
* d1's **random prompt masking** (:func:`prompt_mask_draw`): with the one-step surrogate, each prompt token
  is also masked with probability ``p`` (d1's ``p_mask_prompt``), a fresh draw per inner update.
* the **importance ratio** ``pi_theta / pi_behaviour`` between the surrogate and the behaviour
  likelihood recorded at rollout time, per token or per sequence, optionally truncated (TIS).

These are pure tensor functions; the sampler (which records the decoding steps) and the module
(which runs the forward passes) live in ``src/models`` and ``src/modules``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from src.losses.reduce import masked_mean, masked_sum
from src.losses.types import LossOutput

RatioLevel = Literal["token", "sequence"]
CutMode = Literal["uniform", "midpoint"]
CUT_MODES = ("uniform", "midpoint")
CUT_COUNTER = 0x7FFFFF00  # keyed-draw stream of the cut (samplers count up from 0; controller 0x7FFFFFFF)


def draw_cut(
    num_steps: Tensor,
    *,
    mode: CutMode = "uniform",
    generator: torch.Generator | None = None,
    keys: Tensor | None = None,
    counter: int = 0,
) -> Tensor:
    """``(B,)`` two-stage cut ``tau`` per rollout, in ``[0, num_steps - 1]``.

    ``uniform``: ``tau ~ U{0, ..., n-1}`` (the paper's random cut; ``tau = n - 1`` puts every token
    in stage 0, the one-step surrogate). ``midpoint``: ``tau = ceil(n / 2) - 1``, i.e. stage 1 holds
    the tokens unmasked in the second half of the steps. ``keys`` (``rng=keyed``): the draw depends
    only on ``(key, counter)``, so it is the same on any world size; else ``generator`` / global RNG.
    """
    n = num_steps.long().clamp_min(1)
    if mode == "midpoint":
        return (n + 1) // 2 - 1
    if mode != "uniform":
        raise ValueError(f"cut={mode!r}; valid: {', '.join(CUT_MODES)}")
    if keys is not None:
        from src.utils.keyed_random import keyed_uniform

        u = keyed_uniform(keys, CUT_COUNTER + counter, (1,))[:, 0].to(n.device)
    else:
        u = torch.rand(n.shape, generator=generator, device="cpu" if generator is not None else n.device).to(n.device)
    return torch.minimum((u * n.float()).long(), n - 1)


def cut_assignment(decode_step: Tensor, mask: Tensor, cut: Tensor) -> Tensor:
    """Two-stage assignment: stage 1 for tokens unmasked after ``cut`` ``(B,)``, else 0. The stage-1
    state (tokens of stage 0 revealed) is then exactly the rollout's state after step ``cut``."""
    stage = (decode_step > cut.to(decode_step.device)[:, None]).long()
    return torch.where(mask.to(torch.bool), stage, torch.zeros_like(stage))


def trajectory_assignment(decode_step: Tensor, mask: Tensor) -> Tensor:
    """Stage = decoding step: with ``max(decode_step) + 1`` stages each token is scored in the state
    just before its own step, for every row whatever its NFE (the exact token likelihood)."""
    return torch.where(mask.to(torch.bool), decode_step.clamp_min(0), torch.zeros_like(decode_step))


def stage_assignment(decode_step: Tensor, mask: Tensor, *, num_stages: int, num_steps: Tensor) -> Tensor:
    """Map each token's decoding step to a likelihood stage in ``[0, num_stages)``.

    Args:
        decode_step: ``(B, T)`` step (0-based) at which the sampler unmasked each token.
        mask: ``(B, T)`` completion tokens.
        num_stages: 1 (one-step surrogate), 2 (two-stage), ... .
        num_steps: ``(B,)`` total decoding steps (NFEs) of each rollout.

    Returns:
        ``(B, T)`` long tensor: stage ``k`` covers steps ``[k * n / S, (k + 1) * n / S)`` (an even
        split; ``S = 2`` is the midpoint cut). For the exact likelihood use
        :func:`trajectory_assignment`: ``S = max NFE`` here is exact only for rows whose NFE is ``S``.
    """
    if num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}")
    n = num_steps.to(decode_step.device).clamp_min(1)[:, None].float()
    stage = torch.floor(decode_step.float() * num_stages / n).long().clamp(0, num_stages - 1)
    return torch.where(mask.to(torch.bool), stage, torch.zeros_like(stage))


SURROGATES = ("uniform", "midpoint", "exact")


def check_surrogate(num_stages: int, cut: str) -> None:
    """A clear error for a surrogate that does not exist (``module.num_stages`` / ``module.cut``)."""
    if num_stages < 1:
        raise ValueError(f"module.num_stages must be >= 1, got {num_stages}")
    if cut not in SURROGATES:
        raise ValueError(f"module.cut={cut!r}; valid: {', '.join(SURROGATES)}")
    if cut == "uniform" and num_stages > 2:
        raise ValueError("module.cut=uniform draws one cut (num_stages=2); num_stages>2 needs cut=midpoint")


def surrogate_assignment(
    decode_step: Tensor,
    nfe: Tensor,
    *,
    num_stages: int,
    cut: str,
    keys: Tensor | None = None,
    counter: int = 0,
) -> Tensor:
    """``(B, L)`` stage of every completion token for one surrogate draw (DiFFPO Sec. 3).

    ``num_stages=1``: the one-step surrogate (every token in stage 0, d1); ``num_stages=2`` with
    ``cut=uniform|midpoint``: the two-stage cut (:func:`draw_cut`; ``counter`` picks the draw, so each
    inner update gets a fresh cut under ``rng=keyed``); more stages: an even split of the steps
    (:func:`stage_assignment`); ``cut=exact``: the trajectory likelihood (one stage per step).
    Post-EOS tokens are assigned like the rest: the stage states must be the rollout's real states;
    the loss masks them."""
    full = torch.ones_like(decode_step)
    if cut == "exact":
        return trajectory_assignment(decode_step, full)
    if num_stages == 1:
        return torch.zeros_like(decode_step)
    if num_stages == 2:
        return cut_assignment(decode_step, full, draw_cut(nfe, mode=cut, keys=keys, counter=counter))
    return stage_assignment(decode_step, full, num_stages=num_stages, num_steps=nfe)


#: counter offset of prompt-mask draws, so they never share a keyed stream with the cut draws (counter = update)
PROMPT_MASK_STREAM = 1 << 20


def prompt_mask_draw(
    prompt_mask: Tensor,
    *,
    prob: float,
    keys: Tensor | None = None,
    counter: int = 0,
) -> Tensor:
    """d1's random prompt masking: ``(N, P)`` True where a prompt token is replaced by the mask token in the
    scoring state, each real token independently with probability ``prob`` (padding never).

    ``prompt_mask`` ``(N, P)``: 1 on real (left-padded) prompt tokens. With ``keys`` (``rng=keyed``) row ``n``'s
    draw depends only on ``(keys[n], counter)`` and on the token's place *within its prompt*, not on the padding
    width, so it is the same in any batch; without, ``torch.rand`` (d1: one seed per inner iteration)."""
    if not 0.0 <= prob < 1.0:
        raise ValueError(f"module.prompt_mask_prob={prob} must lie in [0, 1)")
    real = prompt_mask.bool()
    if prob == 0.0:
        return torch.zeros_like(real)
    N, P = real.shape
    if keys is None:
        u = torch.rand(N, P, device=real.device)
    else:
        from src.utils.keyed_random import keyed_uniform

        pad = P - real.sum(-1, keepdim=True)  # left padding: token j of row n is its prompt's (j - pad)-th
        idx = (torch.arange(P, device=real.device)[None] - pad).clamp(min=0)
        u = keyed_uniform(keys, PROMPT_MASK_STREAM + counter, (P,)).gather(1, idx)
    return (u < prob) & real


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
