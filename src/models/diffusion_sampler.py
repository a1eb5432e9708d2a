"""Masked-diffusion decoding (LLaDA-style) with exact NFE counting and trajectory recording.

The completion (``gen_length`` tokens) starts fully masked and is decoded block by block
(semi-autoregressive, ``block_length`` tokens per block). Inside a block each forward pass (one
NFE) proposes a token for every masked position and unmasks:

* ``mode="low_confidence"``: a fixed number of the most confident positions per step
  (``steps_per_block`` steps per block; LLaDA's low-confidence remasking);
* ``mode="threshold"``: every masked position whose confidence exceeds the row's threshold, and
  at least the most confident one (Fast-dLLM's confidence-threshold parallel decoding). Lower
  threshold = more tokens per step = fewer NFE.
* ``mode="entropy_bounded"`` (the EB sampler, Ben-Hamu et al.): sort the masked positions by the
  entropy ``H`` of their predictive distribution and unmask the largest prefix ``U`` with
  ``sum_U H - max_U H <= gamma`` (at least one). Larger ``gamma`` = fewer NFE.

The per-row knob (a confidence threshold in ``threshold`` mode, the entropy budget ``gamma`` in
``entropy_bounded`` mode) is the ``knob`` argument; it may differ per row
(DiFFPO's controller picks it per prompt), or be a callable that picks it from the *first decoding
forward's* hidden states (no extra forward: the controller's features are free).

Confidence and entropy are those of the sampling distribution (argmax at ``temperature=0``, a
sample of ``softmax(logits / T)`` otherwise). The rollout records, for every completion token, the
step at which it was unmasked and its log-probability under the **model's own distribution**
(``softmax(logits)``, untempered) at that step: the likelihood the surrogate approximates, so the
importance ratio of the exact staged likelihood is 1 at any temperature (the temperature only
changes which tokens are explored, as in d1). Rows are decoded together but NFEs are counted per
row: a forward counts for a row only while that row still has masked tokens in its current block.
A model that ignores ``attention_mask`` (LLaDA) runs each forward on groups of equally padded rows
without their padding (:func:`forward`, :mod:`src.models.padding`), so batching never changes a row's
tokens or NFE.

The LM head runs on the current block only. ``cache="prefix"|"dual"`` adds Fast-dLLM's approximate
block-wise key/value reuse (:mod:`src.models.dllm_cache`): each block's first step is a full forward,
its later steps compute the block and the masked suffix (prefix) or the block alone (dual) against
the keys/values kept from that first step. NFE is unchanged; the tokens may differ from ``"none"``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.models.dllm_cache import CACHE_MODES, block_kv_cache
from src.models.padding import by_left_padding, ignores_attention_mask, left_padding
from src.models.rollout import completion_mask_from_ids, decode_completions
from src.models.scoring import head_on_positions
from src.utils.keyed_random import keyed_categorical

MODES = ("threshold", "low_confidence", "entropy_bounded")
# (hidden states of every layer at the prompt positions, prompt mask) -> (knob (B,), features kept for training)
KnobFn = Callable[[tuple[Tensor, ...], Tensor], tuple[Tensor, Tensor]]


def check_knobs(mode: str, values: list[float], *, key: str) -> None:
    """A clear error when knob values do not fit the sampler mode (thresholds in [0, 1], gammas >= 0)."""
    if mode == "threshold" and any(not 0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"{key}: sampler.mode=threshold takes confidence thresholds in [0, 1], got {values}")
    if mode == "entropy_bounded" and any(not v >= 0 for v in values):
        raise ValueError(f"{key}: sampler.mode=entropy_bounded takes entropy budgets gamma >= 0, got {values}")


@dataclass
class DiffusionRollout:
    """Attributes: ``sequences`` (B, P+L); ``prompt_len`` P; ``decode_step`` (B, L) per-row step at
    which each token was unmasked; ``behaviour_logps`` (B, L) untempered log-probs at that step;
    ``nfe`` (B,); ``completion_mask`` (B, L) up to and including the first EOS; ``texts``;
    ``knobs`` (B,) knob per row (threshold or gamma) or None; ``first_hidden``: the features the
    knob callable built from the first decoding forward's prompt states (None for a fixed knob)."""

    sequences: Tensor
    attention_mask: Tensor
    prompt_len: int
    decode_step: Tensor
    behaviour_logps: Tensor
    nfe: Tensor
    completion_mask: Tensor
    texts: list[str]
    knobs: Tensor | None = None
    first_hidden: Tensor | None = None

    @property
    def completion_ids(self) -> Tensor:
        return self.sequences[:, self.prompt_len :]


def masked_lm_logits(
    model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, *, positions: slice | None = None
) -> Tensor:
    """Bidirectional logits ``(B, T, V)`` of a masked LM (BERT/ModernBERT/LLaDA-style); with
    ``positions``, only those columns ``(B, n, V)``, the LM head applied nowhere else. A model that ignores
    ``attention_mask`` gets each row's logits as alone (:func:`forward`; pad columns 0)."""
    return forward(model, input_ids, attention_mask, positions).logits


@dataclass
class Forward:
    logits: Tensor
    hidden_states: tuple[Tensor, ...] | None = None


def forward(model: PreTrainedModel, x: Tensor, attn: Tensor, head: slice | None, **kw) -> Forward:
    """One forward of a masked LM; the LM head only on the columns ``head`` when given. A model that ignores
    ``attention_mask`` (LLaDA, :mod:`src.models.padding`) runs on groups of equally padded rows without their
    padding, its outputs left-filled with zeros: every row's logits are those it gets alone, so batching never
    changes a row's tokens, NFE or log-probs. ``head`` must then be contiguous and past the padding."""
    if ignores_attention_mask(model) and not bool(attn.bool().all()):
        a, b, step = (head or slice(None)).indices(x.shape[1])
        if step != 1 or a < int(left_padding(attn).max()):
            raise ValueError(f"positions {head} of a mask-ignoring model must be contiguous and past the padding")

        def run(rows: Tensor, k: int) -> tuple[Tensor, ...]:
            sub = forward(model, x[rows, k:], attn[rows, k:], None if head is None else slice(a - k, b - k), **kw)
            return (sub.logits, *(sub.hidden_states or ()))

        out = by_left_padding(attn, run)
        return Forward(out[0], tuple(out[1:]) or None)
    with head_on_positions(model, head) if head is not None else nullcontext():
        out = model(input_ids=x, attention_mask=attn, **kw)
    return Forward(out.logits, getattr(out, "hidden_states", None))


class MaskedDiffusionSampler:
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        gen_length: int,
        block_length: int,
        mode: str,
        steps_per_block: int | None = None,
        temperature: float = 0.0,
        mask_token_id: int | None = None,
        block_logits_only: bool = True,
        cache: str = "none",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"sampler mode={mode!r}; valid: {', '.join(MODES)}")
        if cache not in CACHE_MODES:
            raise ValueError(f"sampler cache={cache!r}; valid: {', '.join(CACHE_MODES)}")
        if gen_length < 1 or block_length < 1 or gen_length % block_length:
            raise ValueError(f"gen_length ({gen_length}) must be a positive multiple of block_length ({block_length})")
        self.mask_id = mask_token_id if mask_token_id is not None else tokenizer.mask_token_id
        if self.mask_id is None:
            raise ValueError(
                "masked diffusion needs a mask token id: the tokenizer declares none, so set sampler.mask_token_id "
                "(LLaDA: 126336)"
            )
        if temperature < 0:
            raise ValueError(f"sampler temperature must be >= 0, got {temperature}")
        spb = steps_per_block or block_length
        if mode == "low_confidence" and not 1 <= spb <= block_length:
            raise ValueError(f"steps_per_block must lie in [1, block_length={block_length}], got {spb}")
        self.tok, self.gen_length, self.block_length, self.mode = tokenizer, gen_length, block_length, mode
        self.steps_per_block, self.temperature = spb, temperature
        # the LM head only on the current block (the only logits a step uses); False: whole sequence
        self.block_logits_only = block_logits_only
        self.cache = cache  # Fast-dLLM's approximate key/value reuse within a block (src.models.dllm_cache)

    def _schedule(self) -> list[int]:
        """Tokens unmasked at each step of a block (low-confidence mode): as even as possible."""
        base, rem = divmod(self.block_length, self.steps_per_block)
        return [base + (1 if i < rem else 0) for i in range(self.steps_per_block)]

    @torch.no_grad()
    def generate(
        self,
        model: PreTrainedModel,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        *,
        knob: Tensor | float | KnobFn | None = None,
        generator: torch.Generator | None = None,
        keys: Tensor | None = None,
    ) -> DiffusionRollout:
        """Decode ``gen_length`` tokens after ``prompt_ids``. ``knob``: the per-row knob (confidence
        threshold, or ``gamma`` for ``entropy_bounded``) as a float, a ``(B,)`` tensor, or a callable
        ``(hidden_states, prompt_mask) -> (knob (B,), features)`` evaluated on the first forward's hidden
        states (every layer, prompt positions); the features are returned as ``first_hidden``."""
        B, P = prompt_ids.shape
        L, bl, dev = self.gen_length, self.block_length, prompt_ids.device
        mask_id = self.mask_id
        thr, knob_fn, first_hidden = None, None, None
        if self.mode in ("threshold", "entropy_bounded"):
            if knob is None:
                raise ValueError(
                    f"mode={self.mode} needs a knob: a threshold or gamma (float, per-row tensor or callable)"
                )
            if callable(knob):
                knob_fn = knob
            else:
                thr = torch.as_tensor(knob, dtype=torch.float32, device=dev).expand(B).clone()
        x = torch.cat([prompt_ids, torch.full((B, L), mask_id, dtype=prompt_ids.dtype, device=dev)], 1)
        attn = torch.cat([prompt_mask, torch.ones(B, L, dtype=prompt_mask.dtype, device=dev)], 1)
        decode_step = torch.full((B, L), -1, dtype=torch.long, device=dev)
        beh = torch.zeros(B, L, dtype=torch.float32, device=dev)
        nfe = torch.zeros(B, dtype=torch.long, device=dev)
        if self.cache != "none" and ignores_attention_mask(model) and not bool(prompt_mask.bool().all()):
            raise ValueError("sampler.cache needs a model that honours attention_mask; use sampler.cache=none")
        was_training = model.training
        model.eval()
        only, T = self.block_logits_only, P + L
        try:
            with block_kv_cache(model, attn) if self.cache != "none" else nullcontext() as kv:
                for blk in range(L // bl):
                    lo, hi = P + blk * bl, P + (blk + 1) * bl
                    schedule = self._schedule()
                    s = 0
                    while True:
                        masked = x[:, lo:hi] == mask_id
                        active = masked.any(-1)
                        if not active.any():
                            break
                        # the positions this forward computes: all, or (cached later steps of a block) the block
                        # and what follows it (prefix) or the block alone (dual)
                        q = slice(lo, T if self.cache == "prefix" else hi) if kv is not None and s > 0 else slice(0, T)
                        head = slice(lo - q.start, hi - q.start)  # the block, relative to the computed positions
                        first = knob_fn is not None and first_hidden is None  # also the controller's features
                        kw = {"output_hidden_states": True} if first else {}
                        if kv is None:
                            out = forward(model, x, attn, head if only else None, **kw)
                        else:
                            with head_on_positions(model, head) if only else nullcontext():
                                out = kv.full(model, x, attn, **kw) if q.start == 0 else kv.partial(model, x, attn, q)
                        if first:
                            value, first_hidden = knob_fn(
                                tuple(h[:, :P].detach() for h in out.hidden_states), prompt_mask
                            )
                            thr = torch.as_tensor(value, dtype=torch.float32, device=dev)
                        logits = (out.logits if only else out.logits[:, head]).float()
                        logits[..., mask_id] = float("-inf")  # never propose the mask token itself
                        model_logp = torch.log_softmax(logits, -1)  # the model's distribution (behaviour log-probs)
                        if self.temperature > 0:
                            logp = torch.log_softmax(logits / self.temperature, -1)
                            if keys is not None:  # rank/batch-invariant draws (src.utils.keyed_random)
                                tok = keyed_categorical(logp, keys, (blk << 16) + s)  # not batch-dependent
                            else:
                                tok = torch.multinomial(logp.exp().flatten(0, 1), 1, generator=generator).view(B, bl)
                        else:
                            logp = model_logp
                            tok = logp.argmax(-1)
                        tok_logp = logp.gather(-1, tok[..., None]).squeeze(-1)
                        conf = torch.where(masked, tok_logp.exp(), torch.full_like(tok_logp, -1.0))
                        best = torch.nn.functional.one_hot(conf.argmax(-1), bl).bool()
                        if self.mode == "threshold":
                            select = (conf > thr[:, None]) | best  # at least one token per step
                        elif self.mode == "entropy_bounded":
                            select = entropy_bounded_select(logp, masked, thr)
                        else:
                            k = schedule[min(s, len(schedule) - 1)]
                            kth = conf.topk(min(k, bl), -1).values[:, -1:]
                            select = (conf >= kth) & masked
                            # ties could select more than k; keep the first k in position order
                            select &= select.cumsum(-1) <= k
                        select &= masked & active[:, None]
                        x[:, lo:hi] = torch.where(select, tok.to(x.dtype), x[:, lo:hi])
                        cols = slice(lo - P, hi - P)
                        decode_step[:, cols] = torch.where(select, nfe[:, None], decode_step[:, cols])
                        beh[:, cols] = torch.where(
                            select, model_logp.gather(-1, tok[..., None]).squeeze(-1), beh[:, cols]
                        )
                        nfe += active.long()
                        s += 1
        finally:
            model.train(was_training)
        comp = x[:, P:]
        # every position is decoded (no padding), so without an EOS the whole completion counts
        cmask = completion_mask_from_ids(comp, self.tok.eos_token_id, pad_id=None)
        return DiffusionRollout(
            x, attn, P, decode_step, beh, nfe, cmask, decode_completions(self.tok, comp, cmask), thr, first_hidden
        )


def entropy_bounded_select(logp: Tensor, masked: Tensor, gamma: Tensor) -> Tensor:
    """EB rule: per row, the masked positions sorted by entropy, the largest prefix ``U`` with
    ``sum_U H - max_U H <= gamma`` (always at least the lowest-entropy one). ``logp`` (B, n, V),
    ``masked`` (B, n), ``gamma`` (B,) >= 0. Returns the (B, n) selection."""
    h = torch.special.entr(logp.exp()).sum(-1)  # entr(0) = 0: the -inf mask-token logit is harmless
    h = torch.where(masked, h, torch.full_like(h, float("inf")))
    h_sorted, order = h.sort(-1)
    finite = torch.isfinite(h_sorted)
    h_sorted = torch.where(finite, h_sorted, 0.0)
    # sorted ascending, max over a prefix is its last element: sum - max = exclusive cumulative sum
    take_sorted = (torch.cumsum(h_sorted, -1) - h_sorted <= gamma[:, None]) & finite
    take_sorted[:, 0] |= finite[:, 0]  # at least one (also for a negative/NaN gamma)
    return torch.zeros_like(masked).scatter(-1, order, take_sorted) & masked
