"""Fault injection for tests: a callback that hard-kills its own process (SIGKILL, no clean-up)."""

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """SIGKILL the process when ``trainer.global_step`` reaches ``step`` (after that step's
    optimizer update, before any checkpoint of it is written): a crash, not a clean stop."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAtStep(L.Callback):
    """Send ``signal`` (SIGTERM by default: a scheduler's preemption notice) to this process once, when
    ``trainer.global_step`` reaches ``step``."""

    def __init__(self, step: int, signum: int = signal.SIGTERM) -> None:
        self.step, self.signum, self.sent = step, signum, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)
