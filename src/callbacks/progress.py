"""What a run says while it runs: the progress bar, a start-up header and periodic metric lines in the log.

* :class:`ProgressBar`: Lightning's Rich bar, labelled with the global step out of ``max_steps`` (its own label
  reads ``Epoch 3/-2`` under this framework's default ``max_epochs: -1``) and showing the training loss and the
  module's headline metric (``module.monitor``, its latest held-out value) beside the counts.
* :class:`MetricsLog`: every ``every_n_steps`` optimizer steps, one line in the run's log (``train.log``;
  a background job has no bar to read): step, loss, headline metric, the module's ``progress_metrics``,
  steps per second and the time left. Rank zero only.
* :func:`run_header`: the resolved settings that decide a run, printed once at its start.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

log = logging.getLogger(__name__)

LOSS = "train/loss"


def _scalar(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError, RuntimeError):
        return None
    return x


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def headline(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
    """``{name: value}`` of the loss, the module's headline metric and its ``progress_metrics``, as last logged."""
    metrics = trainer.callback_metrics
    names = [LOSS, getattr(pl_module, "monitor", None), *getattr(pl_module, "progress_metrics", ())]
    out: dict[str, float] = {}
    for name in names:
        if name and name in metrics and name not in out and (x := _scalar(metrics[name])) is not None:
            out[name] = x
    return out


def step_label(trainer: L.Trainer) -> str:
    if trainer.max_steps and trainer.max_steps > 0:
        return f"step {trainer.global_step}/{trainer.max_steps}"
    return f"step {trainer.global_step}"


class ProgressBar(RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        desc = step_label(self.trainer)
        return f"{desc:{len(self.validation_description)}}"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.train_progress_bar_id is not None and self.progress is not None:  # the step moves every batch
            self.progress.update(self.train_progress_bar_id, description=self._get_train_description(0))
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        for name, x in headline(trainer, pl_module).items():  # short names: the bar is one line wide
            stage, _, rest = name.partition("/")
            items["loss" if name == LOSS else f"{stage} {rest.rsplit('/', 1)[-1]}"] = _fmt(x)
        return items


class MetricsLog(L.Callback):
    """One log line every ``every_n_steps`` optimizer steps (and at the last step), on rank zero."""

    def __init__(self, every_n_steps: int = 10) -> None:
        if every_n_steps < 1:
            raise ValueError(f"callbacks.metrics_log.every_n_steps={every_n_steps}: must be >= 1")
        self.every_n_steps = every_n_steps
        self._t0: float | None = None
        self._step0 = 0
        self._logged_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0, self._step0 = time.monotonic(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        last = trainer.max_steps is not None and step >= trainer.max_steps > 0
        if not trainer.is_global_zero or step == self._logged_step or (step % self.every_n_steps and not last):
            return
        self._logged_step = step
        parts = [step_label(trainer)]
        parts += [f"{name} {_fmt(x)}" for name, x in headline(trainer, pl_module).items()]
        if self._t0 is not None and step > self._step0:
            elapsed = time.monotonic() - self._t0
            rate = (step - self._step0) / max(elapsed, 1e-9)
            parts.append(f"{rate:.2f} steps/s")
            if trainer.max_steps and trainer.max_steps > step:
                parts.append(f"{_duration((trainer.max_steps - step) / rate)} left")
        log.info(" | ".join(parts))


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def run_header(cfg: Any, trainer: L.Trainer, module: L.LightningModule, run_dir: str | None) -> str:
    """The settings that decide a run, one per line: what a reader checks before trusting its numbers."""
    from src.utils.run_record import run_choices

    choices = run_choices()
    model_cfg = cfg.get("model") or {}
    name = model_cfg.get("name_or_path") or choices.get("model") or "?"
    data_cfg = cfg.get("data") or {}
    data = choices.get("data") or "?"
    for key in ("path", "name", "dataset_name"):
        if data_cfg.get(key):
            data += f" ({data_cfg.get(key)})"
            break
    t = cfg.trainer
    world = trainer.world_size
    micro = data_cfg.get("batch_size")
    accumulate = trainer.accumulate_grad_batches
    n_params = sum(p.numel() for p in module.parameters())
    lines = [
        f"module     {choices.get('module') or type(module).__name__} ({type(module).__name__}), "
        f"headline metric {getattr(module, 'monitor', None)}",
        f"model      {name}" + (f", {n_params / 1e6:.2f}M parameters" if n_params else ""),
        f"data       {data}",
        f"steps      {t.get('max_steps')} (validation every {t.get('val_check_interval')})",
        f"batch      global {data_cfg.get('global_batch_size')} = {micro} per device x {accumulate} accumulation "
        f"x {world} process(es)",
        f"precision  {t.get('precision')}",
        f"devices    {trainer.num_devices} {t.get('accelerator')} x {trainer.num_nodes} node(s), "
        f"strategy {type(trainer.strategy).__name__}",
        f"seed       {cfg.get('seed')}",
        f"run folder {run_dir}",
    ]
    return "\n".join(lines)
