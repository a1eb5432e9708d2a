"""DiFFPO's accuracy-vs-NFE grid: greedy decoding of the held-out prompts at every fixed knob.

Attached by :class:`src.modules.diffpo.DiFFPOModule` through ``configure_callbacks`` (configured as
``module.pareto_eval``). At every validation it decodes each batch once per knob in ``knobs`` with the
module's evaluation sampler and logs ``val/pareto/acc@{knob}`` and ``val/pareto/nfe@{knob}``; the
module's own decoding (controller or fixed knob) is ``val/accuracy`` / ``val/nfe``. After validation,
rank 0 appends every point to ``<run dir>/pareto.jsonl``, plots ``pareto_step{N}.png`` (frontier marked)
and logs a W&B table when a W&B logger is attached. Nothing is written during the sanity check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torchmetrics import MeanMetric

from src.modules.rl_common import score_texts


class ParetoEval(L.Callback):
    """Args:
    knobs: the fixed knob values to evaluate (thresholds or gammas, whichever the sampler mode reads;
        the module checks them against its evaluation sampler's mode).
    """

    def __init__(self, *, knobs: list[float]) -> None:
        self.knobs = [float(k) for k in knobs]
        self.points: dict[float, tuple[MeanMetric, MeanMetric]] = {}

    def _active(self, pl_module: L.LightningModule) -> bool:
        return not pl_module.eval_knobless  # d1's low-confidence evaluation has no knob to sweep

    @torch.no_grad()
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._active(pl_module):
            return
        for k in self.knobs:
            acc, nfe = self.points.setdefault(
                k, (MeanMetric().to(pl_module.device), MeanMetric().to(pl_module.device))
            )
            ro = pl_module.eval_sampler.generate(pl_module.policy, batch["prompt_ids"], batch["prompt_mask"], knob=k)
            acc.update(score_texts(pl_module.reward_fn, ro.texts, batch["answer"], 1, pl_module.device).flatten())
            nfe.update(ro.nfe.float())

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.last = []
        for k, (acc, nfe) in self.points.items():
            a, n = acc.compute(), nfe.compute()  # reduced over ranks by torchmetrics
            pl_module.log(f"val/pareto/acc@{k}", a, sync_dist=True)
            pl_module.log(f"val/pareto/nfe@{k}", n, sync_dist=True)
            self.last.append({"knob": k, "accuracy": float(a), "nfe": float(n), "source": "fixed"})
            acc.reset()
            nfe.reset()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        knob = m.get("val/controller/knob_mean", torch.tensor(float("nan")))
        own = {"knob": float(knob), "accuracy": float(m["val/accuracy"]), "nfe": float(m["val/nfe"])}
        points = [*getattr(self, "last", []), {**own, "source": pl_module.decoding_source}]
        write_pareto(points, Path(trainer.default_root_dir), step=trainer.global_step, loggers=trainer.loggers)


def write_pareto(points: list[dict[str, Any]], out_dir: Path, *, step: int, loggers=()) -> Path:
    """Append the accuracy-vs-NFE points to ``pareto.jsonl``, plot ``pareto_step{N}.png``, log a W&B table."""
    from lightning.pytorch.loggers import WandbLogger

    from src.pareto import Point, mark_frontier, plot_frontier

    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "pareto.jsonl").open("a") as f:
        for p in points:
            f.write(json.dumps({"step": step, **p}) + "\n")
    pts = [
        Point(
            x=p["nfe"],
            y=p["accuracy"],
            series="fixed knob" if p["source"] == "fixed" else p["source"],
            label=f"{p['knob']:.2g}",
        )
        for p in points
    ]
    path = plot_frontier(
        mark_frontier(pts, x_mode="min", y_mode="max"),
        out_dir / f"pareto_step{step:06d}.png",
        x="mean NFE per completion",
        y="accuracy",
        title=f"accuracy vs NFE (step {step})",
        styles={"controller": "r*", "fixed-train": "r*"},
    )
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            cols = ["step", "knob", "accuracy", "nfe", "source"]
            lg.log_table(key="val/pareto", columns=cols, data=[[step, *(p[c] for c in cols[1:])] for p in points])
    return path
