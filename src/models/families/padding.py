"""Exact batching for models that ignore ``attention_mask``.

LLaDA's published remote code never applies the attention mask: a left-padded row attends to its padding, so
it decodes differently from the same prompt alone (tokens, and in threshold mode the number of forwards too).
:func:`probe_attention_mask` finds this at load time with one comparison (the same tokens with and without
left padding) and records it on the config (``config.ignores_attention_mask``). The sampler and every scoring
forward then run such a model on groups of rows with the same padding, with the padding removed
(:func:`by_left_padding`): each row sees exactly the tokens it would see alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

log = logging.getLogger(__name__)

FLAG = "ignores_attention_mask"


def ignores_attention_mask(model: torch.nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), FLAG, False))


@torch.no_grad()
def probe_attention_mask(
    model: torch.nn.Module,
    *,
    pad_id: int,
    model_inputs: Callable[[Tensor, Tensor], dict] | None = None,
    n_tokens: int = 8,
    n_pad: int = 3,
) -> bool:
    """Whether ``model`` ignores ``attention_mask``: logits of ``n_tokens`` tokens alone vs. after ``n_pad``
    masked-out pad tokens, each batch passed as ``model_inputs(ids, mask)`` (the family's; plain keywords by
    default). Recorded on ``model.config`` and logged when it does."""
    inputs = model_inputs or (lambda ids, mask: {"input_ids": ids, "attention_mask": mask})
    vocab = model.get_input_embeddings().num_embeddings
    dev = next(model.parameters()).device
    ids = torch.arange(n_tokens, device=dev)[None] % max(1, vocab - 8) + 8  # ordinary tokens, not specials
    padded = torch.cat([torch.full((1, n_pad), pad_id, device=dev), ids], 1)
    mask = torch.cat([torch.zeros(1, n_pad, dtype=torch.long, device=dev), torch.ones_like(ids)], 1)
    was = model.training
    model.eval()
    try:
        alone = model(**inputs(ids, torch.ones_like(ids))).logits.float().log_softmax(-1)
        with_pad = model(**inputs(padded, mask)).logits[:, n_pad:].float().log_softmax(-1)
    finally:
        model.train(was)
    diff = float((alone - with_pad).abs().max())
    low_precision = next(model.parameters()).dtype in (torch.float16, torch.bfloat16)
    ignores = diff > (5e-2 if low_precision else 1e-3)
    setattr(model.config, FLAG, ignores)
    if ignores:
        log.warning(
            "%s ignores attention_mask (left padding changes its log-probs by up to %.3g): rows are run in groups of "
            "equal padding with the padding removed, so no row attends to padding",
            type(model).__name__,
            diff,
        )
    return ignores


def left_padding(attention_mask: Tensor) -> Tensor:
    """``(B,)`` number of leading masked-out positions; an error unless the mask is left padding only."""
    T = attention_mask.shape[1]
    pad = (attention_mask == 0).long().cumprod(-1).sum(-1)
    real = torch.arange(T, device=attention_mask.device)[None] >= pad[:, None]
    if not bool((real == attention_mask.bool()).all()):
        raise ValueError(
            "a model that ignores attention_mask can only be batched exactly with left padding; this batch's mask "
            "has gaps or right padding"
        )
    return pad


def by_left_padding(
    attention_mask: Tensor, run: Callable[[Tensor, int], Tensor | tuple[Tensor, ...]], *, pad_value: float = 0.0
) -> Tensor | tuple[Tensor, ...]:
    """``run(rows, k)`` on each group of rows with ``k`` leading pad positions (the caller drops them); the
    results (a tensor, or a tuple of tensors) back in row order. A result narrower than the widest group's (a
    whole-sequence output) is left-filled with ``pad_value``, so it lines up with the padded batch."""
    pad = left_padding(attention_mask)
    parts, order, is_tuple = [], [], False
    for k in pad.unique().tolist():
        rows = (pad == k).nonzero().squeeze(-1)
        out = run(rows, int(k))
        is_tuple = isinstance(out, tuple)
        parts.append(out if is_tuple else (out,))
        order.append(rows)
    rows = torch.cat(order)
    inverse = torch.empty_like(pad)
    inverse[rows] = torch.arange(len(rows), device=rows.device)
    merged = tuple(_merge([p[i] for p in parts], pad_value)[inverse] for i in range(len(parts[0])))
    return merged if is_tuple else merged[0]


def _merge(parts: list[Tensor], pad_value: float) -> Tensor:
    if parts[0].dim() > 1:
        width = max(p.shape[1] for p in parts)
        parts = [
            torch.cat([p.new_full((p.shape[0], width - p.shape[1], *p.shape[2:]), pad_value), p], 1)
            if p.shape[1] < width
            else p
            for p in parts
        ]
    return torch.cat(parts, 0)
