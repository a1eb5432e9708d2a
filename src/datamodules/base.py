"""Shared DataModule plumbing: tokenizer hand-off, global -> per-device batch, seeded loaders."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase


def per_device_batch(global_batch_size: int, world_size: int, micro_batch_size: int | None = None) -> tuple[int, int]:
    """``(per_device_batch, accumulate_grad_batches)`` for a global batch; clear error otherwise.

    ``global = per_device * accumulate * world_size``. With ``micro_batch_size=None`` there is no
    accumulation.
    """
    if global_batch_size < 1 or world_size < 1:
        raise ValueError(f"global_batch_size ({global_batch_size}) and world size ({world_size}) must be >= 1")
    if global_batch_size % world_size:
        raise ValueError(
            f"data.global_batch_size={global_batch_size} is not divisible by the world size "
            f"{world_size} (trainer.devices x trainer.num_nodes); pick a multiple of {world_size}"
        )
    per_rank = global_batch_size // world_size
    if micro_batch_size is None:
        return per_rank, 1
    if micro_batch_size < 1 or per_rank % micro_batch_size:
        raise ValueError(
            f"data.micro_batch_size={micro_batch_size} must divide the per-device batch {per_rank} "
            f"(data.global_batch_size={global_batch_size} / world size {world_size})"
        )
    return micro_batch_size, per_rank // micro_batch_size


class ListDataset(Dataset):
    """A list of dicts as a map-style dataset."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


class PostTrainDataModule(L.LightningDataModule):
    """Base: holds the tokenizer and batch sizes; subclasses build ``self.train_set/val_set``.

    Args:
        tokenizer: the policy's tokenizer (built from the ``model`` config group).
        batch_size: per-device micro-batch (derived from ``data.global_batch_size`` in config).
        eval_batch_size: per-device batch for validation/test (defaults to ``batch_size``).
        num_workers: DataLoader workers.
        seed: seeds the split and the shuffling (reproducible data order across resumes).
    """

    def __init__(self, *, tokenizer: PreTrainedTokenizerBase, batch_size: int, eval_batch_size: int | None = None,
                 num_workers: int = 0, seed: int = 0, global_batch_size: int | None = None,
                 micro_batch_size: int | None = None) -> None:  # fmt: skip
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.global_batch_size, self.micro_batch_size = global_batch_size, micro_batch_size
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def check_batch_sizes(self) -> None:
        """``per-device batch x accumulation x world size`` must equal ``global_batch_size`` (catches a
        hand-set ``trainer.accumulate_grad_batches`` or a world size the config did not know)."""
        if self.global_batch_size is None or self.trainer is None:
            return
        t = self.trainer
        got = self.batch_size * t.accumulate_grad_batches * t.world_size
        if got != self.global_batch_size:
            raise ValueError(
                f"data.global_batch_size={self.global_batch_size} but per-device batch {self.batch_size} x "
                f"accumulate_grad_batches {t.accumulate_grad_batches} x world size {t.world_size} = {got}; "
                "set data.global_batch_size / data.micro_batch_size and let the config derive the rest"
            )

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _loader(self, ds: Dataset | None, *, train: bool) -> DataLoader:
        if ds is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not built this split")
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            ds, batch_size=self.batch_size if train else self.eval_batch_size, shuffle=train, drop_last=train,
            collate_fn=self.collate, num_workers=self.num_workers, generator=gen,
            persistent_workers=self.num_workers > 0,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        self.check_batch_sizes()
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)
