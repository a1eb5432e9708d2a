"""What a model family owns, and how a model's family is found (:func:`family_of`).

The one alignment rule lives in :meth:`ModelFamily.logits_for`: the logits that predict the tokens at
``positions``. A family declares ``shift``: the logits at column ``c`` predict the token at ``c + shift``
(0 for LLaDA-style masked LMs, 1 for causal LMs and for Dream, which is AR-initialised and trained with
"shift prediction"). For a shifted family the token at position 0 has no predicting column; as in Dream's own
sampler, column 0's logits stand in for it (position 0 is a prompt token, never scored).
"""

from __future__ import annotations

import functools
import logging
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from src.models.families.padding import FLAG, by_left_padding, left_padding, probe_attention_mask

log = logging.getLogger(__name__)

FAMILIES = ("causal", "llada", "dream")
# the config attribute a loader records the family in (saved with the checkpoint, read by family_of)
CONFIG_KEY = "model_family"


@dataclass
class Forward:
    """Logits ``(B, n, V)`` for the positions asked for, and every layer's hidden states when requested."""

    logits: Tensor
    hidden_states: tuple[Tensor, ...] | None = None


class ModelFamily:
    name: str = ""
    shift: int = 0
    default_mask_token_id: int | None = None  # when neither the config nor the tokenizer declares one
    supports_block_cache: bool = True  # Fast-dLLM's cache (src.rollout.dllm_cache) may be tried

    # ---- loading --------------------------------------------------------------------------------
    def adapt_remote_code(self, name_or_path: str, config: Any, *, revision: str | None = None) -> Any:
        """The remote-code config after this family's in-memory compat step (its classes patched, never its
        files), or None for a model without remote code. Every family gets the legacy transformers-4 step."""
        return adapt_legacy_remote_code(name_or_path, config, revision=revision)

    def after_load(self, model: torch.nn.Module, tokenizer: Any = None) -> None:
        """Checks once a model of this family is loaded (e.g. whether it honours ``attention_mask``)."""

    # ---- what the family is ----------------------------------------------------------------------
    def mask_token_id(self, model: torch.nn.Module, tokenizer: Any = None) -> int:
        """The mask token: ``model.config.mask_token_id`` (``model.mask_token_id`` in the run config sets it),
        else the tokenizer's, else the family's default; a clear error when none is known."""
        got = getattr(getattr(model, "config", None), "mask_token_id", None)
        if got is None and tokenizer is not None:
            got = getattr(tokenizer, "mask_token_id", None)
        if got is None:
            got = self.default_mask_token(model)
        if got is None:
            raise ValueError(
                f"masked diffusion needs a mask token id: the {self.name} model's config and its tokenizer declare "
                "none; set model.mask_token_id"
            )
        return int(got)

    def default_mask_token(self, model: torch.nn.Module) -> int | None:
        return self.default_mask_token_id

    def probe_padding(self, model: torch.nn.Module, tokenizer: Any = None) -> bool:
        """Whether left padding changes the model's logits under this family's inputs (recorded on its config)."""
        pad = getattr(tokenizer, "pad_token_id", None)
        return probe_attention_mask(model, pad_id=pad if pad is not None else 0, model_inputs=self.model_inputs)

    def ignores_attention_mask(self, model: torch.nn.Module) -> bool:
        """Whether padding changes a row's logits (found at load by :func:`padding.probe_attention_mask`)."""
        return bool(getattr(getattr(model, "config", None), FLAG, False))

    def model_inputs(self, input_ids: Tensor, attention_mask: Tensor | None) -> dict[str, Any]:
        """The forward's keyword arguments for a batch with a 2-D padding mask (1 = a real token)."""
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    # ---- the one alignment rule ------------------------------------------------------------------
    def logits_for(
        self,
        model: torch.nn.Module,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        positions: slice | None = None,
        **kw: Any,
    ) -> Forward:
        """The logits ``(B, n, V)`` that predict the tokens at ``positions`` (a contiguous slice; all when None),
        the LM head applied to those columns only. A model that ignores ``attention_mask`` runs on groups of
        equally left-padded rows without their padding, its outputs left-filled with zeros: every row gets the
        logits it gets alone, so batching never changes a row's tokens, NFE or log-probs; ``positions`` must
        then lie past the padding."""
        T = input_ids.shape[1]
        a, b, step = (positions or slice(None)).indices(T)
        if step != 1:
            raise ValueError(f"positions must be a contiguous slice, got {positions}")
        if attention_mask is not None and self.ignores_attention_mask(model) and not bool(attention_mask.bool().all()):
            if a < int(left_padding(attention_mask).max()):
                raise ValueError(f"positions {positions} of a mask-ignoring model must lie past the padding")

            def run(rows: Tensor, k: int) -> tuple[Tensor, ...]:
                sub = self.logits_for(model, input_ids[rows, k:], attention_mask[rows, k:], slice(a - k, b - k), **kw)
                return (sub.logits, *(sub.hidden_states or ()))

            out = by_left_padding(attention_mask, run)
            return Forward(out[0], tuple(out[1:]) or None)
        lo, hi = a - self.shift, b - self.shift  # the columns whose logits predict a..b
        stand_in = lo < 0  # position 0 of a shifted family: column 0 stands in (Dream's convention)
        raw = slice(0, max(hi, 1)) if stand_in else slice(lo, hi)
        from src.models.scoring import head_on_positions

        whole = raw.start == 0 and raw.stop == T
        with nullcontext() if whole else head_on_positions(model, raw):
            out = model(**self.model_inputs(input_ids, attention_mask), **kw)
        logits = out.logits
        if stand_in:
            logits = torch.cat([logits[:, :1], logits[:, : max(hi, 0)]], 1)
        return Forward(logits, getattr(out, "hidden_states", None))


def remote_model_classes(name_or_path: str, config: Any, *, revision: str | None = None) -> list[type]:
    """The model classes a ``trust_remote_code`` config's ``auto_map`` names, loaded (none for a model without
    remote code)."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    auto_map = getattr(config, "auto_map", None) or {}
    refs = {auto_map[k] for k in ("AutoModel", "AutoModelForMaskedLM", "AutoModelForCausalLM") if k in auto_map}
    return [get_class_from_dynamic_module(ref, name_or_path, revision=revision) for ref in sorted(refs)]


def adapt_legacy_remote_code(name_or_path: str, config: Any, *, revision: str | None = None) -> Any:
    """``config`` (a ``trust_remote_code`` model's), with the model classes its ``auto_map`` names adapted to this
    transformers version in memory (their files are not touched), or None for a model without remote code.

    Legacy remote code (LLaDA's published ``modeling_llada.py``, written for transformers 4) fails under 5 in three
    places, each adapted here: ``__init__`` never calls ``post_init()`` (loading needs ``all_tied_weights_keys``),
    so it is called after the original ``__init__``; ``tie_weights(self)`` has the old signature (5 passes
    ``missing_keys=...``), so extra arguments are dropped; the config declares no ``use_cache`` that ``forward``
    reads, so it is set to False (a diffusion LM keeps no KV cache across denoising steps).
    """
    import inspect

    classes = remote_model_classes(name_or_path, config, revision=revision)
    if not classes:
        return None
    adapted = []
    if not hasattr(config, "use_cache"):
        config.use_cache = False
        adapted.append("config.use_cache=False")
    for cls in classes:
        if cls.__dict__.get("_post_train_adapted"):
            continue
        init = cls.__init__

        def __init__(self, config, *args, _init=init, **kwargs):
            _init(self, config, *args, **kwargs)
            if not hasattr(self, "all_tied_weights_keys"):  # the original never called post_init()
                self.post_init()

        cls.__init__ = __init__
        tie = cls.__dict__.get("tie_weights")
        if tie is not None and len(inspect.signature(tie).parameters) == 1:  # tie_weights(self)

            def tie_weights(self, *args, _tie=tie, **kwargs):
                return _tie(self)

            cls.tie_weights = tie_weights
            adapted.append(f"{cls.__name__}.tie_weights(self)")
        cls._post_train_adapted = True
        adapted.append(f"{cls.__name__}.__init__ + post_init()")
    if adapted:
        log.info("adapted legacy remote code of %s to transformers 5: %s", name_or_path, ", ".join(adapted))
    return config


@functools.cache  # families hold no state: one instance each, not one per forward
def get_family(name: str) -> ModelFamily:
    from src.models.families.causal import CausalFamily
    from src.models.families.dream import DreamFamily
    from src.models.families.llada import LLaDAFamily

    known = {"causal": CausalFamily, "llada": LLaDAFamily, "dream": DreamFamily}
    if name not in known:
        raise ValueError(f"model.family={name!r}; valid: {', '.join(FAMILIES)}")
    return known[name]()


def detect_family(config: Any) -> ModelFamily:
    """The family of a loaded config: Dream and LLaDA by ``model_type``, other models by which transformers
    head class the type has (masked LM: in place, as LLaDA; causal LM: shifted). A clear error otherwise."""
    model_type = str(getattr(config, "model_type", "") or "")
    low = model_type.lower()
    if low == "dream":
        return get_family("dream")
    if "llada" in low:
        return get_family("llada")
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if low in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return get_family("llada")
    if low in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return get_family("causal")
    raise ValueError(
        f"cannot tell the model family of model_type={model_type!r}: set model.family to one of {', '.join(FAMILIES)}"
    )


def family_of(model: torch.nn.Module) -> ModelFamily:
    """The family a loader recorded on the model's config, else the one its config implies."""
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no config: its model family cannot be told")
    name = getattr(config, CONFIG_KEY, None)
    return get_family(name) if name else detect_family(config)


def mask_token_id(model: torch.nn.Module, tokenizer: Any = None) -> int:
    return family_of(model).mask_token_id(model, tokenizer)
