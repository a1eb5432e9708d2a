"""A run folder's own record, so a resume continues *that* run and keeps its history.

Hydra rewrites ``.hydra/config.yaml`` and ``.hydra/overrides.yaml`` at every start, with whatever the new
command line says. A resume typed as the README shows it (``hydra.run.dir=<dir> ckpt_path=last``) would then
train under the *default* config, and the record of how the run was made would be gone. So the first start of
a run writes two files that are never overwritten:

* ``<run dir>/run_config.yaml``: the composed config of the first start (unresolved);
* ``<run dir>/run_history.jsonl``: one line per start (``start`` / ``resume``), with its overrides and
  config-group choices, appended and fsynced.

A resume (``ckpt_path`` set, ``run_config.yaml`` present) trains under the stored config. Its own overrides
apply only to keys that do not define the training (:data:`RUNTIME_KEYS`: length, logging, validation
cadence, devices, callbacks, loggers, paths); changing any other key, or a config group such as ``module=``,
is an error naming it, unless ``force_resume=true`` (plain keys only). ``.hydra/config.yaml`` and
``.hydra/overrides.yaml`` are rewritten to what the run really trained under, and ``metrics.json`` records
every start (:func:`effective_overrides`, :func:`invocations`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.utils.launch import is_run_writer

log = logging.getLogger(__name__)

CONFIG = "run_config.yaml"
HISTORY = "run_history.jsonl"

#: keys a resume may change: they say how long, where and how visibly to run, not what is trained
RUNTIME_KEYS = (
    "ckpt_path",
    "force_resume",
    "trainer.max_steps",
    "trainer.max_epochs",
    "trainer.max_time",
    "trainer.val_check_interval",
    "trainer.check_val_every_n_epoch",
    "trainer.limit_val_batches",
    "trainer.log_every_n_steps",
    "trainer.enable_progress_bar",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.accelerator",
    "data.num_workers",
    "callbacks",
    "logger",
    "paths",
    "export",
    "export_dir",
    "test",
    "tags",
    "extras",
)
#: config groups a resume may switch (their node is taken from the resume's own composition)
RUNTIME_GROUPS = ("callbacks", "logger", "paths")
#: never part of a run's settings record (how it was started, not what it is)
NOT_SETTINGS = ("ckpt_path", "force_resume")


_RUN_CHOICES: dict[str, Any] | None = None  # the run's config-group choices, once prepare_run knows them
_INVOCATION: dict[str, Any] | None = None  # a run started inside this process (a stage), not its command line


@contextlib.contextmanager
def invocation(overrides: list[str], choices: dict[str, Any]):
    """Within the block, runs record ``overrides`` / ``choices`` as their command (a stage trained inside another
    run records its own ``experiment=<stage>``, not the outer command); the outer run's state is restored after."""
    global _INVOCATION, _RUN_CHOICES
    saved = (_INVOCATION, _RUN_CHOICES)
    _INVOCATION, _RUN_CHOICES = {"overrides": list(overrides), "choices": dict(choices)}, None
    try:
        yield
    finally:
        _INVOCATION, _RUN_CHOICES = saved


def run_choices() -> dict[str, Any]:
    """The config-group choices the run trains under: its first start's on a resume (set by
    :func:`prepare_run`), else this Hydra process's ({} outside Hydra)."""
    return dict(_RUN_CHOICES) if _RUN_CHOICES is not None else hydra_invocation()["choices"]


def _is_runtime(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RUNTIME_KEYS)


def hydra_invocation() -> dict[str, Any]:
    """This process's command-line overrides and config-group choices ({} outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if _INVOCATION is not None:
        return {"overrides": list(_INVOCATION["overrides"]), "choices": dict(_INVOCATION["choices"])}
    if not HydraConfig.initialized():
        return {"overrides": [], "choices": {}}
    hc = HydraConfig.get()
    choices = {k: v for k, v in OmegaConf.to_container(hc.runtime.choices).items() if not k.startswith("hydra")}
    return {"overrides": list(hc.overrides.task), "choices": choices}


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill mid-append: the earlier lines stand
                continue
    return out


def _append_history(run_dir: Path, entry: dict[str, Any]) -> None:
    with open(run_dir / HISTORY, "a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _plain(v: Any) -> Any:
    return OmegaConf.to_container(v) if OmegaConf.is_config(v) else v


def _override_key(o: str) -> str:
    key = o.partition("=")[0].lstrip("+~")
    return key.partition("@")[0]


def effective_overrides(history: list[dict[str, Any]]) -> dict[str, str]:
    """``{key: value}`` of every start's overrides, later starts winning (``ckpt_path`` left out): what the run
    trained under, as ``metrics.json`` and ``.hydra/overrides.yaml`` record it."""
    out: dict[str, str] = {}
    for overrides in (h.get("applied", h["overrides"]) for h in history):
        for o in overrides:
            key, _, value = o.partition("=")
            key = key.lstrip("+~")
            if key not in NOT_SETTINGS:
                out[key] = value
    return out


def run_overrides(run_dir: str | Path | None, history: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """What the run in ``run_dir`` trains under: its history's :func:`effective_overrides`, or this process's
    overrides when the folder has no history (eval jobs, runs outside Hydra). ``history``: already read."""
    from src.utils.sweep import job_overrides

    if history is None:
        history = read_history(run_dir) if run_dir else []
    return effective_overrides(history) if history else job_overrides()


def invocations(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each start of the run (from :func:`read_history`): its kind and the overrides typed for it."""
    return [{"kind": h["kind"], "overrides": h["overrides"]} for h in history]


def _resumed_config(cfg: DictConfig, run_dir: Path, history: list[dict[str, Any]]) -> tuple[DictConfig, list[str]]:
    """The stored config with this resume's allowed overrides applied; raises on a training-defining change."""
    from hydra.core.hydra_config import HydraConfig

    stored = OmegaConf.load(run_dir / CONFIG)
    force = bool(cfg.get("force_resume"))
    if not HydraConfig.initialized():  # run(cfg) called with a full config (tests, scripts): it must match
        old, new = _flat(OmegaConf.to_container(stored)), _flat(OmegaConf.to_container(cfg))
        keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and not _is_runtime(k)]
        changes = [(k, old.get(k), new.get(k), True) for k in keys]
        _raise_on(changes, run_dir, force)
        return cfg, []
    first = history[0] if history else {"choices": {}}
    now = hydra_invocation()
    changes, applied = [], []
    for o in now["overrides"]:
        key = _override_key(o)
        if key in now["choices"]:  # a config group (module=dpo, logger=wandb)
            before, after = first["choices"].get(key), now["choices"][key]
            if before == after:
                continue
            if key in RUNTIME_GROUPS:
                stored[key] = cfg[key]
                applied.append(o)
            else:
                changes.append((f"{key} (config group)", before, after, False))
            continue
        new = OmegaConf.select(cfg, key, default=None)
        old = OmegaConf.select(stored, key, default=None)
        if key in NOT_SETTINGS or _is_runtime(key):
            OmegaConf.update(stored, key, new, merge=False, force_add=True)
            if key not in NOT_SETTINGS:
                applied.append(o)
        elif _plain(new) != _plain(old):
            changes.append((key, _plain(old), _plain(new), True))
    _raise_on(changes, run_dir, force)
    stored.ckpt_path, stored.force_resume = cfg.get("ckpt_path"), force  # how this start was made, always
    for key, old, new, _ in changes:  # forced
        log.warning("force_resume=true: %s changes on resume: %r -> %r", key, old, new)
        OmegaConf.update(stored, key, OmegaConf.select(cfg, key), merge=False, force_add=True)
    applied += [o for o in now["overrides"] if any(_override_key(o) == c[0] for c in changes)]
    return stored, applied


def _applied_groups(applied: list[str]) -> list[str]:
    return [k for k in map(_override_key, applied) if k in RUNTIME_GROUPS]


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (empty dicts and lists are leaves)."""
    if not isinstance(d, dict) or not d:
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def _raise_on(changes: list[tuple[str, Any, Any, bool]], run_dir: Path, force: bool) -> None:
    """``changes``: (key, stored value, new value, can be forced)."""
    blocking = [c for c in changes if not (force and c[3])]
    if blocking:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b, _ in blocking)
        hint = (
            "a config group cannot change on resume"
            if any(not c[3] for c in blocking)
            else "pass force_resume=true to apply it anyway"
        )
        raise ValueError(
            f"resuming {run_dir} would change how the run trains: {listed}. A resume continues the run as it was "
            f"configured ({run_dir / CONFIG}); {hint}, or start a new run (a new hydra.run.dir, with "
            "ckpt_path=<file> to start from this checkpoint)"
        )


def prepare_run(cfg: DictConfig) -> DictConfig:
    """Before a training run: the config it trains under, and its start recorded in the run folder.

    * fresh run (no ``ckpt_path``): ``run_config.yaml`` written; a folder that already holds another run with
      checkpoints is an error in a single run (resume it with ``ckpt_path=last``, or use a new folder), and in
      a sweep (a job re-run after a kill) a warning, the history appended;
    * resume (``ckpt_path`` set and this folder holds ``run_config.yaml``): the stored config, see the module
      docstring;
    * ``ckpt_path`` into a folder without a record (a warm start, or a folder of an older version): as given.

    The job's writer (:func:`src.utils.launch.is_run_writer`) writes; every rank computes the same config.
    """
    from src.utils.sweep import in_multirun

    out = cfg.get("paths", {}).get("output_dir")
    if not out:
        return cfg
    run_dir = Path(out)
    writer = is_run_writer()
    history = read_history(run_dir)
    now = hydra_invocation()
    entry: dict[str, Any] = {"kind": "start", "overrides": now["overrides"], "choices": now["choices"]}
    global _RUN_CHOICES
    _RUN_CHOICES = now["choices"]
    if cfg.get("ckpt_path") and (run_dir / CONFIG).is_file():
        cfg, applied = _resumed_config(cfg, run_dir, history)
        if history:
            _RUN_CHOICES = {
                **history[0].get("choices", {}),
                **{o: now["choices"][o] for o in _applied_groups(applied)},
            }
        entry.update(kind="resume", applied=applied)
        log.info("resuming %s under its stored config (%s); applied: %s", run_dir, CONFIG, applied or "nothing")
    elif not cfg.get("ckpt_path") and history and writer:
        # only the writer asks: the other ranks of this job start after it has recorded this very start
        ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt")) if (run_dir / "checkpoints").is_dir() else []
        if ckpts and not in_multirun():
            raise FileExistsError(
                f"{run_dir} already holds a run with {len(ckpts)} checkpoint(s); resume it with "
                "ckpt_path=last, or give this run its own hydra.run.dir"
            )
        log.warning("%s holds an earlier start of this run that did not finish; starting over (history kept)", run_dir)
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        if entry["kind"] == "start" or not (run_dir / CONFIG).is_file():
            tmp = run_dir / f".{CONFIG}.tmp-{os.getpid()}"
            tmp.write_text(OmegaConf.to_yaml(cfg))
            os.replace(tmp, run_dir / CONFIG)
        _append_history(run_dir, entry)
        if entry["kind"] == "resume":
            _rewrite_hydra_record(run_dir, cfg, effective_overrides([*history, entry]))
    return cfg


def _rewrite_hydra_record(run_dir: Path, cfg: DictConfig, overrides: dict[str, str]) -> None:
    """``.hydra/config.yaml`` / ``overrides.yaml`` as the run trains, not as this resume was typed."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or not HydraConfig.get().output_subdir:
        return
    sub = run_dir / HydraConfig.get().output_subdir
    if not sub.is_dir():
        return
    (sub / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (sub / "overrides.yaml").write_text(OmegaConf.to_yaml([f"{k}={v}" for k, v in overrides.items()]))
