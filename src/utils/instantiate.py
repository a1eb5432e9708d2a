"""Instantiate callbacks and loggers from config, and check config choices with clear errors."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from lightning import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def instantiate_list(cfg: DictConfig | None, kind: str) -> list:
    """Instantiate every entry with a ``_target_`` in a config group (callbacks / loggers)."""
    out: list = []
    if not cfg:
        return out
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"{kind} config must be a mapping, got {type(cfg).__name__}")
    for conf in cfg.values():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            log.info("instantiating %s <%s>", kind, conf._target_)
            out.append(hydra.utils.instantiate(conf))
    return out


def instantiate_callbacks(cfg: DictConfig | None) -> list[Callback]:
    return instantiate_list(cfg, "callback")


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    return instantiate_list(cfg, "logger")


def config_choices(group: str) -> list[str]:
    """Names available in ``configs/<group>/``."""
    root = Path(__file__).resolve().parents[2] / "configs" / group
    return sorted(p.stem for p in root.glob("*.yaml"))
