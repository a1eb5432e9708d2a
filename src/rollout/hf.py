"""Rollout backends: sample completions from a causal LM under ``no_grad``.

``HFGenerateBackend`` (``module.rollout.backend=hf``, the default) uses ``model.generate`` with the KV
cache. The interface is ``backend.generate(model, prompt_ids, prompt_mask, *, n, max_new_tokens,
temperature, top_p, do_sample, keys) -> Rollout`` so a faster engine can serve rollouts on GPU machines:
``VLLMBackend`` (``module.rollout.backend=vllm``) is import-guarded (``pip install vllm``). Any other
engine plugs in as a Hydra ``_target_`` with ``_partial_: true`` taking the tokenizer
(:func:`make_backend`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from transformers import LogitsProcessor, PreTrainedModel, PreTrainedTokenizerBase

from src.rollout.types import Rollout, RolloutEngine
from src.utils.keyed_random import keyed_gumbel


def completion_mask_from_ids(completion: Tensor, eos_id: int | None, pad_id: int | None) -> Tensor:
    """1 up to and including the first EOS (or everything, if no EOS was produced)."""
    if eos_id is None:
        return (completion != pad_id).long() if pad_id is not None else torch.ones_like(completion)
    is_eos = completion == eos_id
    after_first = (is_eos.cumsum(-1) - is_eos.long()) > 0  # strictly after the first EOS
    return (~after_first).long()


def decode_completions(tokenizer: PreTrainedTokenizerBase, completion: Tensor, mask: Tensor) -> list[str]:
    """Decode completions, dropping everything after the first EOS (``mask``) and special tokens."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    kept = torch.where(mask.bool(), completion, torch.full_like(completion, pad))
    return tokenizer.batch_decode(kept, skip_special_tokens=True)


def build_rollout(
    tokenizer: PreTrainedTokenizerBase, prompt_ids: Tensor, prompt_mask: Tensor, completion: Tensor, n: int
) -> Rollout:
    """Assemble a :class:`Rollout` from left-padded prompts (repeated ``n`` times) and completions."""
    cmask = completion_mask_from_ids(completion, tokenizer.eos_token_id, tokenizer.pad_token_id)
    seq = torch.cat([prompt_ids.repeat_interleave(n, 0), completion], 1)
    attn = torch.cat([prompt_mask.repeat_interleave(n, 0), cmask], 1)
    # single turn: every completion token up to the first EOS was sampled by the policy
    return Rollout(seq, attn, cmask, prompt_ids.shape[1], decode_completions(tokenizer, completion, cmask))


class KeyedSampling(LogitsProcessor):
    """Temperature / top-p sampling as Gumbel-max over keyed noise, run under greedy ``generate``.

    ``argmax(log softmax(z / T) + G)`` with ``G`` Gumbel is an exact draw from ``softmax(z / T)``
    (restricted to the nucleus when ``top_p < 1``). ``G`` for row ``b`` at completion position ``t``
    is a function of ``(keys[b], t)`` only (``src.utils.keyed_random``), so a row's completion does
    not depend on the rest of the batch (nor its padded prompt width), the world size or the global RNG.
    """

    def __init__(self, keys: Tensor, *, temperature: float, top_p: float, prompt_width: int) -> None:
        if temperature <= 0:
            raise ValueError(f"keyed sampling needs temperature > 0, got {temperature}")
        self.keys, self.temperature, self.top_p, self.prompt_width = keys, temperature, top_p, prompt_width

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        logp = torch.log_softmax(scores.float() / self.temperature, -1)
        if self.top_p < 1.0:  # nucleus: keep the smallest prefix of sorted tokens with mass >= top_p
            sorted_lp, order = logp.sort(-1, descending=True)
            drop_sorted = sorted_lp.exp().cumsum(-1) - sorted_lp.exp() >= self.top_p
            logp = logp.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
        return logp + keyed_gumbel(self.keys, input_ids.shape[1] - self.prompt_width, (scores.shape[-1],))


def sampling_kwargs(
    do_sample: bool, temperature: float, top_p: float, keys: Tensor | None, *, prompt_width: int
) -> dict[str, Any]:
    """``generate``'s sampling arguments: greedy; keyed draws (:class:`KeyedSampling` under greedy decoding)
    when ``keys`` are given; else the global RNG's temperature / top-p sampling."""
    if not do_sample:
        return {"do_sample": False}
    if keys is not None:
        proc = KeyedSampling(keys, temperature=temperature, top_p=top_p, prompt_width=prompt_width)
        return {"do_sample": False, "logits_processor": [proc]}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}


class HFGenerateBackend:
    """Sampling with ``transformers`` ``generate`` (KV cache)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    @torch.no_grad()
    def generate(
        self,
        model: PreTrainedModel,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        *,
        n: int = 1,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        do_sample: bool = True,
        keys: Tensor | None = None,
    ) -> Rollout:
        """``keys`` (one per output row, ``src.utils.keyed_random.row_keys``) switches sampling from the
        global RNG to rank/batch-invariant keyed draws."""
        if max_new_tokens < 1 or n < 1:
            raise ValueError(f"need max_new_tokens >= 1 and n >= 1, got {max_new_tokens}, {n}")
        tok = self.tokenizer
        was_training = model.training
        model.eval()
        try:
            if keys is not None and keys.shape[0] != prompt_ids.shape[0] * n:
                raise ValueError(f"keys has {keys.shape[0]} rows, the rollout has {prompt_ids.shape[0] * n}")
            kw = sampling_kwargs(do_sample, temperature, top_p, keys, prompt_width=prompt_ids.shape[1])
            out = model.generate(
                input_ids=prompt_ids.repeat_interleave(n, 0),
                attention_mask=prompt_mask.repeat_interleave(n, 0),
                max_new_tokens=max_new_tokens,  # no min_new_tokens: it would bias samples off-policy
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                **kw,
            )
        finally:
            model.train(was_training)
        comp = out[:, prompt_ids.shape[1] :]
        if comp.shape[1] < max_new_tokens:  # generation stopped early for every row: pad to a fixed width
            pad = torch.full(
                (comp.shape[0], max_new_tokens - comp.shape[1]), tok.pad_token_id, dtype=comp.dtype, device=comp.device
            )
            comp = torch.cat([comp, pad], 1)
        return build_rollout(tok, prompt_ids, prompt_mask, comp, n)


class VLLMBackend:
    """Rollouts served by vLLM (GPU machines). Weights are pushed from the training model before
    each generation call. Optional dependency: ``pip install vllm``.

    Args:
        tokenizer: the policy's tokenizer.
        model_name_or_path: what vLLM loads first; ``None``: the training model's own
            ``name_or_path``, read at the first rollout.
        gpu_memory_utilization: vLLM's share of the GPU memory.
        dtype: vLLM's weight dtype.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        model_name_or_path: str | None = None,
        gpu_memory_utilization: float = 0.3,
        dtype: str = "bfloat16",
    ) -> None:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise ImportError(
                "module.rollout.backend=vllm needs vLLM, which is not installed: `pip install vllm` on a GPU "
                "machine, or use module.rollout.backend=hf"
            )
        self.tokenizer = tokenizer
        self.model_name_or_path, self.gpu_memory_utilization, self.dtype = (
            model_name_or_path,
            gpu_memory_utilization,
            dtype,
        )
        self.llm = None

    def _engine(self, model):  # pragma: no cover - needs a GPU and vllm
        if self.llm is None:
            from vllm import LLM

            name = self.model_name_or_path or model.name_or_path
            self.llm = LLM(model=name, gpu_memory_utilization=self.gpu_memory_utilization, dtype=self.dtype)
        return self.llm

    @torch.no_grad()
    def generate(  # pragma: no cover - needs a GPU and vllm
        self,
        model,
        prompt_ids,
        prompt_mask,
        *,
        n=1,
        max_new_tokens=32,
        temperature=1.0,
        top_p=1.0,
        do_sample=True,
        keys=None,
    ) -> Rollout:
        if keys is not None:
            raise ValueError("module.rng=keyed needs the HF backend; vLLM samples with its own RNG")
        from vllm import SamplingParams

        llm = self._engine(model)
        runner = llm.llm_engine.model_executor.driver_worker.model_runner.model
        runner.load_weights(model.state_dict().items())
        tok = self.tokenizer
        prompts = [ids[m.bool()].tolist() for ids, m in zip(prompt_ids, prompt_mask)]
        params = SamplingParams(
            n=n, max_tokens=max_new_tokens, temperature=temperature if do_sample else 0.0, top_p=top_p
        )
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        comp = torch.full((len(prompts) * n, max_new_tokens), tok.pad_token_id, dtype=torch.long)
        for i, o in enumerate(outs):
            for j, c in enumerate(o.outputs):
                ids = list(c.token_ids)[:max_new_tokens]
                comp[i * n + j, : len(ids)] = torch.tensor(ids)
        return build_rollout(tok, prompt_ids, prompt_mask, comp.to(prompt_ids.device), n)


BACKENDS = {"hf": HFGenerateBackend, "vllm": VLLMBackend}


def make_backend(
    spec: str | Callable[[PreTrainedTokenizerBase], Any], tokenizer: PreTrainedTokenizerBase
) -> RolloutEngine:
    """The rollout backend ``module.rollout.backend`` names: ``hf`` | ``vllm``, or a factory taking the
    tokenizer (a Hydra ``_target_`` with ``_partial_: true``, e.g. ``src.rollout.multiturn.ToolRolloutEngine``)."""
    if callable(spec):
        engine = spec(tokenizer)
        if not isinstance(engine, RolloutEngine):
            raise TypeError(f"module.rollout.backend built a {type(engine).__name__}, which has no generate()")
        return engine
    if spec not in BACKENDS:
        raise ValueError(f"module.rollout.backend={spec!r}; valid: {', '.join(BACKENDS)}, or a _target_")
    return BACKENDS[spec](tokenizer)


def completion_logps(model: PreTrainedModel, rollout: Rollout, *, chunk_size: int = 128, fused: bool = True) -> Tensor:
    """``(N, T)`` log-probs of the completion tokens (with grad if the model has it).

    Position ids follow the attention mask, as in ``generate``, so left padding does not shift
    positions between sampling and scoring. ``fused`` (default) runs the LM head only on the
    completion tokens (``src.models.scoring``), never building ``(N, P + T, V)`` logits; positions
    past a completion's end and environment tokens are then 0 (``action_mask`` masks them everywhere).
    """
    from src.models.scoring import suffix_logps

    attn = rollout.attention_mask
    pos = (attn.cumsum(-1) - 1).clamp_min(0)
    return suffix_logps(
        model, rollout.sequences, attn, rollout.action_mask, position_ids=pos, fused=fused, chunk_size=chunk_size
    )


@torch.no_grad()
def greedy_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_new_tokens: int = 16,
    engine: RolloutEngine | None = None,
) -> list[str]:
    """Greedy completions of raw prompt strings (BOS added like the data pipeline does); for sample tables.
    ``engine``: the module's rollout engine (a tool engine's completions show the calls and the tool responses);
    plain HF generate by default."""
    rows = []
    for p in prompts:
        ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        if tokenizer.bos_token_id is not None and (not ids or ids[0] != tokenizer.bos_token_id):
            ids = [tokenizer.bos_token_id, *ids]
        rows.append(ids)
    P = max(len(r) for r in rows)
    device = next(model.parameters()).device
    ids = torch.full((len(rows), P), tokenizer.pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, P - len(r) :] = torch.tensor(r, device=device)
        mask[i, P - len(r) :] = 1
    engine = engine or HFGenerateBackend(tokenizer)
    out = engine.generate(model, ids, mask, n=1, max_new_tokens=max_new_tokens, do_sample=False)
    return getattr(out, "full_texts", None) or out.texts  # a tool rollout: the calls and the responses
