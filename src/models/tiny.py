"""Tiny random-init models built from config, for tests, CI and the offline default runs."""

from __future__ import annotations

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)

_CAUSAL = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}


def tiny_causal_lm(
    tokenizer: PreTrainedTokenizerBase,
    *,
    arch: str = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
    lora: dict | None = None,
    tie_word_embeddings: bool = False,
) -> PreTrainedModel:
    """A small decoder-only LM (Llama or Qwen2) with ids taken from ``tokenizer``.

    Initialisation is seeded independently of the global RNG, so the same config gives the same
    weights whatever ran before (reproducible teacher/student pairs).
    """
    if arch not in _CAUSAL:
        raise ValueError(f"unknown tiny causal arch {arch!r}; valid: {', '.join(_CAUSAL)}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
    cfg_cls, model_cls = _CAUSAL[arch]
    cfg = cfg_cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    cfg._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(cfg)
    if gradient_checkpointing:  # recompute each layer in backward: activation memory O(layers) -> O(1)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        from src.models.hf import apply_lora

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            model = apply_lora(model, **lora)
    return model


def tiny_masked_lm(
    tokenizer: PreTrainedTokenizerBase,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
    seed: int = 0,
    global_attn_every_n_layers: int = 1,
    local_attention: int = 128,
) -> PreTrainedModel:
    """A small bidirectional masked LM (ModernBERT, RoPE) for masked-diffusion experiments. Every
    layer attends globally by default; ``global_attn_every_n_layers > 1`` makes the others local
    (a window of ``local_attention`` tokens), as in the released ModernBERT."""
    if tokenizer.mask_token_id is None:
        raise ValueError("a masked LM needs a tokenizer with a mask token")
    cfg = ModernBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        cls_token_id=tokenizer.bos_token_id,
        sep_token_id=tokenizer.eos_token_id,
        global_attn_every_n_layers=global_attn_every_n_layers,
        local_attention=local_attention,
    )
    cfg.mask_token_id = tokenizer.mask_token_id  # saved with the model: its family reads it (src.models.families)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ModernBertForMaskedLM(cfg)
