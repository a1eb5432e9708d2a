"""``ModelCheckpoint`` that saves when a cluster needs it (``callbacks.model_checkpoint``).

Lightning's callback, with three changes:

* **``last.ckpt`` is refreshed at every validation**, whatever the monitored metric does. Lightning writes it
  at validation only when a best-``k`` file was written at that step, so once the metric plateaued ``last.ckpt``
  stayed at the last improvement and a kill lost every step since (seen: 550 steps). A resume logs the step
  it resumes at and when its checkpoint was written.

* **step-interval saves do not wait for the monitored metric.** With ``every_n_train_steps=N`` and a
  ``monitor``, Lightning defers every step save until the metric has been logged once in this process, so a
  run (or a resumed run) that validates rarely writes nothing between validations. Here ``last.ckpt`` is
  written every ``N`` optimizer steps regardless; the best-``k`` files still need the metric.
* **preemption writes a checkpoint.** On SIGTERM (what SLURM and Kubernetes send before a kill) and on the
  first SIGINT (Ctrl+C), ``last.ckpt`` is written at the next step boundary and training stops; ``train.py``
  then exits non-zero (143 for SIGTERM, 130 for SIGINT), so a scheduler does not take it for success. A
  second Ctrl+C interrupts at once. Under SLURM, Lightning's own ``SLURMEnvironment`` (auto-requeue on
  SIGUSR1, its default) still applies.

Files are written through :class:`src.utils.checkpoint_io.AtomicCheckpointIO` (``src.train.build``).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint as _LightningModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger(__name__)


class ModelCheckpoint(_LightningModelCheckpoint):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("enable_version_counter", False)  # one last.ckpt per run folder, never last-v1
        super().__init__(*args, **kwargs)
        self.interrupted_by: str | None = None
        self._previous_sigint = None
        self._last_saved_at_step = -1  # the global step last.ckpt was last written at (this process)

    # ---- signals ----------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        current = signal.getsignal(signal.SIGINT)
        if current is signal.default_int_handler:  # main thread, not already taken
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)
        elif current is signal.SIG_IGN and trainer.is_global_zero:
            # a shell starts background jobs (`nohup ... &`, `cmd &` in a script) with SIGINT ignored, and the
            # child inherits it: Ctrl+C cannot reach this run, so say how to stop it instead
            log.warning(
                "SIGINT is ignored in this process (started as a background job?): Ctrl+C will not stop it; "
                "SIGTERM (kill %d) writes last.ckpt and stops",
                os.getpid(),
            )

    def _on_sigint(self, signum, frame) -> None:
        if self.interrupted_by is not None:  # the second Ctrl+C: stop now
            raise KeyboardInterrupt
        self.interrupted_by = "SIGINT"
        log.warning("SIGINT: writing last.ckpt at the end of this step, then stopping (Ctrl+C again to stop now)")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigint()
        super().on_train_end(trainer, pl_module)  # Lightning saves the final last.ckpt here

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_sigint()
        super().on_exception(trainer, pl_module, exception)

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    # ---- saving -----------------------------------------------------------------------------
    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_saved_at_step = trainer.global_step

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)  # best-k, and last.ckpt when a best-k file was written
        if (
            self.save_last
            and trainer.state.fn == TrainerFn.FITTING
            and not trainer.sanity_checking
            and not trainer.fast_dev_run
            and self._last_saved_at_step != trainer.global_step
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        path = trainer.ckpt_path
        try:
            written = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(path)))
        except (OSError, TypeError):
            written = "an unknown time"
        if trainer.is_global_zero:
            log.info(
                "resuming at step %s (%s written at %s: %s)",
                checkpoint.get("global_step", "?"),
                os.path.basename(str(path)),
                written,
                path,
            )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.received_sigterm:
            self.interrupted_by = self.interrupted_by or "SIGTERM"
        preempted = self.interrupted_by is not None
        if trainer.world_size > 1:  # every rank saves together (the save is collective)
            preempted = trainer.strategy.reduce_boolean_decision(preempted, all=False)
        every = self._every_n_train_steps
        if every < 1 and not preempted:  # nothing of ours to do: Lightning's own logic, unchanged
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        due = every >= 1 and trainer.global_step % every == 0
        if (due or preempted) and not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            if due and (self.monitor is None or self.monitor in candidates):
                self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        if preempted:
            log.warning("%s: last.ckpt written at global step %d; stopping", self.interrupted_by, trainer.global_step)
            self.interrupted_by = self.interrupted_by or "SIGTERM"
            if not trainer.received_sigterm:  # SIGINT: stop the loop like Lightning's own Ctrl+C path
                raise KeyboardInterrupt
