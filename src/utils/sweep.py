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
import os
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
    log.error(
        "sweep job %s failed (%s: %s); continuing with the next job. Details: %s",
        hc.job.num,
        type(exc).__name__,
        exc,
        out / MARKER,
    )
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


def job_overrides() -> dict[str, str]:
    """This job's command-line overrides (``key=value`` -> {key: value}); {} outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    out = {}
    for o in HydraConfig.get().overrides.task:
        key, _, value = o.partition("=")
        out[key.lstrip("+~")] = value
    return out


def write_run_summary(out_dir: str | Path, metrics: dict[str, float], *, task_name: str | None = None) -> Path:
    """``<run dir>/metrics.json``: final metrics + overrides, the record ``python -m src.pareto`` reads."""
    import json
    import math

    path = Path(out_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in sorted(metrics.items())}
    from src.utils.run_record import invocations, read_history, run_overrides

    history = read_history(out_dir)  # once: the overrides and the starts come from the same record
    rec = {"task_name": task_name, "overrides": run_overrides(out_dir, history), "metrics": clean}
    starts = invocations(history)
    if starts:  # every start of the run (the first, and each resume) with the overrides typed for it
        rec["starts"] = starts
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, path)
    return path


def finished_job(output_dir: str | Path, optimized_metric: str | None) -> tuple[bool, float | None]:
    """In a multirun, ``(True, objective)`` when this job's folder already holds the ``metrics.json`` of a
    finished job with the same overrides: re-running a sweep with a fixed ``hydra.sweep.dir`` skips it
    (a sweep killed half-way resumes where it stopped). ``(False, None)`` otherwise."""
    import json

    path = Path(output_dir) / "metrics.json"
    if not in_multirun() or not path.is_file() or (path.parent / MARKER).exists():
        return False, None
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False, None
    from src.utils.run_record import NOT_SETTINGS

    def settings(d: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in d.items() if k not in NOT_SETTINGS}

    if settings(rec.get("overrides") or {}) != settings(job_overrides()):
        return False, None
    value = rec.get("metrics", {}).get(optimized_metric) if optimized_metric else None
    log.info("sweep job already finished (%s): skipped", path)
    return True, (float("nan") if value is None and optimized_metric else value)


def wandb_group(task_name: str) -> str:
    """W&B group: ``<task_name>`` for a single run; ``<task_name>/<sweep folder>`` for every job of a multirun,
    so one sweep's runs (and its Pareto summary run) share a group."""
    if not in_multirun():
        return task_name
    from hydra.core.hydra_config import HydraConfig

    return f"{task_name}/{Path(HydraConfig.get().sweep.dir).name}"
