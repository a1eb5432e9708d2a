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
* ``mode="dream"``: Dream's ``diffusion_generate`` (:meth:`MaskedDiffusionSampler._generate_dream`): the whole
  completion at once on Dream's timestep schedule, with its unmasking algorithms ``alg`` (``origin``,
  ``maskgit_plus``, ``topk_margin``, ``entropy``), ``alg_temp``, ``temperature``/``top_p``/``top_k``.

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
Every forward goes through the model's family (:mod:`src.models.families`): which logits predict which
tokens (in place for LLaDA, shifted by one for Dream), the mask token, and the padding (a model that ignores
``attention_mask``, LLaDA, runs on groups of equally padded rows without their padding; Dream gets its 4-D
mask), so batching never changes a row's tokens or NFE.

The LM head runs on the current block only. ``cache="prefix"|"dual"`` adds Fast-dLLM's approximate
block-wise key/value reuse (:mod:`src.rollout.dllm_cache`): each block's first step is a full forward,
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

from src.models.families import family_of
from src.models.scoring import head_on_positions
from src.rollout.dllm_cache import CACHE_MODES, block_kv_cache
from src.rollout.hf import completion_mask_from_ids, decode_completions
from src.rollout.types import Rollout
from src.utils.keyed_random import keyed_categorical, keyed_gumbel, keyed_uniform

MODES = ("threshold", "low_confidence", "entropy_bounded", "dream")
DREAM_ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")
# (hidden states of every layer at the prompt positions, prompt mask) -> (knob (B,), features kept for training)
KnobFn = Callable[[tuple[Tensor, ...], Tensor], tuple[Tensor, Tensor]]


def check_knobs(mode: str, values: list[float], *, key: str) -> None:
    """A clear error when knob values do not fit the sampler mode (thresholds in [0, 1], gammas >= 0)."""
    if mode in ("threshold", "dream") and any(not 0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"{key}: sampler.mode={mode} takes confidence thresholds in [0, 1], got {values}")
    if mode == "entropy_bounded" and any(not v >= 0 for v in values):
        raise ValueError(f"{key}: sampler.mode=entropy_bounded takes entropy budgets gamma >= 0, got {values}")


@dataclass
class DiffusionRollout(Rollout):
    """A masked-diffusion rollout (:class:`src.rollout.types.Rollout`; ``action_mask`` ``(B, L)``: every
    position is decoded by the policy, and the tokens up to and including the first EOS count). Adds:
    ``decode_step`` (B, L) per-row step at which each token was unmasked; ``behaviour_logps`` (B, L)
    untempered log-probs at that step; ``nfe`` (B,); ``knobs`` (B,) knob per row (threshold or gamma) or None;
    ``first_hidden``: the features the knob callable built from the first decoding forward's prompt states
    (None for a fixed knob)."""

    decode_step: Tensor | None = None
    behaviour_logps: Tensor | None = None
    nfe: Tensor | None = None
    knobs: Tensor | None = None
    first_hidden: Tensor | None = None


def masked_lm_logits(
    model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, *, positions: slice | None = None
) -> Tensor:
    """The logits ``(B, T, V)`` of a masked LM that predict each position's token; with ``positions``, only
    those ``(B, n, V)``, the LM head applied nowhere else. The model's family aligns them (in place for LLaDA,
    shifted for Dream) and handles its padding (:meth:`src.models.families.ModelFamily.logits_for`)."""
    return family_of(model).logits_for(model, input_ids, attention_mask, positions).logits


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
        alg: str = "maskgit_plus",
        steps: int | None = None,
        eps: float = 1e-3,
        alg_temp: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"sampler mode={mode!r}; valid: {', '.join(MODES)}")
        if mode == "dream":
            if alg not in DREAM_ALGS:
                raise ValueError(f"sampler alg={alg!r} (mode=dream); valid: {', '.join(DREAM_ALGS)}")
            if block_length != gen_length:
                raise ValueError(
                    f"sampler mode=dream decodes the whole completion at once (Dream's diffusion_generate): set "
                    f"block_length = gen_length ({gen_length}), got {block_length}"
                )
            if steps is not None and steps < 1:
                raise ValueError(f"sampler steps must be >= 1, got {steps}")
            if not 0 < eps < 1:
                raise ValueError(f"sampler eps must lie in (0, 1), got {eps}")
            if top_p is not None and not 0 < top_p <= 1:
                raise ValueError(f"sampler top_p must lie in (0, 1], got {top_p}")
            if top_k is not None and top_k < 1:
                raise ValueError(f"sampler top_k must be >= 1, got {top_k}")
            if cache != "none":
                raise ValueError("sampler mode=dream has no block cache; use sampler.cache=none")
        elif (alg_temp, top_p, top_k) != (None, None, None):
            raise ValueError("sampler alg_temp/top_p/top_k belong to mode=dream (Dream's decoding)")
        if cache not in CACHE_MODES:
            raise ValueError(f"sampler cache={cache!r}; valid: {', '.join(CACHE_MODES)}")
        if gen_length < 1 or block_length < 1 or gen_length % block_length:
            raise ValueError(f"gen_length ({gen_length}) must be a positive multiple of block_length ({block_length})")
        if mask_token_id is not None:
            raise ValueError(
                "sampler.mask_token_id moved to the model: set model.mask_token_id (the model's family reads the "
                "config's, the tokenizer's, or its own default, e.g. LLaDA's 126336)"
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
        self.cache = cache  # Fast-dLLM's approximate key/value reuse within a block (src.rollout.dllm_cache)
        # mode=dream: Dream's diffusion_generate settings (steps default: one per token)
        self.alg, self.steps, self.eps = alg, steps or gen_length, eps
        self.alg_temp, self.top_p, self.top_k = alg_temp, top_p, top_k

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
        family = family_of(model)
        mask_id = family.mask_token_id(model, self.tok)
        if self.mode == "dream":
            return self._generate_dream(
                model, family, mask_id, prompt_ids, prompt_mask, knob=knob, keys=keys, generator=generator
            )
        if self.mode in ("threshold", "entropy_bounded") and knob is None:
            raise ValueError(
                f"mode={self.mode} needs a knob: a threshold or gamma (float, per-row tensor or callable)"
            )
        # low_confidence has a fixed schedule and no knob
        thr, knob_fn = _knob(None if self.mode == "low_confidence" else knob, B, dev)
        first_hidden = None
        x, attn, decode_step, beh, nfe = self._start(prompt_ids, prompt_mask, mask_id)
        if self.cache != "none" and not (family.supports_block_cache and family.shift == 0):
            raise ValueError(f"sampler.cache does not support {family.name} models; use sampler.cache=none")
        if self.cache != "none" and family.ignores_attention_mask(model) and not bool(prompt_mask.bool().all()):
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
                            out = family.logits_for(model, x, attn, head if only else None, **kw)
                        else:
                            with head_on_positions(model, head) if only else nullcontext():
                                out = kv.full(model, x, attn, **kw) if q.start == 0 else kv.partial(model, x, attn, q)
                        if first:
                            thr, first_hidden = _first_knob(knob_fn, out.hidden_states, P, prompt_mask)
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
        return self._rollout(x, attn, P, decode_step, beh, nfe, thr, first_hidden)

    def _rollout(self, x, attn, P, decode_step, beh, nfe, thr, first_hidden) -> DiffusionRollout:
        comp = x[:, P:]
        # every position is decoded (no padding), so without an EOS the whole completion counts
        cmask = completion_mask_from_ids(comp, self.tok.eos_token_id, pad_id=None)
        return DiffusionRollout(
            x,
            attn,
            cmask,
            P,
            decode_completions(self.tok, comp, cmask),
            decode_step=decode_step,
            behaviour_logps=beh,
            nfe=nfe,
            knobs=thr,
            first_hidden=first_hidden,
        )

    # ---- Dream's decoding ------------------------------------------------------------------------------------
    def _dream_probs(self, logits: Tensor) -> Tensor:
        """Dream's sampling distribution: temperature, then nucleus (top-p: the sorted tokens past the first whose
        cumulative probability exceeds ``top_p`` get the dtype's lowest value), then top-k, then softmax."""
        if self.temperature > 0:
            logits = logits / self.temperature
        low = torch.finfo(logits.dtype).min
        if self.top_p is not None and self.top_p < 1:
            sorted_logits, order = logits.sort(-1, descending=True)
            drop = torch.softmax(sorted_logits, -1).cumsum(-1) > self.top_p
            drop[..., 1:] = drop[..., :-1].clone()
            drop[..., 0] = False
            logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), low)
        if self.top_k is not None:
            kth = logits.topk(min(self.top_k, logits.shape[-1]), -1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, low)
        return torch.softmax(logits, -1)

    def _dream_tokens(self, probs: Tensor, rows: Tensor, keys: Tensor | None, generator, counter: int) -> Tensor:
        """``(B, L)`` tokens where ``rows`` ``(B, L)`` is set: argmax at temperature 0, else a draw from ``probs``
        (keyed; or one ``multinomial`` over those positions in row-major order, as Dream's ``Categorical``)."""
        if self.temperature == 0:
            return probs.max(-1).indices
        if keys is not None:
            return keyed_categorical(torch.log(probs), keys, counter)
        tok = torch.zeros(rows.shape, dtype=torch.long, device=probs.device)
        sel = probs[rows]
        if sel.shape[0]:
            sel = sel / sel.sum(-1, keepdim=True)  # what Categorical(probs=...) normalises to
            tok[rows] = torch.multinomial(sel, 1, True, generator=generator).squeeze(-1)
        return tok

    def _start(self, prompt_ids: Tensor, prompt_mask: Tensor, mask_id: int) -> tuple[Tensor, ...]:
        """The decoding state: ``x`` (the prompt, then ``gen_length`` mask tokens), its attention mask, and per
        completion token the step it was decoded at (-1: not yet) and its behaviour log-prob, and NFE per row."""
        B, L, dev = prompt_ids.shape[0], self.gen_length, prompt_ids.device
        x = torch.cat([prompt_ids, torch.full((B, L), mask_id, dtype=prompt_ids.dtype, device=dev)], 1)
        attn = torch.cat([prompt_mask, torch.ones(B, L, dtype=prompt_mask.dtype, device=dev)], 1)
        decode_step = torch.full((B, L), -1, dtype=torch.long, device=dev)
        beh = torch.zeros(B, L, dtype=torch.float32, device=dev)
        nfe = torch.zeros(B, dtype=torch.long, device=dev)
        return x, attn, decode_step, beh, nfe

    def _generate_dream(
        self, model, family, mask_id: int, prompt_ids: Tensor, prompt_mask: Tensor, *, knob, keys, generator
    ) -> DiffusionRollout:
        """Dream's ``diffusion_generate`` on the completion: ``steps`` steps of ``timesteps = linspace(1, eps,
        steps + 1)`` (float32); at step ``i`` (``t, s = timesteps[i], timesteps[i + 1]``) one forward, whose logits
        the family aligns (Dream: the column before predicts each token), proposes a token for every masked
        position from :meth:`_dream_probs`, and

        * ``origin`` reveals each masked position with probability ``1 - s / t`` (1 at the last step): uniforms
          first, then tokens for the revealed positions only (Dream's order of draws);
        * ``maskgit_plus`` / ``topk_margin`` / ``entropy`` rank the masked positions by the proposal's probability /
          top-1 minus top-2 probability / negative entropy and reveal the top ``int(n * (1 - s / t))`` of the
          row's ``n`` masked positions (all at the last step); with ``alg_temp`` a draw without replacement from
          ``softmax(confidence / alg_temp)`` instead of the top.

        The knob (a confidence threshold per row, or the controller's callable) reveals, on top of that, every
        masked position whose confidence in [0, 1] exceeds it: the proposal's probability (``maskgit_plus`` and
        ``origin``, whose positions are otherwise random), the top-1 minus top-2 margin (``topk_margin``), or
        ``exp(-entropy)`` (``entropy``). No knob: exactly Dream's decoding. Lower threshold = more tokens a step =
        fewer NFE. A proposal of the mask token leaves the position masked (as in Dream).

        Differences from ``diffusion_generate``, none of which changes a token of a run without knob whose rows
        have the same number of masks: the count ``n`` is the row's own (Dream: the batch average, the same when
        no knob makes rows differ); a row stops once it has no mask (Dream spends all ``steps`` forwards; only
        ``origin`` can finish early); the confidences are fp32 (Dream: the logits' dtype); draws are keyed per
        row when ``keys`` are given (batch- and world-size-invariant), else from ``generator`` / the global
        generator in Dream's order."""
        B, P = prompt_ids.shape
        L, dev, alg = self.gen_length, prompt_ids.device, self.alg
        thr, knob_fn = _knob(knob, B, dev)
        first_hidden = None
        x, attn, decode_step, beh, nfe = self._start(prompt_ids, prompt_mask, mask_id)
        timesteps = torch.linspace(1, self.eps, self.steps + 1, device=dev)
        was_training = model.training
        model.eval()
        try:
            for i in range(self.steps):
                masked = x[:, P:] == mask_id
                active = masked.any(-1)
                if not active.any():
                    break
                first = knob_fn is not None and first_hidden is None
                kw = {"output_hidden_states": True} if first else {}
                out = family.logits_for(model, x, attn, slice(P, P + L), **kw)
                if first:
                    thr, first_hidden = _first_knob(knob_fn, out.hidden_states, P, prompt_mask)
                logits = out.logits.float()
                probs = self._dream_probs(logits)
                t, s = timesteps[i], timesteps[i + 1]
                last, counter = i == self.steps - 1, i << 2
                if alg == "origin":
                    p_reveal = 1.0 if last else 1 - s / t
                    if keys is not None:
                        u = keyed_uniform(keys, counter, (L,))
                    else:
                        u = torch.ones(B, L, device=dev)
                        u[masked] = torch.rand(int(masked.sum()), device=dev, generator=generator)
                    select = masked & (u < p_reveal)
                    # Dream draws tokens for the revealed positions only; a knob needs every proposal's probability
                    tok = self._dream_tokens(
                        probs, masked if thr is not None else select, keys, generator, counter + 1
                    )
                    unit = probs.gather(-1, tok[..., None]).squeeze(-1)
                else:
                    tok = self._dream_tokens(probs, masked, keys, generator, counter + 1)
                    p_tok = probs.gather(-1, tok[..., None]).squeeze(-1)
                    if alg == "maskgit_plus":
                        conf = unit = p_tok
                    elif alg == "topk_margin":
                        top2 = probs.topk(2, -1).values
                        conf = unit = top2[..., 0] - top2[..., 1]
                    else:  # entropy: the negative entropy, as Dream computes it
                        conf = (probs * torch.log(probs + 1e-10)).sum(-1)
                        unit = conf.exp()
                    n = masked.sum(-1) / 1  # float32, as Dream's count
                    k = n.long() if last else (n * (1 - s / t)).long()  # int() truncates
                    # Dream ranks over the whole row (prompt at -inf) with one topk / multinomial for the batch;
                    # the same calls here keep its tie-breaking (ties are common: top-p can leave one token, entropy 0)
                    full = torch.full((B, P + L), float("-inf"), device=dev)
                    full[:, P:] = torch.where(masked, conf, torch.full_like(conf, float("-inf")))
                    chosen = torch.zeros_like(full, dtype=torch.bool)
                    if self.alg_temp and keys is not None:  # Gumbel-top-k: a keyed draw without replacement
                        g = keyed_gumbel(keys, counter + 2, (L,))
                        rank_of = (full[:, P:] / self.alg_temp + g).argsort(-1, descending=True).argsort(-1)
                        chosen[:, P:] = rank_of < k[:, None]
                    else:
                        weights = torch.softmax(full / self.alg_temp, -1) if self.alg_temp else None
                        same = bool((k == k[0]).all())
                        for rows in [slice(None)] if same else [slice(r, r + 1) for r in range(B)]:
                            kk = int(k[rows][0])
                            if kk > 0:
                                pick = (
                                    torch.multinomial(weights[rows], kk, generator=generator)
                                    if weights is not None
                                    else torch.topk(full[rows], kk).indices
                                )
                                chosen[rows] = chosen[rows].scatter(-1, pick, True)
                    select = chosen[:, P:]
                    select &= masked
                if thr is not None:
                    select |= masked & (unit > thr[:, None])
                select &= active[:, None]
                x[:, P:] = torch.where(select, tok.to(x.dtype), x[:, P:])
                revealed = select & (tok != mask_id)
                decode_step = torch.where(revealed, nfe[:, None], decode_step)
                no_mask = logits.clone()
                no_mask[..., mask_id] = float(
                    "-inf"
                )  # the surrogate's distribution: a decoded token is never the mask
                beh = torch.where(revealed, torch.log_softmax(no_mask, -1).gather(-1, tok[..., None]).squeeze(-1), beh)
                nfe += active.long()
        finally:
            model.train(was_training)
        return self._rollout(x, attn, P, decode_step, beh, nfe, thr, first_hidden)


def _knob(knob: Tensor | float | KnobFn | None, B: int, dev: torch.device) -> tuple[Tensor | None, KnobFn | None]:
    """``(per-row knob (B,) or None, callable or None)`` from the ``knob`` argument of ``generate``."""
    if knob is None:
        return None, None
    if callable(knob):
        return None, knob
    return torch.as_tensor(knob, dtype=torch.float32, device=dev).expand(B).clone(), None


def _first_knob(knob_fn: KnobFn, hidden_states: tuple[Tensor, ...], P: int, prompt_mask: Tensor):
    """The per-row knob the callable picks from the first decoding forward's prompt states, and its features."""
    value, features = knob_fn(tuple(h[:, :P].detach() for h in hidden_states), prompt_mask)
    return torch.as_tensor(value, dtype=torch.float32, device=prompt_mask.device), features


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
