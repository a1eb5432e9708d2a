"""Causal LMs (Llama, Qwen, SmolLM2, ...): the logits at column ``c`` predict token ``c + 1``; the padding mask
is honoured; no mask token (not a diffusion model)."""

from __future__ import annotations

from typing import Any

import torch

from src.models.families.base import ModelFamily


class CausalFamily(ModelFamily):
    name = "causal"
    shift = 1
    supports_block_cache = False

    def mask_token_id(self, model: torch.nn.Module, tokenizer: Any = None) -> int:
        raise ValueError(
            "a causal LM has no mask token and is not a masked-diffusion model: use a masked LM "
            "(model=hf_masked, model=dream, a tiny_masked model)"
        )
