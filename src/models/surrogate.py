"""DiFFPO's surrogate likelihood under a masked-diffusion model: the scoring forward.

Which stage each completion token belongs to is a pure function of the rollout's decoding steps
(:func:`src.losses.diffusion.surrogate_assignment`); this module runs the model on the stage
states and gathers each token's log-prob in the state at the start of its stage
(:func:`src.losses.diffusion.staged_token_logps`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from transformers import PreTrainedModel

from src.losses.diffusion import importance_ratio, staged_token_logps, surrogate_assignment
from src.losses.types import LossOutput
from src.models.diffusion_sampler import DiffusionRollout, masked_lm_logits


class SurrogateDraw(NamedTuple):
    """One surrogate of a rollout batch: stage per token, its old log-probs, IS weights, reference's."""

    assign: Tensor
    old: Tensor
    is_w: LossOutput
    ref: Tensor | None


def staged_logps(
    model: PreTrainedModel,
    ro: DiffusionRollout,
    assign: Tensor,
    *,
    mask_id: int,
    max_rows: int | None = None,
) -> Tensor:
    """``(N, L)`` surrogate token log-probs: each token scored in the state at the start of its stage.

    ``assign`` ``(N, L)``: stage per token over *all* completion positions (the stage-``k`` state reveals
    the tokens of stages ``< k``, which must be the rollout's real state, so post-EOS tokens are not
    special-cased here; the loss masks them). The ``S`` stage states run as one batched forward of
    ``S * N`` rows (in chunks of ``max_rows`` when set), not ``S`` forwards one after another. The mask
    token gets no probability mass: a decoded token is never the mask (as in the sampler)."""
    comp, P, N = ro.completion_ids, ro.prompt_len, ro.completion_ids.shape[0]
    S = int(assign.max()) + 1 if assign.numel() else 1
    states = torch.cat([torch.where(assign < k, comp, torch.full_like(comp, mask_id)) for k in range(S)], 0)
    x = torch.cat([ro.sequences[:, :P].repeat(S, 1), states], 1)
    attn, target = ro.attention_mask.repeat(S, 1), comp.repeat(S, 1)
    step = max_rows or x.shape[0]
    out = []
    for i in range(0, x.shape[0], step):
        logits = masked_lm_logits(model, x[i : i + step], attn[i : i + step], positions=slice(P, None)).float()
        logits[..., mask_id] = float("-inf")
        out.append(torch.log_softmax(logits, -1).gather(-1, target[i : i + step, :, None]).squeeze(-1))
    return staged_token_logps(torch.cat(out, 0).view(S, N, -1), assign)


@torch.no_grad()
def surrogate_draws(
    policy: PreTrainedModel,
    ref: PreTrainedModel | None,
    ro: DiffusionRollout,
    *,
    num_stages: int,
    cut: str,
    inner_updates: int,
    keys: Tensor | None,
    mask_id: int,
    max_rows: int | None,
    is_truncate: float | None,
) -> list[SurrogateDraw]:
    """The surrogates of one rollout batch with everything fixed before any update: old log-probs, the
    truncated IS weight surrogate/behaviour (Eq. 12's correction) and the reference's log-probs. One per
    inner update under ``cut=uniform`` with two stages (a fresh cut each, as d1 redraws its prompt masks),
    else one for all."""
    fixed = cut != "uniform" or num_stages != 2
    draws = []
    for i in range(1 if fixed else inner_updates):
        assign = surrogate_assignment(ro.decode_step, ro.nfe, num_stages=num_stages, cut=cut, keys=keys, counter=i)
        old = staged_logps(policy, ro, assign, mask_id=mask_id, max_rows=max_rows)
        is_w = importance_ratio(old, ro.behaviour_logps, ro.completion_mask, truncate=is_truncate)
        ref_lp = staged_logps(ref, ro, assign, mask_id=mask_id, max_rows=max_rows) if ref is not None else None
        draws.append(SurrogateDraw(assign, old, is_w, ref_lp))
    return draws
