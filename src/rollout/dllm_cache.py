"""Fast-dLLM's block-wise approximate key/value cache for masked-diffusion decoding.

A masked LM attends bidirectionally, so no position's keys and values are final while any token
in the sequence can still change: an exact cache does not exist. Fast-dLLM (Wu et al., 2025,
arXiv:2505.22618) observes that the keys/values of positions *outside* the block being decoded
change little during that block, and reuses them:

* at the first step of every block the sampler runs a full forward and records every layer's
  (rotary-embedded) keys and values at all positions;
* the later steps of the block compute only some positions and take the others' keys/values from
  that record: ``cache="prefix"`` computes the current block and everything after it (the prompt
  and the finished blocks come from the cache); ``cache="dual"`` (Fast-dLLM's DualCache) computes the
  current block only (the masked suffix comes from the cache too).

The approximation is that the cached positions do not see the tokens unmasked since the block
started; how much that costs in accuracy is measured (README), never assumed. A step over ``n``
positions costs ``n`` query rows against all ``T`` keys instead of ``T`` x ``T``.

How: the model's attention is switched, for the duration of :func:`block_kv_cache`, to an attention
function registered with transformers' ``AttentionInterface``. A model whose attention layers
dispatch through that interface and whose forward takes ``position_ids`` can use it (ModernBERT is
the one tested); remote code with its own attention (LLaDA's ``trust_remote_code`` model) does not
call it, which the first forward detects and refuses with a clear error instead of silently
decoding without a cache. Sliding-window layers (ModernBERT's local attention) get the same
bidirectional window as the uncached model.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor
from transformers import AttentionInterface

from src.models.hf import base_model_name

CACHE_MODES = ("none", "prefix", "dual")
_IMPL = "dllm_block_kv_cache"
_ACTIVE: ContextVar[BlockKVCache | None] = ContextVar("dllm_block_kv_cache", default=None)


class BlockKVCache:
    """Per-layer keys/values of the last full forward; :meth:`full` records them, :meth:`partial`
    computes a contiguous range of positions against them. ``key_mask`` (B, T): the padding mask of
    the whole sequence (True/1 = a real token)."""

    def __init__(self, key_mask: Tensor) -> None:
        self.key_mask = key_mask.bool()
        self.keys: dict[int, Tensor] = {}
        self.values: dict[int, Tensor] = {}
        self.query_pos: Tensor | None = None  # None: a full forward (record); else the positions computed
        self.calls = 0
        self.running = False

    def _run(self, model: torch.nn.Module, query_pos: Tensor | None, **inputs: Any) -> Any:
        self.query_pos, self.calls, self.running = query_pos, 0, True
        try:
            out = model(**inputs)
        finally:
            self.query_pos, self.running = None, False
        layers = getattr(model.config, "num_hidden_layers", None)
        if self.calls == 0 or (layers is not None and self.calls != layers):
            raise ValueError(
                f"sampler.cache needs a model whose attention layers dispatch through transformers' AttentionInterface "
                f"(ModernBERT does); {base_model_name(model)} called it {self.calls} times for {layers} layers (remote "
                "code such as LLaDA's has its own attention): use sampler.cache=none"
            )
        return out

    def full(self, model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, **kw: Any) -> Any:
        """A forward over every position that also records each layer's keys and values."""
        return self._run(model, None, input_ids=input_ids, attention_mask=attention_mask, **kw)

    def partial(
        self, model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, positions: slice, **kw: Any
    ) -> Any:
        """A forward over ``input_ids[:, positions]`` only (at their true rotary positions); the other
        positions' keys/values come from the last :meth:`full` (stale by design)."""
        if not self.keys:
            raise RuntimeError("BlockKVCache.partial before any full forward: nothing is cached")
        B, T = input_ids.shape
        pos = torch.arange(T, device=input_ids.device)[positions]
        return self._run(
            model,
            pos,
            input_ids=input_ids[:, positions],
            attention_mask=attention_mask[:, positions],
            position_ids=pos[None].expand(B, -1),
            **kw,
        )


def _attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    **_: Any,
) -> tuple[Tensor, None]:
    """``AttentionInterface`` function: ``query/key/value`` (B, H, n, D) for the positions this forward
    computes. The incoming mask is ignored: the cache builds its own over all ``T`` keys."""
    cache = _ACTIVE.get()
    if cache is None or not cache.running:
        raise RuntimeError(
            f"attention implementation {_IMPL!r} used outside BlockKVCache.full/partial: inside "
            "block_kv_cache() call the model through them"
        )
    layer = getattr(module, "layer_idx", None)
    layer = cache.calls if layer is None else layer
    cache.calls += 1
    T = cache.key_mask.shape[1]
    if cache.query_pos is None:  # full forward: record
        cache.keys[layer], cache.values[layer] = key, value
        qpos = torch.arange(T, device=query.device)
    else:  # fresh keys/values at the computed positions, the recorded ones elsewhere
        qpos = cache.query_pos
        key = cache.keys[layer].index_copy(2, qpos, key)
        value = cache.values[layer].index_copy(2, qpos, value)
    mask = cache.key_mask[:, None, None, :]  # (B, 1, 1, T): padding is never attended to
    if getattr(module, "sliding_window", None) is not None:  # bidirectional local attention, as transformers masks it
        half = module.config.sliding_window
        kpos = torch.arange(T, device=query.device)
        mask = mask & ((qpos[:, None] - kpos[None, :]).abs() <= half)[None, None]
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=mask,
        scale=scaling,
        dropout_p=dropout if module.training else 0.0,
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(_IMPL, _attention)


@contextmanager
def block_kv_cache(model: torch.nn.Module, attention_mask: Tensor):
    """Within the block the model's attention runs through the cache (yielded); restored after."""
    cfg = model.config
    previous = cfg._attn_implementation
    cache = BlockKVCache(attention_mask)
    token = _ACTIVE.set(cache)
    cfg._attn_implementation = _IMPL
    try:
        yield cache
    finally:
        cfg._attn_implementation = previous
        _ACTIVE.reset(token)
