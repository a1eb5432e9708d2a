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

from src.losses.diffusion import importance_ratio, prompt_mask_draw, staged_token_logps, surrogate_assignment
from src.losses.types import LossOutput
from src.rollout.diffusion_sampler import DiffusionRollout, masked_lm_logits


class SurrogateDraw(NamedTuple):
    """One surrogate of a rollout batch: stage per token, its old log-probs, IS weights, reference's, and the
    prompt tokens masked in its scoring states (d1's prompt masking; None: the prompt intact)."""

    assign: Tensor
    old: Tensor
    is_w: LossOutput
    ref: Tensor | None
    prompt_masked: Tensor | None = None


def staged_logps(
    model: PreTrainedModel,
    ro: DiffusionRollout,
    assign: Tensor,
    *,
    mask_id: int,
    max_rows: int | None = None,
    prompt_masked: Tensor | None = None,
) -> Tensor:
    """``(N, L)`` surrogate token log-probs: each token scored in the state at the start of its stage.

    ``assign`` ``(N, L)``: stage per token over *all* completion positions (the stage-``k`` state reveals
    the tokens of stages ``< k``, which must be the rollout's real state, so post-EOS tokens are not
    special-cased here; the loss masks them). The ``S`` stage states run as one batched forward of
    ``S * N`` rows (in chunks of ``max_rows`` when set), not ``S`` forwards one after another. The mask
    token gets no probability mass: a decoded token is never the mask (as in the sampler). ``prompt_masked``
    ``(N, P)``: prompt tokens replaced by the mask token in every state (d1's random prompt masking)."""
    comp, P, N = ro.completion_ids, ro.prompt_len, ro.completion_ids.shape[0]
    S = int(assign.max()) + 1 if assign.numel() else 1
    states = torch.cat([torch.where(assign < k, comp, torch.full_like(comp, mask_id)) for k in range(S)], 0)
    prompt = ro.sequences[:, :P]
    if prompt_masked is not None:
        prompt = torch.where(prompt_masked, torch.full_like(prompt, mask_id), prompt)
    x = torch.cat([prompt.repeat(S, 1), states], 1)
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
    importance_weights: bool = True,
    prompt_mask_prob: float = 0.0,
) -> list[SurrogateDraw]:
    """The surrogates of one rollout batch with everything fixed before any update: old log-probs, the
    truncated IS weight surrogate/behaviour (Eq. 12's correction; all ones with ``importance_weights=False``,
    d1) and the reference's log-probs. One per inner update when something is redrawn per update (the
    two-stage ``cut=uniform``, or d1's prompt masks with ``prompt_mask_prob > 0``), else one for all; old and
    new log-probs of an update share its draw."""
    fixed = (cut != "uniform" or num_stages != 2) and prompt_mask_prob == 0.0
    draws = []
    for i in range(1 if fixed else inner_updates):
        assign = surrogate_assignment(ro.decode_step, ro.nfe, num_stages=num_stages, cut=cut, keys=keys, counter=i)
        pm = None
        if prompt_mask_prob > 0:
            pm = prompt_mask_draw(ro.attention_mask[:, : ro.prompt_len], prob=prompt_mask_prob, keys=keys, counter=i)
        old = staged_logps(policy, ro, assign, mask_id=mask_id, max_rows=max_rows, prompt_masked=pm)
        if importance_weights:
            is_w = importance_ratio(old, ro.behaviour_logps, ro.action_mask, truncate=is_truncate)
        else:  # no correction of the surrogate towards the behaviour policy (d1)
            is_w = LossOutput(torch.ones_like(old), {"is_ratio_mean": torch.ones((), device=old.device)})
        ref_lp = (
            staged_logps(ref, ro, assign, mask_id=mask_id, max_rows=max_rows, prompt_masked=pm)
            if ref is not None
            else None
        )
        draws.append(SurrogateDraw(assign, old, is_w, ref_lp, pm))
    return draws
