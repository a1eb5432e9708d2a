"""Prefix sharing for pairwise preference batches: one row ``[prompt, chosen, rejected]`` per pair.

The standard DPO forward (TRL ``concatenated_forward``) runs ``2B`` rows ``prompt + response``, so
every prompt goes through the model twice. Here each pair becomes one row; a custom 4-D attention
mask lets the rejected tokens see the prompt and themselves but not the chosen tokens, and their
position ids restart after the prompt. Every response token then has exactly the same causal context
as in the standard layout, so log-probs and gradients are equal (up to float rounding; tested), with
``P + C + R`` instead of ``2 (P + max(C, R))`` tokens per pair (Wang et al. 2024, "Accelerating
Direct Preference Optimization with Prefix Sharing", arXiv 2410.20305).

One token needs care: the first rejected token is predicted from the *last prompt position*, whose
next packed token is the first chosen token. Its log-prob (and entropy) is read from that position's
logits separately; every other response token is predicted by its packed left neighbour.

The layout is built on device from the standard right-padded ``(2B, L)`` batch of
:func:`src.datamodules.preference.collate_pairs`, so data, reference caches and the plain path are
unchanged; per-token results are scattered back to the standard ``(2B, L - 1)`` positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from src.losses import entropy_from_logits, selective_log_softmax
from src.models.scoring import check_next_token_family, fused_token_stats

SUPPORTED_ATTENTION = ("sdpa", "eager")


@dataclass
class SharedPrefixLayout:
    input_ids: Tensor  # (B, Lp) packed [prompt, chosen, rejected, pad]
    position_ids: Tensor  # (B, Lp) rejected positions restart at len(prompt)
    segment: Tensor  # (B, Lp) 0 prompt, 1 chosen, 2 rejected, -1 pad
    last_prompt: Tensor  # (B,) index of the last prompt token
    first_rejected: Tensor  # (B,) id of the first rejected token
    gather: Tensor  # (2B, L-1) index into [packed next-token values (B*(Lp-1)), first-rejected values (B)]

    def attention_mask(self, dtype: torch.dtype) -> Tensor:
        """Additive ``(B, 1, Lp, Lp)`` mask: causal, no pads, rejected cannot see chosen."""
        seg = self.segment
        Lp = seg.shape[1]
        pos = torch.arange(Lp, device=seg.device)
        allowed = (pos[None, None, :] <= pos[None, :, None]) & (seg[:, None, :] >= 0)
        allowed &= ~((seg[:, :, None] == 2) & (seg[:, None, :] == 1))
        allowed |= torch.eye(Lp, dtype=torch.bool, device=seg.device)  # pad queries: no empty softmax row
        zero = torch.zeros((), dtype=dtype, device=seg.device)
        return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]


def shared_prefix_layout(
    input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor, *, pad_id: int
) -> SharedPrefixLayout:
    """Pack a right-padded ``[chosen rows ; rejected rows]`` batch into one row per pair.

    Raises ``ValueError`` if the batch is not right-padded or the two halves' prompts differ (then
    the layout would silently score the wrong context).
    """
    N, L = input_ids.shape
    if N % 2 or N == 0:
        raise ValueError(f"expected [chosen; rejected] rows (an even number), got {N}")
    if bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
        raise ValueError("prefix sharing needs right-padded batches (attention_mask of the form 1..1 0..0)")
    B, dev = N // 2, input_ids.device
    length = attention_mask.sum(1)  # prompt + response
    prompt = (loss_mask.cumsum(1) == 0).sum(1)  # tokens before the first response token
    P, Pr = prompt[:B], prompt[B:]
    cols = torch.arange(L, device=dev)
    same_prompt = ((input_ids[:B] == input_ids[B:]) | (cols[None] >= P[:, None])).all(1)
    if not (bool((P == Pr).all()) and bool(same_prompt.all()) and bool((P >= 1).all())):
        raise ValueError("prefix sharing needs each chosen/rejected pair to share a non-empty prompt")
    C, R = length[:B] - P, length[B:] - P
    Lp = int((P + C + R).max())
    j = torch.arange(Lp, device=dev)[None].expand(B, Lp)
    in_chosen, in_rejected = j < (P + C)[:, None], (j >= (P + C)[:, None]) & (j < (P + C + R)[:, None])
    src_row = torch.where(in_chosen, torch.arange(B, device=dev)[:, None], torch.arange(B, N, device=dev)[:, None])
    src_col = torch.where(in_chosen, j, j - C[:, None]).clamp(0, L - 1)
    valid = in_chosen | in_rejected
    packed = torch.where(valid, input_ids[src_row, src_col], torch.full_like(src_col, pad_id))
    segment = torch.where(j < P[:, None], 0, torch.where(in_chosen, 1, torch.where(in_rejected, 2, -1)))
    position_ids = torch.where(valid, src_col, 0)

    # standard label position t (predicting input_ids[:, t] from t - 1) is column t - 1 of (2B, L - 1)
    t1 = torch.arange(L - 1, device=dev)[None]  # = t - 1, the predictor's standard column
    row = torch.arange(B, device=dev)[:, None]
    chosen_idx = row * (Lp - 1) + t1  # t1 <= L - 2 <= Lp - 2: chosen tokens keep their columns
    rej_pred = torch.where(t1 >= P[:, None], t1 + C[:, None], t1).clamp(max=Lp - 2)  # packed predictor column
    rej_idx = torch.where(t1 == (P - 1)[:, None], B * (Lp - 1) + row, row * (Lp - 1) + rej_pred)
    return SharedPrefixLayout(
        input_ids=packed,
        position_ids=position_ids,
        segment=segment,
        last_prompt=P - 1,
        first_rejected=input_ids[torch.arange(B, N, device=dev), P],
        gather=torch.cat([chosen_idx, rej_idx]),
    )


def shared_prefix_token_stats(
    model: torch.nn.Module,
    batch: dict[str, Tensor],
    *,
    pad_id: int,
    chunk_size: int,
    entropy: bool,
    fused: bool = True,
) -> tuple[Tensor, Tensor | None, int]:
    """Per-token response log-probs ``(2B, L-1)`` (and entropies) via one shared-prefix forward.

    Values at non-response positions are meaningless (finite; 0 on the fused path); mask them with
    ``loss_mask[:, 1:]``. ``fused`` applies the LM head only where a response token is predicted.
    Returns ``(token_logps, token_entropy | None, vocab_size)``.
    """
    check_next_token_family(model)  # a causal mask over a shared prefix: causal LMs only
    impl = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa")
    if impl not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"prefix sharing needs attn_implementation in {SUPPORTED_ATTENTION} (custom 4-D mask), got {impl!r}; "
            "set module.prefix_sharing=false"
        )
    lay = shared_prefix_layout(batch["input_ids"], batch["attention_mask"], batch["loss_mask"], pad_id=pad_id)
    dtype = next(model.parameters()).dtype
    args = {"input_ids": lay.input_ids, "attention_mask": lay.attention_mask(dtype), "position_ids": lay.position_ids}
    B, Lp = lay.input_ids.shape
    rows = torch.arange(B, device=lay.input_ids.device)
    if fused:
        # every packed next token that is a response token, plus the first rejected token (predicted
        # from the last prompt position): the entries of [next-token values ; first-rejected values]
        need = lay.segment[:, 1:] >= 1
        r, c = need.nonzero(as_tuple=True)
        rr = torch.cat([r, rows])
        cc = torch.cat([c, lay.last_prompt])
        labels = torch.cat([lay.input_ids[:, 1:][r, c], lay.first_rejected])
        lp, ent, vocab = fused_token_stats(model, **args, rows=rr, cols=cc, labels=labels, entropy=entropy)
        flat = torch.cat([r * (Lp - 1) + c, B * (Lp - 1) + rows])

        def spread(v: Tensor) -> Tensor:
            return torch.zeros(B * Lp, dtype=v.dtype, device=v.device).index_put((flat,), v)[lay.gather]

        return spread(lp), None if ent is None else spread(ent), vocab
    logits = model(**args).logits
    nxt = selective_log_softmax(logits[:, :-1], lay.input_ids[:, 1:], chunk_size=chunk_size)  # (B, Lp-1)
    at_prompt_end = logits[rows, lay.last_prompt][:, None]  # (B, 1, V): also predicts the first rejected token
    first = selective_log_softmax(at_prompt_end, lay.first_rejected[:, None], chunk_size=chunk_size)[:, 0]
    token_logps = torch.cat([nxt.flatten(), first])[lay.gather]
    ent = None
    if entropy:
        e = entropy_from_logits(logits[:, :-1].detach(), chunk_size=chunk_size)
        ent = torch.cat([e.flatten(), e[rows, lay.last_prompt]])[lay.gather]
    return token_logps, ent, logits.shape[-1]
