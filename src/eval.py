"""``evaluate(cfg)``: rebuild the run from config and validate/test a checkpoint."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from src.train import build


def evaluate(cfg: DictConfig) -> tuple[dict[str, float], float | None]:
    ckpt = cfg.get("ckpt_path")
    if not ckpt or not Path(ckpt).exists():
        raise FileNotFoundError(f"ckpt_path={ckpt!r} does not exist; pass ckpt_path=<path to .ckpt>")
    objs = build(cfg)
    trainer = objs["trainer"]
    results = trainer.validate(objs["module"], datamodule=objs["datamodule"], ckpt_path=ckpt, verbose=False)[0]
    metrics = {k: float(v) for k, v in results.items()}
    name = cfg.get("optimized_metric")
    if name and name not in metrics:
        raise KeyError(f"optimized_metric={name!r} was not logged; available: {', '.join(sorted(metrics))}")
    return metrics, (metrics[name] if name else None)
