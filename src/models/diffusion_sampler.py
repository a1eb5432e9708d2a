"""Masked-diffusion decoding (LLaDA-style) with exact NFE counting and trajectory recording.

The completion (``gen_length`` tokens) starts fully masked and is decoded block by block
(semi-autoregressive, ``block_length`` tokens per block). Inside a block each forward pass (one
NFE) proposes a token for every masked position and unmasks:

* ``mode="low_confidence"``: a fixed number of the most confident positions per step
  (``steps_per_block`` steps per block; LLaDA's low-confidence remasking);
* ``mode="threshold"``: every masked position whose confidence exceeds the row's threshold, and
  at least the most confident one (Fast-dLLM's confidence-threshold parallel decoding). The
  threshold may differ per row (DiFFPO's controller picks it per prompt).

Confidence is the probability of the proposed token (argmax at ``temperature=0``, a sample of
``softmax(logits / T)`` otherwise). The rollout records, for every completion token, the step at
which it was unmasked and its log-probability under the sampling distribution at that step: what
``src.losses.diffusion`` needs for the staged (one-step / two-stage / exact) likelihoods and the
importance ratios. Rows are decoded together but NFEs are counted per row (a forward counts for a
row only while that row still has masked tokens in its current block).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.models.rollout import completion_mask_from_ids, decode_completions
from src.utils.keyed_random import keyed_categorical

MODES = ("threshold", "low_confidence")


@dataclass
class DiffusionRollout:
    """Attributes: ``sequences`` (B, P+L); ``prompt_len`` P; ``decode_step`` (B, L) per-row step at
    which each token was unmasked; ``behaviour_logps`` (B, L); ``nfe`` (B,); ``completion_mask``
    (B, L) up to and including the first EOS; ``texts``; ``thresholds`` (B,) or None."""

    sequences: Tensor
    attention_mask: Tensor
    prompt_len: int
    decode_step: Tensor
    behaviour_logps: Tensor
    nfe: Tensor
    completion_mask: Tensor
    texts: list[str]
    thresholds: Tensor | None = None

    @property
    def completion_ids(self) -> Tensor:
        return self.sequences[:, self.prompt_len :]


def masked_lm_logits(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Bidirectional logits ``(B, T, V)`` of a masked LM (BERT/ModernBERT/LLaDA-style)."""
    return model(input_ids=input_ids, attention_mask=attention_mask).logits


class MaskedDiffusionSampler:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, gen_length: int = 16, block_length: int = 16,
                 mode: str = "threshold", steps_per_block: int | None = None, temperature: float = 0.0) -> None:  # fmt: skip
        if mode not in MODES:
            raise ValueError(f"sampler mode={mode!r}; valid: {', '.join(MODES)}")
        if gen_length < 1 or block_length < 1 or gen_length % block_length:
            raise ValueError(f"gen_length ({gen_length}) must be a positive multiple of block_length ({block_length})")
        if tokenizer.mask_token_id is None:
            raise ValueError("masked diffusion needs a tokenizer with a mask token")
        spb = steps_per_block or block_length
        if mode == "low_confidence" and not 1 <= spb <= block_length:
            raise ValueError(f"steps_per_block must lie in [1, block_length={block_length}], got {spb}")
        self.tok, self.gen_length, self.block_length, self.mode = tokenizer, gen_length, block_length, mode
        self.steps_per_block, self.temperature = spb, temperature

    def _schedule(self) -> list[int]:
        """Tokens unmasked at each step of a block (low-confidence mode): as even as possible."""
        base, rem = divmod(self.block_length, self.steps_per_block)
        return [base + (1 if i < rem else 0) for i in range(self.steps_per_block)]

    @torch.no_grad()
    def generate(self, model: PreTrainedModel, prompt_ids: Tensor, prompt_mask: Tensor, *,
                 threshold: Tensor | float | None = None, generator: torch.Generator | None = None,
                 keys: Tensor | None = None) -> DiffusionRollout:  # fmt: skip
        B, P = prompt_ids.shape
        L, bl, dev = self.gen_length, self.block_length, prompt_ids.device
        mask_id = self.tok.mask_token_id
        if self.mode == "threshold":
            if threshold is None:
                raise ValueError("mode=threshold needs a threshold (float or per-row tensor)")
            thr = torch.as_tensor(threshold, dtype=torch.float32, device=dev).expand(B).clone()
        else:
            thr = None
        x = torch.cat([prompt_ids, torch.full((B, L), mask_id, dtype=prompt_ids.dtype, device=dev)], 1)
        attn = torch.cat([prompt_mask, torch.ones(B, L, dtype=prompt_mask.dtype, device=dev)], 1)
        decode_step = torch.full((B, L), -1, dtype=torch.long, device=dev)
        beh = torch.zeros(B, L, dtype=torch.float32, device=dev)
        nfe = torch.zeros(B, dtype=torch.long, device=dev)
        was_training = model.training
        model.eval()
        try:
            for blk in range(L // bl):
                lo, hi = P + blk * bl, P + (blk + 1) * bl
                schedule = self._schedule()
                s = 0
                while True:
                    masked = x[:, lo:hi] == mask_id
                    active = masked.any(-1)
                    if not active.any():
                        break
                    logits = masked_lm_logits(model, x, attn)[:, lo:hi].float()
                    logits[..., mask_id] = float("-inf")  # never propose the mask token itself
                    if self.temperature > 0:
                        logp = torch.log_softmax(logits / self.temperature, -1)
                        if keys is not None:  # rank/batch-invariant draws (src.utils.keyed_random)
                            tok = keyed_categorical(logp, keys, (blk << 16) + s)  # not batch-dependent
                        else:
                            tok = torch.multinomial(logp.exp().flatten(0, 1), 1, generator=generator).view(B, bl)
                    else:
                        logp = torch.log_softmax(logits, -1)
                        tok = logp.argmax(-1)
                    tok_logp = logp.gather(-1, tok[..., None]).squeeze(-1)
                    conf = torch.where(masked, tok_logp.exp(), torch.full_like(tok_logp, -1.0))
                    best = torch.nn.functional.one_hot(conf.argmax(-1), bl).bool()
                    if self.mode == "threshold":
                        select = (conf > thr[:, None]) | best  # at least one token per step
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
                    beh[:, cols] = torch.where(select, tok_logp, beh[:, cols])
                    nfe += active.long()
                    s += 1
        finally:
            model.train(was_training)
        comp = x[:, P:]
        # every position is decoded (no padding), so without an EOS the whole completion counts
        cmask = completion_mask_from_ids(comp, self.tok.eos_token_id, pad_id=None)
        return DiffusionRollout(
            x, attn, P, decode_step, beh, nfe, cmask, decode_completions(self.tok, comp, cmask), thr
        )
