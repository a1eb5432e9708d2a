"""The one small runner behind the analysis scripts in ``scripts/`` (what is not a Hydra sweep).

Sweep-shaped tables are ``hparams_search`` configs run with ``python train.py -m`` and summarised by
``python -m src.report``; an analysis that needs more than a sweep (a decoding grid over trained
models, a Monte-Carlo variance estimate, a pre-computed statistic) composes its runs here, so every
script composes, runs and records results the same way:

* :func:`compose_run` / :func:`run_job`: the config ``train.py`` would build for the overrides (progress
  bar off, CSV logger), run in a given or temporary folder;
* :class:`Results`: a JSONL file of records appended and flushed one by one, so a killed script keeps
  what it finished and ``resume=True`` skips the records already there;
* :func:`mean_std`: the ``mean ± std`` cell every table uses.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
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


def run_job(overrides: Iterable[str], *, output_dir: str | Path | None = None, edit: Callable | None = None):
    """Train/evaluate one configuration; ``(metrics, seconds)``. ``edit(cfg)`` may change the composed
    config first; without ``output_dir`` the run's folder is temporary."""
    from src.train import run

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_run(overrides, output_dir=output_dir or tmp)
        if edit is not None:
            with open_dict(cfg):
                edit(cfg)
        t0 = time.perf_counter()
        metrics, _ = run(cfg)
    return metrics, time.perf_counter() - t0


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


class Results:
    """Records in a JSONL file, appended and flushed one at a time.

    Args:
        path: the file.
        resume: keep the records already in the file (else it starts empty).
        key: the fields that identify a record (what :meth:`has` compares).
    """

    def __init__(self, path: str | Path, *, resume: bool, key: tuple[str, ...]) -> None:
        self.path, self.key = Path(path), key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records = read_jsonl(self.path) if resume and self.path.exists() else []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def has(self, **fields: Any) -> bool:
        return any(all(r.get(k) == fields[k] for k in self.key) for r in self.records)

    def add(self, record: dict[str, Any]) -> dict[str, Any]:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)
        print(json.dumps(record), flush=True)
        return record


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def mean_std(xs: list[float], digits: int = 3) -> str:
    """``"m ± s"`` (sample std) for several values, ``"m"`` for one."""
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"
