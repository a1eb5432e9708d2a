"""Log greedy completions for a few held-out prompts at every validation (W&B table + JSONL)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger


class SampleTable(L.Callback):
    """Rows ``(step, prompt, completion, reference)`` for the first ``num_samples`` val examples.

    Needs ``pl_module.generate(prompts, max_new_tokens=...)``; modules without it are skipped.
    """

    def __init__(self, num_samples: int = 4, max_new_tokens: int = 16) -> None:
        self.num_samples, self.max_new_tokens = num_samples, max_new_tokens

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not hasattr(pl_module, "generate"):
            return
        ds = getattr(trainer.datamodule, "val_set", None)
        if ds is None or len(ds) == 0:
            return
        rows = [ds[i] for i in range(min(self.num_samples, len(ds)))]
        prompts = [r["prompt"] for r in rows]
        outs = pl_module.generate(prompts, max_new_tokens=self.max_new_tokens)
        table = [
            [trainer.global_step, p, o, r.get("chosen", r.get("answer", ""))] for p, o, r in zip(prompts, outs, rows)
        ]
        cols = ["step", "prompt", "completion", "reference"]
        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger):
                lg.log_table(key="val/samples", columns=cols, data=table)
        out = Path(trainer.default_root_dir) / "samples.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            for row in table:
                f.write(json.dumps(dict(zip(cols, row))) + "\n")
