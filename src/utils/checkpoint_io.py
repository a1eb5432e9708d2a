"""Checkpoints that a kill at any instant cannot corrupt, and ``ckpt_path=last`` that finds a readable one.

:class:`AtomicCheckpointIO` (every trainer's checkpoint plugin, ``src.train.build``) writes each checkpoint
to a temporary file *in the destination folder*, fsyncs it, renames it over the final name and fsyncs the
folder. A rename within one folder is atomic on POSIX filesystems (local, NFS, Lustre), so the final name
always holds either the previous complete checkpoint or the new complete one; there is no copy across
filesystems (Lightning's default goes through ``$TMPDIR`` and ``shutil.move``, which is a copy in place when
the run folder is on another filesystem). A failed write (a full disk) removes its temporary file; a killed
one leaves ``.<name>.tmp-<pid>`` next to the checkpoints, which the next run removes.

:func:`resolve_ckpt_path` turns ``ckpt_path=last`` into the newest *readable* checkpoint of the run folder:
``last.ckpt``, else the newest ``step_*.ckpt`` (with a warning naming both); no checkpoint there is an
error, not a silent fresh start.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)

TMP_MARK = ".tmp-"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` via a fsynced temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt: no partial file under any name
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Temporary files that killed saves left in ``folder`` (never a complete checkpoint)."""
    removed = []
    for p in Path(folder).glob(f".*.ckpt{TMP_MARK}*"):
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with :func:`atomic_torch_save` for local paths."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(str(path)):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)


def readable(path: Path) -> str | None:
    """``None`` when ``path`` loads as a checkpoint, else why not."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as e:  # truncated zip, EOF, not a checkpoint at all
        return f"{type(e).__name__}: {e}".splitlines()[0]
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        return "not a Lightning checkpoint (no state_dict)"
    return None


def resolve_ckpt_path(ckpt_path: str | None, checkpoint_dir: str | Path) -> str | None:
    """The checkpoint to resume from. ``last``: the newest readable one in ``checkpoint_dir``; a path: that
    file, which must exist and be readable. Clear errors instead of torch's or a silent fresh start."""
    if not ckpt_path:
        return None
    folder = Path(checkpoint_dir)
    if ckpt_path != "last":
        path = Path(ckpt_path)
        if path.is_dir():  # a distributed (FSDP2) checkpoint is a folder: its loader checks it
            return str(path)
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
        why = readable(path)
        if why:
            raise ValueError(f"ckpt_path={ckpt_path} is not a readable checkpoint ({why})")
        return str(path)
    remove_stale_temporaries(folder)
    last = folder / "last.ckpt"
    candidates = ([last] if last.exists() else []) + sorted(
        (p for p in folder.glob("*.ckpt") if p.name != "last.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    if not candidates:
        raise FileNotFoundError(
            f"ckpt_path=last: no checkpoint in {folder} (is hydra.run.dir the run to resume? a fresh run needs no "
            "ckpt_path)"
        )
    first_why = None
    for p in candidates:
        if p.is_dir():
            return str(p)
        why = readable(p)
        if why is None:
            if first_why is not None:
                log.warning("ckpt_path=last: %s is unreadable (%s); resuming from %s", candidates[0], first_why, p)
            return str(p)
        first_why = first_why or why
    raise ValueError(f"ckpt_path=last: no readable checkpoint in {folder} ({candidates[0].name}: {first_why})")
