"""Fault isolation for Hydra multiruns: a crashed job is recorded and the sweep goes on.

In ``-m`` mode the training entry point catches a job's exception (``continue_on_error: true``),
writes ``FAILED.txt`` (overrides + traceback) into that job's output folder, logs it, and returns
NaN as the job's objective (Optuna marks such trials failed). :class:`FailureSummary` (a Hydra
callback) lists the failed jobs at the end and exits non-zero, so a sweep with failures is not
mistaken for a clean one. With the submitit launcher every job is its own SLURM task, so crashes
are isolated by the scheduler too; the same record is written.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

MARKER = "FAILED.txt"


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def record_failure(exc: BaseException) -> float:
    """Write the job's ``FAILED.txt`` and return NaN (the failed job's objective)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    overrides = " ".join(hc.overrides.task)
    (out / MARKER).write_text(f"job {hc.job.num}: {overrides}\n\n" + "".join(traceback.format_exception(exc)))
    log.error("sweep job %s failed (%s: %s); continuing with the next job. Details: %s", hc.job.num,
              type(exc).__name__, exc, out / MARKER)  # fmt: skip
    return float("nan")


class FailureSummary(Callback):
    """At the end of a multirun: list jobs that wrote ``FAILED.txt`` and exit with status 1."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed = sorted(Path(config.hydra.sweep.dir).glob(f"*/{MARKER}"))
        if not failed:
            return
        lines = [p.read_text().splitlines()[0] for p in failed]
        msg = f"{len(failed)} sweep job(s) failed:\n  " + "\n  ".join(lines)
        log.error(msg)
        print(msg, file=sys.stderr)
        sys.exit(1)
