"""Token log-probs from a causal LM without building its ``(B, T, V)`` logits (the fused path).

Every training module scores a few positions of a sequence (the completion, the response, the
answer) under a causal LM. ``model(...).logits`` computes the LM head at *every* position and keeps
the fp32 ``(B, T, V)`` result (and later its gradient) alive: at V = 49152 and T = 1024 that is 200 MB
per sequence, several times the rest of a small model's activations.

:func:`fused_token_stats` runs the model's own forward, but with its output layer swapped for the
duration of the call: the LM head receives the final hidden states, keeps only the scored positions
and calls :func:`src.losses.logprobs.fused_linear_token_stats`, which applies the head chunk by chunk.
The head is called *inside* the model's forward, as usual, so wrappers that act on module calls keep
working: peft LoRA (the adapters live in the backbone; an adapter on the head itself is refused),
tied embeddings (the gradient reaches the shared matrix), and FSDP (the head's weight is gathered
for the forward it is called in). Models whose forward post-processes the logits (Gemma-2 soft-
capping, Cohere/Granite logit scaling) and heads with forward hooks (other than the parameter-
gathering ones of DeepSpeed and torch.distributed) are refused with a clear error: the fused head
would skip what they do.

``module.fused_logprobs=false`` switches every module back to the plain path.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from src.losses.logprobs import fused_linear_token_stats
from src.models.hf import base_model_name

# config attributes that make a model's forward transform the head's output: the fused head cannot apply them
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
# forward hooks that only gather / release sharded parameters (ZeRO-3, FSDP) and leave outputs alone
_PARAM_GATHERING_HOOKS = ("deepspeed", "torch.distributed")


def _output_embeddings(model: torch.nn.Module, fix: str) -> torch.nn.Module:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        raise ValueError(f"{base_model_name(model)} has no output embeddings; {fix}")
    return head


def output_head(model: torch.nn.Module) -> torch.nn.Linear:
    """The LM head (``get_output_embeddings``) as a plain ``nn.Linear``; clear errors otherwise."""
    head = _output_embeddings(model, "set module.fused_logprobs=false")
    if hasattr(head, "base_layer") or type(head) is not torch.nn.Linear:
        raise ValueError(
            f"the LM head is a {type(head).__name__} (an adapter on the output layer?); the fused path needs a plain "
            "nn.Linear head: leave lm_head out of the LoRA target modules or set module.fused_logprobs=false"
        )
    for hook in head._forward_hooks.values():  # a hook that edits the logits would be bypassed
        if not getattr(hook, "__module__", "").startswith(_PARAM_GATHERING_HOOKS):
            raise ValueError(
                f"the LM head has a forward hook ({getattr(hook, '__qualname__', hook)}); its effect on the "
                "logits would be skipped by the fused path: set module.fused_logprobs=false"
            )
    cfg = getattr(model, "config", None)
    for name in _LOGIT_POSTPROCESSING:
        v = getattr(cfg, name, None)
        if v not in (None, 0, 1, 1.0):
            raise ValueError(
                f"model config {name}={v}: the model post-processes its logits, which the fused head would "
                "skip; set module.fused_logprobs=false"
            )
    return head


@contextmanager
def _swapped_head(head: torch.nn.Linear, fn):
    head.forward = fn  # instance attribute: nn.Module.__call__ (and its hooks) dispatch to it
    try:
        yield
    finally:
        del head.forward


@contextmanager
def head_on_positions(model: torch.nn.Module, positions: slice):
    """Within the block, the model's output layer is applied only to ``hidden[:, positions]``, so
    ``model(...).logits`` is ``(B, len(positions), V)``: the same values as slicing the full logits,
    without computing the LM head anywhere else (e.g. a diffusion sampler needs one block)."""
    head = _output_embeddings(model, "the LM head cannot be restricted to some positions")
    orig = head.forward
    with _swapped_head(head, lambda hidden: orig(hidden[:, positions])):
        yield


def fused_token_stats(
    model: torch.nn.Module,
    *,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    rows: Tensor,
    cols: Tensor,
    labels: Tensor,
    position_ids: Tensor | None = None,
    entropy: bool = False,
    rows_per_chunk: int | None = None,
) -> tuple[Tensor, Tensor | None, int]:
    """Log-probs of ``labels[i]`` predicted at ``(rows[i], cols[i])``, and optionally the entropies.

    Args:
        model: an HF causal LM (optionally peft-wrapped).
        input_ids / attention_mask / position_ids: passed to the model's forward (a 4-D mask is fine).
        rows, cols: ``(N,)`` positions whose hidden state predicts a token; labels: ``(N,)`` the token.
        entropy: also return the predictive entropy there (no gradient).

    Returns:
        ``(logps (N,) fp32, entropy (N,) fp32 | None, vocab_size)``.
    """
    if not rows.shape == cols.shape == labels.shape or rows.dim() != 1:
        raise ValueError(
            f"rows, cols and labels must be equal-length 1-D; got {rows.shape}, {cols.shape}, {labels.shape}"
        )
    head = output_head(model)
    got: dict[str, Any] = {}

    def forward(hidden: Tensor) -> Tensor:
        if got:
            raise RuntimeError("the LM head was called twice in one forward; set module.fused_logprobs=false")
        if hidden.shape[1] != input_ids.shape[1]:  # HF's logits_to_keep sliced the hidden states
            raise RuntimeError(
                f"LM head saw {hidden.shape[1]} of {input_ids.shape[1]} positions; the fused path needs all"
            )
        got["out"] = fused_linear_token_stats(
            hidden[rows, cols], head.weight, labels, bias=head.bias, entropy=entropy, rows_per_chunk=rows_per_chunk
        )
        return hidden.new_zeros(())  # what the model returns as "logits": nothing to keep alive

    kw = {"position_ids": position_ids} if position_ids is not None else {}
    with _swapped_head(head, forward):
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kw)
    if "out" not in got:
        raise RuntimeError(
            f"{base_model_name(model)}'s forward never called its LM head; set module.fused_logprobs=false"
        )
    lp, ent = got["out"]
    return lp, ent, head.weight.shape[0]


def check_next_token_family(model: torch.nn.Module) -> None:
    """Next-token scoring reads the logits at ``c`` for the token at ``c + 1``: the causal alignment (Dream's too);
    an in-place masked LM (LLaDA's family) is refused rather than scored off by one."""
    from src.models.families import family_of

    try:
        family = family_of(model)
    except ValueError:  # no config, or a type no family claims: scored as the causal LM it is used as
        return
    if family.shift != 1:
        raise ValueError(
            f"{base_model_name(model)} ({family.name} family) predicts each token in place; next-token log-probs "
            "need a causal LM (masked-diffusion log-probs: src.modules.diffpo.surrogate)"
        )


def next_token_logps(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    score_mask: Tensor,
    *,
    position_ids: Tensor | None = None,
    entropy: bool = False,
    fused: bool = True,
    chunk_size: int = 128,
) -> tuple[Tensor, Tensor | None, int]:
    """``(B, T-1)`` log-probs of ``input_ids[:, 1:]`` (0 where ``score_mask`` is 0) and entropies.

    ``score_mask`` is ``(B, T-1)``: which next tokens to score. The fused path computes the LM head
    only there; the plain path (``fused=False``) is the full-logits computation.
    """
    from src.losses.logprobs import entropy_from_logits, selective_log_softmax

    check_next_token_family(model)
    targets = input_ids[:, 1:]
    if score_mask.shape != targets.shape:
        raise ValueError(f"score_mask must be (B, T-1) = {tuple(targets.shape)}, got {tuple(score_mask.shape)}")
    keep = score_mask.bool()
    if not fused:
        kw = {"position_ids": position_ids} if position_ids is not None else {}
        logits = model(input_ids=input_ids, attention_mask=attention_mask, **kw).logits[:, :-1]
        lp = selective_log_softmax(logits, targets, chunk_size=chunk_size).masked_fill(~keep, 0.0)
        ent = entropy_from_logits(logits.detach(), chunk_size=chunk_size).masked_fill(~keep, 0.0) if entropy else None
        return lp, ent, logits.shape[-1]
    rows, cols = keep.nonzero(as_tuple=True)
    lp, ent, vocab = fused_token_stats(
        model,
        input_ids=input_ids,
        attention_mask=attention_mask,
        rows=rows,
        cols=cols,
        labels=targets[rows, cols],
        position_ids=position_ids,
        entropy=entropy,
    )

    def scatter(values: Tensor) -> Tensor:  # back to (B, T-1), zeros elsewhere
        return torch.zeros(keep.shape, dtype=values.dtype, device=values.device).index_put((rows, cols), values)

    return scatter(lp), None if ent is None else scatter(ent), vocab


def suffix_logps(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    suffix_mask: Tensor,
    *,
    position_ids: Tensor | None = None,
    fused: bool = True,
    chunk_size: int = 128,
) -> Tensor:
    """``(B, S)`` log-probs of the last ``S`` tokens of ``input_ids`` (a completion or SFT answer
    after a left-padded prompt), scored where ``suffix_mask`` ``(B, S)`` is 1; 0 elsewhere on the
    fused path, which runs the LM head only there."""
    P = input_ids.shape[1] - suffix_mask.shape[1]
    score = torch.zeros_like(input_ids[:, 1:], dtype=torch.bool)
    score[:, P - 1 :] = suffix_mask.bool() if fused else True
    lp, _, _ = next_token_logps(
        model, input_ids, attention_mask, score, position_ids=position_ids, fused=fused, chunk_size=chunk_size
    )
    return lp[:, P - 1 :]
