"""One masked aggregation helper (verl ``agg_loss`` / OpenRLHF ``aggregate_loss``).

Why one helper: a loss that averages over the *local* micro-batch changes with micro-batch size,
gradient accumulation and world size (TRL #6439, torchtune #2307). ``aggregate`` takes the
*global* normaliser (tokens or sequences in the whole optimizer step, across accumulation and
ranks) and a ``loss_scale`` that undoes the framework's own averaging (Lightning divides by
``accumulate_grad_batches``; DDP averages gradients over ranks). Then

    sum over micro-batches and ranks of grad(aggregate(...)) / (accum * world)
        == grad of the full-batch loss,

so ``(micro 8, accum 1) == (2, 4) == (4, 1 x 2 ranks)`` exactly (tested).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

ReduceMode = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "sum"]
REDUCE_MODES: tuple[str, ...] = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "sum")


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``values`` where ``mask`` is true (masked entries may be inf/NaN; they are dropped)."""
    mask = mask.to(torch.bool)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    vals = torch.where(mask, values, zero)
    return vals.sum() if dim is None else vals.sum(dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean over masked entries; an all-masked row gives 0 (not NaN)."""
    count = mask.to(values.dtype).sum() if dim is None else mask.to(values.dtype).sum(dim)
    return masked_sum(values, mask, dim) / count.clamp_min(1)


def aggregate(
    values: Tensor,
    mask: Tensor,
    *,
    mode: ReduceMode = "token_mean",
    num_items: Tensor | float | None = None,
    loss_scale: float = 1.0,
) -> Tensor:
    """Reduce a per-token ``(B, T)`` (or per-sequence ``(B,)``) loss matrix to a scalar.

    Args:
        values: ``(B, T)`` per-token values, or ``(B,)`` per-sequence values.
        mask: same shape, 1 where the entry counts.
        mode: ``token_mean`` (sum / #tokens), ``seq_mean_token_mean`` (mean over sequences of the
            per-sequence token mean), ``seq_mean_token_sum`` (mean over sequences of the
            per-sequence token sum), or ``sum``.
        num_items: the *global* normaliser of the optimizer step: number of valid tokens for
            ``token_mean``, number of sequences (with any valid token) for the ``seq_*`` modes.
            ``None`` uses the local count (correct only when the micro-batch is the whole step).
        loss_scale: multiply by this; pass ``accumulate_grad_batches * world_size`` together with a
            global ``num_items`` to cancel the framework's averaging.

    Returns:
        A scalar. All-masked input gives exactly 0 with finite gradients.
    """
    if mode not in REDUCE_MODES:
        raise ValueError(f"unknown reduce mode {mode!r}; valid: {', '.join(REDUCE_MODES)}")
    if values.shape != mask.shape:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} differ in shape")
    mask = mask.to(torch.bool)
    if values.dim() == 1:  # per-sequence values: every mode is a mean over sequences (or a sum)
        values, mask = values[:, None], mask[:, None]
    if mode == "sum":
        return masked_sum(values, mask) * loss_scale
    if mode == "token_mean":
        total = masked_sum(values, mask)
        denom = mask.sum() if num_items is None else num_items
    else:
        per_seq = masked_sum(values, mask, dim=-1)
        if mode == "seq_mean_token_mean":
            per_seq = per_seq / mask.sum(-1).clamp_min(1)
        total = per_seq.sum()
        # a sequence with no valid token contributes 0 and is not counted
        denom = mask.any(-1).sum() if num_items is None else num_items
    denom = torch.as_tensor(denom, dtype=values.dtype, device=values.device).clamp_min(1)
    return total / denom * loss_scale


def count_items(mask: Tensor, *, mode: ReduceMode) -> Tensor:
    """The local normaliser ``aggregate`` would use; all-reduce it (sum) to get ``num_items``."""
    mask = mask.to(torch.bool)
    if mask.dim() == 1:
        mask = mask[:, None]
    return mask.sum() if mode in ("token_mean", "sum") else mask.any(-1).sum()
