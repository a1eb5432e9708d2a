"""FSDP helpers: auto-wrap policy from decoder-layer class names."""

from __future__ import annotations

import importlib


def _find(name: str) -> type | None:
    if ":" in name:  # "package.module:Class"
        mod, cls = name.split(":", 1)
        return getattr(importlib.import_module(mod), cls, None)
    stem = name.replace("DecoderLayer", "").replace("EncoderLayer", "").lower()
    try:
        mod = importlib.import_module(f"transformers.models.{stem}.modeling_{stem}")
    except ImportError:
        return None
    return getattr(mod, name, None)


def decoder_layer_classes(names: list[str]) -> set[type]:
    """The layer classes named in ``names`` (``LlamaDecoderLayer`` or ``pkg.mod:Class``).

    Lightning's ``FSDPStrategy(auto_wrap_policy=<set of classes>)`` wraps each such layer in its own
    FSDP unit. Names that do not resolve are skipped; none resolving is an error.
    """
    found = {c for c in (_find(n) for n in names) if c is not None}
    if not found:
        raise ValueError(f"none of {names} names a layer class; set trainer.strategy.auto_wrap_policy.names")
    return found


def shard_model(model, mesh):
    """FSDP2 (``torch.distributed.fsdp.fully_shard``) over ``mesh``: each transformer block its own
    unit, then the root (embeddings, final norm, LM head). Blocks are the classes the HF model lists
    in ``_no_split_modules`` (``LlamaDecoderLayer``, ``ModernBertEncoderLayer``, ...); a module
    without any (a small head) is one unit. A peft wrapper is looked through. Returns ``model``."""
    from torch.distributed.fsdp import fully_shard

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    for block in [m for m in model.modules() if type(m).__name__ in names]:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model
