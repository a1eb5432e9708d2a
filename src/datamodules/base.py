"""Shared DataModule plumbing: tokenizer hand-off, global -> per-device batch, seeded loaders."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from transformers import PreTrainedTokenizerBase

from src.datamodules.errors import BadRecordError, DataError
from src.datamodules.records import Located, read_records

log = logging.getLogger(__name__)


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


#: tokens past the kept ones that a bounded encode must see before it trusts its cut (see encode_bounded)
CUT_SLACK = 16


def encode_bounded(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    max_tokens: int,
    *,
    keep: str = "start",
    chars_per_token: int = 16,
) -> tuple[list[int], int | None]:
    """The first (``keep="start"``) or last (``"end"``) ``max_tokens`` token ids of ``text``, tokenising a
    bounded piece of it: a 50 MB record costs memory for a few thousand tokens, not for 50 MB of them (the
    whole string used to be tokenised, 18 GB, before truncation).

    The piece grows (x4) until it yields ``max_tokens + CUT_SLACK`` tokens; a cut changes only the tokens
    around it (pre-tokenisers split text into words first), so the kept ones equal those of the whole text
    (tested against full tokenisation with real tokenizers on real data). Returns ``(ids, total)``: ``total``
    is the whole text's token count when the whole text was tokenised, else ``None`` (it has more than
    ``max_tokens + CUT_SLACK``).
    """
    if max_tokens < 0 or keep not in ("start", "end"):
        raise ValueError(f"encode_bounded: max_tokens={max_tokens} must be >= 0 and keep={keep!r} start|end")

    def enc(s: str) -> list[int]:
        return tokenizer(s, add_special_tokens=False)["input_ids"]

    def kept(ids: list[int]) -> list[int]:
        return ids[:max_tokens] if keep == "start" else ids[max(0, len(ids) - max_tokens) :]

    budget = max(256, (max_tokens + CUT_SLACK) * chars_per_token)
    while True:
        if len(text) <= budget:
            ids = enc(text)
            return kept(ids), len(ids)
        ids = enc(text[:budget] if keep == "start" else text[-budget:])
        if len(ids) >= max_tokens + CUT_SLACK:
            return kept(ids), None
        budget *= 4


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


class ResumableLoader(DataLoader):
    """The training DataLoader. Its position survives a restart through its datamodule: the datamodule's
    ``state_dict`` holds the epoch and the batches already trained on, and ``train_dataloader`` starts the
    sampler past them (exact resume, tested). Being stateful tells Lightning so; otherwise it warns on every
    mid-epoch resume that the results may be unreliable. Its own state is empty: one place keeps the position."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


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

    def check_size(self, world: int) -> None:
        """At least one batch per rank (``src.train.build`` calls it before any model loads)."""
        if self.train_set is not None and len(self.train_set) < self.batch_size * world:
            raise DataError(
                f"the training split has {len(self.train_set)} examples, fewer than one global batch "
                f"({self.batch_size} per device x {world} devices; batches drop the remainder, so no step "
                "would run); use more data or a smaller data.global_batch_size"
            )

    def train_dataloader(self) -> DataLoader:
        self.check_batch_sizes()
        if self.train_set is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not built the training split")
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        self.check_size(world)
        sampler = ResumableSampler(self.train_set, num_replicas=world, rank=rank, seed=self.seed)
        if self._resume is not None and self.trainer is not None:
            # a mid-epoch checkpoint: skip the batches this rank already trained on in that epoch
            if self._resume["epoch"] == self.trainer.current_epoch:
                sampler.start = self._resume["batches"] * self.batch_size
            self._resume = None
        return ResumableLoader(
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


class RecordDataModule(PostTrainDataModule):
    """Records from a ``generator`` or a ``path`` (file/folder/hub), split into train/val (seeded).

    Files are read by :mod:`src.datamodules.records` (no type coercion; ``where`` = "<file> line <n>").
    Subclasses implement ``_row(record, where) -> dict`` (raising ``BadRecordError`` that starts with
    ``where``) and ``collate``. Bad records (unreadable lines included) raise, or with
    ``on_bad_record=skip`` are dropped, counted by reason (``skipped``) and logged; ``known_defects``
    lists reasons skipped even under ``error`` (a data preset's known flaws). ``split_key``: records that
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
        known_defects: list[str] | tuple[str, ...] = (),
        split_key: str | None = None,
        split_seed: int | None = None,
        val_limit: int | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        if val_limit is not None and val_limit < 1:
            raise DataError(f"data.val_limit must be >= 1 or null, got {val_limit}")
        if (path is None) == (generator is None):
            raise DataError(f"{type(self).__name__} needs exactly one of data.path or data.generator")
        if on_bad_record not in ("error", "skip"):
            raise DataError(f"data.on_bad_record={on_bad_record!r}; valid: error, skip")
        if val_path is None and not 0.0 < val_fraction < 1.0:
            raise DataError(f"data.val_fraction must lie in (0, 1), got {val_fraction}")
        self.generator, self.path, self.val_path, self.split, self.name = generator, path, val_path, split, name
        self.val_fraction, self.on_bad_record, self.split_key = val_fraction, on_bad_record, split_key
        self.split_seed, self.val_limit = split_seed, val_limit
        self.known_defects = tuple(known_defects)
        self.skipped: dict[str, int] = {}  # bad records dropped, by reason
        self.first_skipped: dict[str, str] = {}  # where the first of each reason is

    def _row(self, rec: Any, where: str) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    #: how a user maps their file's fields to the ones this module reads (named in the "no usable field" error)
    mapping_hint: str = ""
    #: the config node the mapping keys live under (``data``; ``task`` for ``eval.py task=...``)
    config_prefix: str = "data"
    #: records read in file order before training to check the file has the fields this module needs
    SCHEMA_PROBE = 20

    def check_fields(self, rows: list[Located], source: str) -> None:
        """Before anything is built: when *none* of the first :data:`SCHEMA_PROBE` records (in file order) can
        be used, the file or its mapping is wrong, not a few records: one error that says what the records hold
        and how to map them (skipping bad records would drop them all)."""
        probe = rows[: self.SCHEMA_PROBE]
        errors: list[tuple[str, BadRecordError]] = []
        for loc in probe:
            try:
                if isinstance(loc.record, BadRecordError):
                    raise loc.record
                self._row(loc.record, loc.where)
                return  # one usable record: the file fits; bad ones are handled record by record
            except BadRecordError as e:
                errors.append((loc.where, e))
        if not errors:
            return
        where, first = errors[0]
        reason = str(first)
        if reason.startswith(where):
            reason = reason[len(where) :].lstrip(": ")
        fields = next((sorted(loc.record) for loc in probe if isinstance(loc.record, dict)), None)
        has = f"; the records have fields {fields}" if fields is not None and "have:" not in reason else ""
        hint = f"; {self.mapping_hint}" if self.mapping_hint and "missing" in reason else ""
        raise DataError(
            f"{source}: none of the first {len(probe)} records can be used (first, {where}: {reason}){has}{hint}"
        )

    def _prepare(self, rows: list[Located], source: str) -> list[dict[str, Any]]:
        """Rows of ``rows`` (each with the place it came from, so an error names the record a user can find,
        not its place after the seeded shuffle and split). Bad records raise, or are skipped and counted by
        reason; ``data.known_defects`` (a preset's list of a real data set's known flaws, e.g. HH-RLHF's empty
        responses) are skipped and counted even under ``on_bad_record=error``."""
        out = []
        for loc in rows:
            try:
                if isinstance(loc.record, BadRecordError):
                    raise loc.record
                out.append({**self._row(loc.record, loc.where), "index": len(out)})
            except BadRecordError as e:
                reason = bad_record_reason(e, loc.where)
                known = any(d in reason for d in self.known_defects)
                if self.on_bad_record == "error" and not known:
                    raise BadRecordError(
                        f"{e}. data.on_bad_record=skip drops such records (each counted and logged)"
                    ) from None
                self.skipped[reason] = self.skipped.get(reason, 0) + 1
                self.first_skipped.setdefault(reason, loc.where)
        if not out:
            skipped = f" ({self.skip_summary()})" if self.skipped else ""
            raise DataError(f"{source}: no usable records{skipped}")
        return out

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip_summary(self) -> str:
        return "; ".join(f"{n} x {r} (first: {self.first_skipped[r]})" for r, n in sorted(self.skipped.items()))

    def _located(self, path: str, split: str) -> list[Located]:
        return read_records(path, split=split, name=self.name)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.generator is not None:
            source = "generator"
            rows = [Located(f"generator row {i}", r) for i, r in enumerate(self.generator(seed=self.seed))]
        else:
            rows, source = self._located(self.path, self.split), self.path
        self.check_fields(rows, source)
        if self.val_path is not None:  # two sources, each in its own file order
            train_rows, val_rows, vsrc = rows, self._located(self.val_path, "test"), self.val_path
            self.check_fields(val_rows, vsrc)
        else:
            train_pos, val_pos = self._split_positions(rows, source)
            train_rows, val_rows, vsrc = [rows[i] for i in train_pos], [rows[i] for i in val_pos], source
        if self.val_limit is not None:
            val_rows = val_rows[: self.val_limit]
        train, val = self._prepare(train_rows, source), self._prepare(val_rows, vsrc)
        for r in val:  # globally unique indices (caches are keyed by them)
            r["index"] += len(train)
        self.train_set, self.val_set = ListDataset(train), ListDataset(val)
        if self.skipped:  # never silent: how many, why, and where the first of each kind is
            log.warning(
                "skipped %d of %d records of %s: %s",
                self.num_skipped,
                len(train_rows) + len(val_rows),
                source if vsrc == source else f"{source} + {vsrc}",
                self.skip_summary(),
            )

    def _split_positions(self, rows: list[Located], source: str) -> tuple[list[int], list[int]]:
        """Seeded (train, val) positions into ``rows``. Groups are single rows, or with ``split_key`` every
        row sharing that field (in first-seen order); a held-out group is evaluated once, by its first row.
        A record that could not be read is a group of its own (it fails or is skipped where it lands)."""
        if self.split_key is None:
            groups = [[i] for i in range(len(rows))]
        else:
            by_key: dict[Any, list[int]] = {}
            for i, loc in enumerate(rows):
                r = loc.record
                if isinstance(r, BadRecordError):
                    by_key[("unreadable", i)] = [i]
                    continue
                if not isinstance(r, dict) or self.split_key not in r:
                    raise DataError(
                        f"{loc.where}: data.split_key={self.split_key!r} is not a field of the record"
                        + (f" (fields: {sorted(r)})" if isinstance(r, dict) else "")
                    )
                by_key.setdefault(str(r[self.split_key]), []).append(i)
            groups = list(by_key.values())
        split_seed = self.seed if self.split_seed is None else self.split_seed
        perm = torch.randperm(len(groups), generator=torch.Generator().manual_seed(split_seed)).tolist()
        n_val = max(1, int(round(self.val_fraction * len(groups))))
        return [i for k in perm[n_val:] for i in groups[k]], [groups[k][0] for k in perm[:n_val]]


def bad_record_reason(e: BadRecordError, where: str) -> str:
    """The kind of a bad record, for counting: its message without the place and with numbers as ``N``
    ("prompt has N tokens > data.max_prompt_length=N")."""
    import re

    msg = str(e)
    if msg.startswith(where):
        msg = msg[len(where) :].lstrip(": ")
    msg = re.sub(r"0x[0-9a-f]+", "0x..", msg.split(". data.on_bad_record")[0])
    return re.sub(r"(?<=[ =(])\d+\b", "N", msg)
