"""OmegaConf resolvers (registered once on import): derive per-device batch and accumulation.

``${per_device_batch:${data.global_batch_size},${data.micro_batch_size},${trainer.devices},${trainer.num_nodes}}``
and ``${accumulate:...same args}``: ``global = per_device * accumulate * devices * num_nodes``, so
``trainer.devices=8`` needs no other edit. Bad values raise an error naming the keys.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from src.datamodules.base import per_device_batch
from src.utils.sweep import wandb_group


def _world(devices, num_nodes) -> int:
    if devices in ("auto", -1, "-1", None):
        import torch

        devices = max(1, torch.cuda.device_count())
    if isinstance(devices, (list, tuple)) or (hasattr(devices, "__len__") and not isinstance(devices, str)):
        devices = len(devices)
    try:
        return int(devices) * int(num_nodes)
    except (TypeError, ValueError):
        raise ValueError(f"trainer.devices={devices!r} / trainer.num_nodes={num_nodes!r} must be integers") from None


def _split(global_bs, micro_bs, devices, num_nodes) -> tuple[int, int]:
    micro = None if micro_bs in (None, "null", "None") else int(micro_bs)
    return per_device_batch(int(global_bs), _world(devices, num_nodes), micro)


def register() -> None:
    for name, fn in {
        "per_device_batch": lambda g, m, d, n: _split(g, m, d, n)[0],
        "accumulate": lambda g, m, d, n: _split(g, m, d, n)[1],
        "world_size": lambda d, n: _world(d, n),
    }.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register()


def _wandb_offline() -> bool:
    """Offline unless a key is configured (or WANDB_MODE=online); WANDB_MODE=offline always wins."""
    import os

    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "disabled", "dryrun"):
        return True
    return not (os.environ.get("WANDB_API_KEY") or mode == "online")


if not OmegaConf.has_resolver("wandb_offline"):
    OmegaConf.register_new_resolver("wandb_offline", _wandb_offline)


if not OmegaConf.has_resolver("wandb_group"):
    OmegaConf.register_new_resolver("wandb_group", wandb_group)


def _dispersion_for(variant: str, source: str) -> str:
    """``${dispersion_for:${module.variant},given}``: ``none`` for plain ``dpo``, else ``source``. For configs
    that sweep ``module.variant``: a dispersion given to ``dpo`` is applied as the Mallows-theta plug-in
    weight, which would make the "dpo" arm of the sweep a second theta arm."""
    return "none" if str(variant) == "dpo" else source


if not OmegaConf.has_resolver("dispersion_for"):
    OmegaConf.register_new_resolver("dispersion_for", _dispersion_for)

import src.utils.stages  # noqa: E402,F401  (registers ${stage:...})
