"""LLaDA-style masked LMs (LLaDA's remote code; also BERT/ModernBERT): the logits at column ``c`` predict the
token at ``c`` (in place); mask token from the config or tokenizer (LLaDA: 126336, which its tokenizer does not
declare). LLaDA's published code ignores ``attention_mask``: :meth:`after_load` probes every model once
(:func:`src.models.families.padding.probe_attention_mask`) and :meth:`ModelFamily.logits_for` then runs padded
batches in padding-free groups."""

from __future__ import annotations

from typing import Any

import torch

from src.models.families.base import ModelFamily

LLADA_MASK_TOKEN_ID = 126336


class LLaDAFamily(ModelFamily):
    name = "llada"
    shift = 0

    def default_mask_token(self, model: torch.nn.Module) -> int | None:
        is_llada = str(getattr(getattr(model, "config", None), "model_type", "")).lower() == "llada"
        return LLADA_MASK_TOKEN_ID if is_llada else None  # the published LLaDA models' [MASK]

    def after_load(self, model: torch.nn.Module, tokenizer: Any = None) -> None:
        self.probe_padding(model, tokenizer)
