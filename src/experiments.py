"""The one small runner behind the analysis scripts in ``scripts/`` (what is not a Hydra sweep).

Sweep-shaped tables are ``hparams_search`` configs run with ``python train.py -m`` and summarised by
``python -m src.report``; an analysis that needs more than a sweep (a decoding grid over trained
models, a Monte-Carlo variance estimate, a pre-computed statistic) composes its runs here, so every
script composes, runs and records results the same way:

* :func:`compose_run`: the config ``train.py`` would build for the overrides (progress bar off, CSV logger);
* :func:`build_job`: the objects of such a run without training; :func:`stage_model`: the model folder a
  run starts from, trained first when its stage is not cached;
* :func:`mean_std`: the ``mean ± std`` cell every table uses.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["trainer.enable_progress_bar=false", "logger=csv"]


def compose_run(overrides: Iterable[str], *, output_dir: str | Path | None = None) -> DictConfig:
    """``configs/train.yaml`` composed with ``overrides`` (quiet: no progress bar, CSV logger)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    from hydra import compose, initialize_config_dir

    import src.utils.resolvers  # noqa: F401

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose(config_name="train", overrides=[*QUIET, *overrides])
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def build_job(overrides: Iterable[str]) -> dict[str, Any]:
    """The objects of a run (datamodule, module, ...) without training (``src.train.build``)."""
    from src.train import build

    with tempfile.TemporaryDirectory() as tmp:
        return build(compose_run(overrides, output_dir=tmp))


def stage_model(overrides: Iterable[str], key: str = "model.name_or_path") -> Path:
    """The model folder a run starts from (``${stage:...}`` in its config), trained first if not cached."""
    from omegaconf import OmegaConf

    from src.utils.stages import ensure_stages

    cfg = compose_run(overrides, output_dir=tempfile.gettempdir())
    ensure_stages(cfg)
    return Path(OmegaConf.select(cfg, key))


def mean_std(xs: list[float], digits: int = 3) -> str:
    """``"m ± s"`` (sample std) for several values, ``"m"`` for one."""
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"
