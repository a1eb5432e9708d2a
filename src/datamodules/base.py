"""Shared DataModule plumbing: tokenizer hand-off, global -> per-device batch, seeded loaders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
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


class ResumableSampler(DistributedSampler):
    """Shuffle seeded by ``seed + epoch`` (Lightning calls ``set_epoch``), sharded over ranks, able to
    start mid-epoch.

    Used on one process too, so the global order of examples does not depend on the world size: with
    ``W`` ranks and per-device batch ``b``, global batch ``k`` holds the same ``W * b`` examples as a
    single process with batch ``W * b`` (DDP-vs-single equality, tested), and a resumed run consumes
    the same batches as an uninterrupted one (``start`` skips what was already trained on).
    """

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, seed: int, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0  # samples of this rank to skip, in the next iteration only

    def __iter__(self):
        idx = list(super().__iter__())
        start, self.start = self.start, 0
        return iter(idx[start:])

    # __len__ stays the full epoch: Lightning sizes epochs by it and counts the restored batches itself


class PostTrainDataModule(L.LightningDataModule):
    """Base: holds the tokenizer and batch sizes; subclasses build ``self.train_set/val_set``.

    Args:
        tokenizer: the policy's tokenizer (built from the ``model`` config group).
        batch_size: per-device micro-batch (derived from ``data.global_batch_size`` in config).
        eval_batch_size: per-device batch for validation/test (defaults to ``batch_size``).
        num_workers: DataLoader workers.
        seed: seeds the split and the shuffling (reproducible data order across resumes).
    """

    def __init__(
        self,
        *,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        global_batch_size: int | None = None,
        micro_batch_size: int | None = None,
    ) -> None:
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
        self._resume: dict[str, int] | None = None  # data position restored from a checkpoint

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

    def _eval_loader(self, ds: Dataset | None) -> DataLoader:
        if ds is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not built this split")
        return DataLoader(
            ds,
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self.check_batch_sizes()
        if self.train_set is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not built the training split")
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        if len(self.train_set) < self.batch_size * world:
            raise ValueError(
                f"the training split has {len(self.train_set)} examples, fewer than one global batch "
                f"({self.batch_size} per device x {world} devices; batches drop the remainder, so no step "
                "would run); use more data or a smaller data.global_batch_size"
            )
        sampler = ResumableSampler(self.train_set, num_replicas=world, rank=rank, seed=self.seed)
        if self._resume is not None and self.trainer is not None:
            # a mid-epoch checkpoint: skip the batches this rank already trained on in that epoch
            if self._resume["epoch"] == self.trainer.current_epoch:
                sampler.start = self._resume["batches"] * self.batch_size
            self._resume = None
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),  # worker seeds: not drawn from the global RNG
        )

    def state_dict(self) -> dict[str, Any]:
        """Data position for exact resume: epoch and batches already trained on in it (per rank)."""
        t = self.trainer
        if t is None or t.state.fn != "fit":
            return {}
        epoch, done = t.current_epoch, t.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= t.num_training_batches:  # saved on the epoch's last batch: resume at the next epoch's start
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batches": done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = dict(state) if state else None

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)


def load_records(path: str, *, split: str = "train", name: str | None = None) -> list[dict[str, Any]]:
    """Rows from a local json/jsonl/parquet/csv file or folder (``datasets``), or a hub dataset."""
    import datasets

    from src.datamodules.errors import BadRecordError

    p = Path(path)
    if p.exists():
        files = sorted(p.glob("*")) if p.is_dir() else [p]
        # compressed files (e.g. HH-RLHF's test.jsonl.gz) are read by datasets through their inner suffix
        suffix = (
            (
                files[0].suffixes[-2] if files[0].suffix == ".gz" and len(files[0].suffixes) > 1 else files[0].suffix
            ).lstrip(".")
            if files
            else ""
        )
        builder = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv"}.get(suffix)
        if builder is None:
            raise ValueError(
                f"{path}: unsupported file type {suffix!r}; use .json, .jsonl, .parquet or .csv (optionally .gz)"
            )
        try:
            ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
        except Exception as e:  # datasets wraps JSON errors deeply; surface the file
            raise BadRecordError(f"{path}: could not be parsed as {builder}: {e}") from e
    else:
        ds = datasets.load_dataset(path, name, split=split)
    return ds.to_list()


class RecordDataModule(PostTrainDataModule):
    """Records from a ``generator`` or a ``path`` (file/folder/hub), split into train/val (seeded).

    Subclasses implement ``_row(record, where) -> dict`` (raising ``BadRecordError`` with
    ``where`` = "<source> row <i>") and ``collate``. Bad rows raise, or with
    ``on_bad_record=skip`` are dropped and counted in ``num_skipped``. ``split_key``: records that
    share this field's value (e.g. several sampled solutions of one prompt) land on the same side of
    the train/val split, so a held-out prompt is never seen in training. ``split_seed`` (default: the
    data ``seed``) seeds the split alone, so runs over several seeds can share one held-out set.
    ``val_limit`` keeps the first ``k`` held-out records (of ``val_path`` in file order, or of the
    seeded split): a fixed, cheaper evaluation subset.
    """

    def __init__(
        self,
        *,
        generator: Callable[..., list[dict[str, Any]]] | None = None,
        path: str | None = None,
        val_path: str | None = None,
        split: str = "train",
        name: str | None = None,
        val_fraction: float = 0.1,
        on_bad_record: str = "error",
        split_key: str | None = None,
        split_seed: int | None = None,
        val_limit: int | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        if val_limit is not None and val_limit < 1:
            raise ValueError(f"data.val_limit must be >= 1 or null, got {val_limit}")
        if (path is None) == (generator is None):
            raise ValueError(f"{type(self).__name__} needs exactly one of data.path or data.generator")
        if on_bad_record not in ("error", "skip"):
            raise ValueError(f"data.on_bad_record={on_bad_record!r}; valid: error, skip")
        if val_path is None and not 0.0 < val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must lie in (0, 1), got {val_fraction}")
        self.generator, self.path, self.val_path, self.split, self.name = generator, path, val_path, split, name
        self.val_fraction, self.on_bad_record, self.split_key = val_fraction, on_bad_record, split_key
        self.split_seed, self.val_limit = split_seed, val_limit
        self.num_skipped = 0

    def _row(self, rec: Any, where: str) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _prepare(self, rows: list[Any], source: str, positions: list[int] | None = None) -> list[dict[str, Any]]:
        """``positions``: each record's row in its source (file order, 0-based), so an error names the
        record a user can find, not its place after the seeded shuffle and split."""
        from src.datamodules.errors import BadRecordError

        out = []
        for i, rec in enumerate(rows):
            pos = positions[i] if positions is not None else i
            try:
                out.append({**self._row(rec, f"{source} row {pos}"), "index": len(out)})
            except BadRecordError:
                if self.on_bad_record == "error":
                    raise
                self.num_skipped += 1
        if not out:
            raise ValueError(f"{source}: no usable records")
        return out

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.generator is not None:
            rows, source = self.generator(seed=self.seed), "generator"
        else:
            rows, source = load_records(self.path, split=self.split, name=self.name), self.path
        if self.val_path is not None:  # two sources, each in its own file order
            train_rows, val_rows, vsrc = rows, load_records(self.val_path, split="test", name=self.name), self.val_path
            train_pos = val_pos = None
        else:
            train_pos, val_pos = self._split_positions(rows, source)
            train_rows, val_rows, vsrc = [rows[i] for i in train_pos], [rows[i] for i in val_pos], source
        if self.val_limit is not None:
            val_rows, val_pos = val_rows[: self.val_limit], None if val_pos is None else val_pos[: self.val_limit]
        train, val = self._prepare(train_rows, source, train_pos), self._prepare(val_rows, vsrc, val_pos)
        for r in val:  # globally unique indices (caches are keyed by them)
            r["index"] += len(train)
        self.train_set, self.val_set = ListDataset(train), ListDataset(val)

    def _split_positions(self, rows: list[Any], source: str) -> tuple[list[int], list[int]]:
        """Seeded (train, val) positions into ``rows``. Groups are single rows, or with ``split_key`` every
        row sharing that field (in first-seen order); a held-out group is evaluated once, by its first row."""
        if self.split_key is None:
            groups = [[i] for i in range(len(rows))]
        else:
            by_key: dict[str, list[int]] = {}
            for i, r in enumerate(rows):
                if self.split_key not in r:
                    raise KeyError(f"{source} row {i}: data.split_key={self.split_key!r} is not a field of the record")
                by_key.setdefault(str(r[self.split_key]), []).append(i)
            groups = list(by_key.values())
        split_seed = self.seed if self.split_seed is None else self.split_seed
        perm = torch.randperm(len(groups), generator=torch.Generator().manual_seed(split_seed)).tolist()
        n_val = max(1, int(round(self.val_fraction * len(groups))))
        return [i for k in perm[n_val:] for i in groups[k]], [groups[k][0] for k in perm[:n_val]]
