"""Config values checked before anything is built: one line naming the key, not a 60-line trace.

``data.global_batch_size=abc``, ``module.beta=0`` or a negative learning rate used to fail deep inside a
resolver or, for beta and lr, only after the first 20-30 s validation. :func:`check_config` reads the
*raw* values (before interpolations that use them are resolved) and raises :class:`ConfigError`, which the
entry points print as one line (exit status 2).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value of the wrong type or out of range; the message names the key."""


_ABSENT = object()


def _get(cfg: DictConfig, key: str) -> Any:
    """The value at ``key``; ``_ABSENT`` when missing, and ``None`` for an interpolation that does not resolve
    (checked where it is used)."""
    return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_resolution_failure=False)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: key -> (check, what it must be); a key that is absent or null is not checked
CHECKS: dict[str, tuple[Any, str]] = {
    "seed": (_is_int, "an integer or null"),
    "data.global_batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "data.micro_batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1 or null"),
    "data.num_workers": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "trainer.devices": (
        lambda v: (
            (_is_int(v) and (v >= 1 or v == -1))
            or v == "auto"
            or (isinstance(v, str) and v.lstrip("-").isdigit() and (int(v) >= 1 or int(v) == -1))
            or (OmegaConf.is_list(v) and len(v) >= 1)
        ),
        "an integer >= 1, -1, 'auto' or a list of device ids",
    ),
    "trainer.num_nodes": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "trainer.max_steps": (lambda v: _is_int(v) and (v >= 1 or v == -1), "an integer >= 1 (or -1: no limit)"),
    "trainer.accumulate_grad_batches": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "module.beta": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "module.optimizer.lr": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "module.optimizer.weight_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "module.controller_lr": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "module.num_generations": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "module.max_non_finite_fraction": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
}


def _missing_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Keys whose value is ``???``, found without resolving any interpolation (``OmegaConf.missing_keys``
    resolves, and ``${hydra:...}`` does not resolve outside a Hydra run)."""
    out: list[str] = []
    if OmegaConf.is_dict(cfg):
        keys = list(cfg.keys())
    elif OmegaConf.is_list(cfg):
        keys = list(range(len(cfg)))
    else:
        return out
    for key in keys:
        name = f"{prefix}{key}" if OmegaConf.is_dict(cfg) else f"{prefix.rstrip('.')}[{key}]"
        if OmegaConf.is_missing(cfg, key):
            out.append(name)
            continue
        node = cfg._get_node(key)
        if node is not None and not node._is_interpolation() and OmegaConf.is_config(node):
            out += _missing_keys(node, f"{name}.")
    return out


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for a required value left unset (``???``), or for the first key of
    :data:`CHECKS` whose value is wrong."""
    missing = sorted(k for k in _missing_keys(cfg) if not k.startswith("hydra"))
    if missing:
        shown = " ".join(f"{k}=<value>" for k in missing)
        raise ConfigError(
            f"{', '.join(missing)} must be set (the chosen config leaves {'it' if len(missing) == 1 else 'them'} "
            f"open): add {shown} to the command line"
        )
    for key, (ok, what) in CHECKS.items():
        value = _get(cfg, key)
        if value is _ABSENT or value is None:
            continue
        if not ok(value):
            shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            raise ConfigError(f"{key}={shown!r}: must be {what}")
