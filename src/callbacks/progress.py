"""Rich progress bar whose epoch label is right for step-bounded runs.

Lightning's ``RichProgressBar`` prints ``Epoch {e}/{max_epochs - 1}``, which reads ``Epoch 3/-2`` under
this framework's default ``max_epochs: -1`` (training is bounded by ``max_steps``). This one prints
``Epoch 3 · max_steps 300`` instead; with a real epoch bound it behaves like Lightning's.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        desc = f"Epoch {current_epoch}"
        if self.trainer.max_steps and self.trainer.max_steps > 0:
            desc += f" · max_steps {self.trainer.max_steps}"
        return f"{desc:{len(self.validation_description)}}"
