"""One run per run folder, decided before anything is written into it.

A second run started into the same ``hydra.run.dir`` while the first is alive is refused. The refusal must come
before Hydra writes the folder's ``.hydra/config.yaml`` and ``overrides.yaml`` (it does so before the task
function starts), or the first run's record of how it was made is overwritten by the refused command. So
:class:`RunFolderGuard`, a Hydra callback, takes the lock in ``on_run_start``, which Hydra calls before it
creates or writes the folder; :func:`lock_run_dir` (called again by ``src.train.run``, and the only call
outside a Hydra run: tests, scripts, multirun jobs) returns the lock this process already holds.

The lock is ``fcntl.flock`` on ``<run dir>/.run.lock``, taken by the job's one writer process
(:func:`src.utils.launch.is_run_writer`: other ranks share the folder). The OS releases it when the process
ends, however it ends, so a resume after a kill is never blocked.

The guard also remembers whether the folder existed before this start, so that a start that fails on its
config or data can remove the folder it created (:func:`remove_failed_start`): such a folder holds nothing
but Hydra's record and a log, and would otherwise sit among the results looking like a run.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import sys
from pathlib import Path
from typing import IO, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from src.utils.launch import is_run_writer

log = logging.getLogger(__name__)

LOCK = ".run.lock"
_HELD: dict[Path, IO[str]] = {}  # run folder -> the open, locked file (held for the life of the process)
_EXISTED: dict[Path, bool] = {}  # run folder -> did it exist before this start (RunFolderGuard)


class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder's lock."""


def lock_run_dir(out_dir: str | Path | None) -> IO[str] | None:
    """Lock ``out_dir`` for this process (the job's writer only; others get ``None``); raises
    :class:`RunFolderBusy` when another process holds it. Idempotent within a process."""
    if not out_dir or not is_run_writer():
        return None
    run_dir = Path(out_dir).resolve()
    if run_dir in _HELD:
        return _HELD[run_dir]
    path = run_dir / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RunFolderBusy(
            f"another run is using {out_dir} (it holds {path}); wait for it, or give this run its own hydra.run.dir"
        ) from None
    _HELD[run_dir] = f
    return f


def release_run_dir(out_dir: str | Path | None) -> None:
    """Give up this process's lock on ``out_dir`` (end of ``src.train.run``; the OS does it at exit anyway)."""
    if out_dir and (f := _HELD.pop(Path(out_dir).resolve(), None)) is not None:
        f.close()


def remove_failed_start(out_dir: str | Path | None, log_name: str | None = None) -> bool:
    """After a start failed on its config or data: remove ``out_dir`` when this start created it and it holds
    only what a start writes before training (``.hydra/``, the log, the lock, ``run_config.yaml`` and
    ``run_history.jsonl``). Returns whether it was removed."""
    if not out_dir or not is_run_writer():
        return False
    run_dir = Path(out_dir).resolve()
    if _EXISTED.get(run_dir, True) or not run_dir.is_dir():
        return False  # a folder that was there before (a resume, a user's folder) is never removed
    # this start created the folder, so all of it is this start's: Hydra's record, the log, the run's own record
    allowed = {".hydra", LOCK, "run_config.yaml", "run_history.jsonl", *([f"{log_name}.log"] if log_name else [])}
    if any(p.name not in allowed for p in run_dir.iterdir()):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


class RunFolderGuard(Callback):
    """Hydra callback (``hydra.callbacks.run_folder_guard``): lock the run folder before Hydra writes it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            run_dir = Path(str(config.hydra.run.dir)).resolve()
        except Exception:  # an interpolation that needs the job (it resolves later): the task locks it then
            return
        _EXISTED[run_dir] = run_dir.exists()
        if not run_dir.exists():
            return  # nothing to protect yet; src.train.run locks it once Hydra has created it
        try:
            lock_run_dir(run_dir)
        except RunFolderBusy as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
