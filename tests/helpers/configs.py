"""Module arguments from the YAML (the one source of defaults), for tests that build modules directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
#: keys a test supplies itself (factories, components, interpolations into other groups)
NOT_SCALARS = ("defaults", "_target_", "model", "teacher", "teacher_tokenizer", "reward", "optimizer", "scheduler")


def module_defaults(name: str, *, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """``configs/module/<name>.yaml``'s plain arguments (components and factories left out)."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / "module" / f"{name}.yaml"), resolve=False)
    return {k: v for k, v in cfg.items() if k not in (*NOT_SCALARS, *drop)}


def component(cfg: dict[str, Any], **overrides: Any):
    """Instantiate a ``_target_`` dict of a module YAML (with ``overrides``), as Hydra does."""
    from hydra.utils import instantiate

    return instantiate({**cfg, **overrides})
