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
