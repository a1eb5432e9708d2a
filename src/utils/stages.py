"""Experiment stages cached by content: ``${stage:<experiment>[,key=value ...]}``.

An experiment that starts from another run's model (distil from an SFT'd teacher, RL from an SFT warm
start) names it in its config, e.g. ``model.name_or_path: ${stage:opd_arith_student}``. The resolver
composes that experiment (with the given overrides) and hashes its composed, *unresolved* config
(everything that defines the run: model, data, module, trainer, seed; not paths, loggers, callbacks or
names), and returns ``<paths.cache_dir>/stages/<experiment>-<hash>/hf_model``: the same config always
maps to the same folder, a changed one (another seed, lr, data file) to a new one.

Resolving is cheap and builds nothing (configs compose in tests and sweeps without training).
:func:`ensure_stages`, called by ``src.train.build`` before anything is instantiated, trains every
stage the run refers to whose folder is not complete yet, under a file lock (parallel sweep jobs
wait for one builder), and marks it complete with ``STAGE.json`` (written last, atomically). A stage
killed half-way is not marked, and is rebuilt. Stages that themselves name stages are hashed by their
config text, which names the inner stage but not its content: change the inner experiment's YAML and
the outer stage is not rebuilt (delete its folder).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
MARKER = "STAGE.json"
#: keys that do not change what a stage trains
NOT_HASHED = ("paths", "logger", "callbacks", "task_name", "tags", "export", "export_dir", "ckpt_path", "hydra")
#: stage folder -> (experiment, overrides) of every stage resolved in this process
PENDING: dict[str, tuple[str, list[str]]] = {}


def compose_stage(experiment: str, overrides: list[str], *, hydra_config: bool = False) -> DictConfig:
    """The stage's training config, composed from ``configs/`` as ``train.py experiment=<name>`` would
    (``hydra_config``: with the ``hydra`` node, whose ``runtime.choices`` name the config groups used)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    ov = [f"experiment={experiment}", *overrides]
    if GlobalHydra.instance().is_initialized():  # inside train.py / a test's compose context
        return compose(config_name="train", overrides=ov, return_hydra_config=hydra_config)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose(config_name="train", overrides=ov, return_hydra_config=hydra_config)


def stage_key(cfg: DictConfig) -> str:
    """Hash of what defines the run (the unresolved composed config minus :data:`NOT_HASHED`)."""
    tree = OmegaConf.to_container(cfg, resolve=False)
    for k in NOT_HASHED:
        tree.pop(k, None)
    tree.get("trainer", {}).pop("enable_progress_bar", None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:12]


def stage_dir(experiment: str, *overrides: str, _root_: DictConfig) -> str:
    """The resolver behind ``${stage:...}``: the stage's exported model folder (not built here)."""
    ov = [str(o) for o in overrides]
    key = stage_key(compose_stage(experiment, ov))
    folder = Path(str(_root_.paths.cache_dir)) / "stages" / f"{experiment}-{key}"
    PENDING[str(folder)] = (experiment, ov)
    return str(folder / "hf_model")


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file() and (folder / "hf_model" / "config.json").is_file()


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_stage(folder: Path, experiment: str, overrides: list[str]) -> dict[str, Any]:
    """Train the stage into ``folder`` (its run in ``folder/run``, its model in ``folder/hf_model``)."""
    from src.train import run
    from src.utils.run_record import invocation

    cfg = compose_stage(experiment, overrides, hydra_config=True)
    OmegaConf.set_struct(cfg, False)
    choices = {k: v for k, v in OmegaConf.to_container(cfg.hydra.runtime.choices).items() if not k.startswith("hydra")}
    del cfg["hydra"]  # the run sees the config train.py would give it
    cfg.paths.output_dir = str(folder / "run")
    cfg.export, cfg.export_dir = True, str(folder / "hf_model")
    cfg.ckpt_path = None
    log.warning("stage %s is not built yet: training it into %s (once; later runs reuse it)", experiment, folder)
    with invocation([f"experiment={experiment}", *overrides], choices):  # the stage's run records its own command
        metrics, _ = run(cfg)
    record = {"experiment": experiment, "overrides": overrides, "metrics": metrics}
    tmp = folder / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, folder / MARKER)
    return record


#: the nodes a run instantiates; a stage named only in a node nothing uses (an experiment's
#: ``teacher.name_or_path`` under ``teacher=tiny_causal``) is not built
USED = ("model.tokenizer", "data", "module", "callbacks")


def ensure_stages(cfg: DictConfig) -> list[Path]:
    """Resolve the nodes the run uses (which registers their stages) and build every such stage that is
    not complete."""
    PENDING.clear()  # resolving registers exactly the stages these nodes name
    for key in USED:
        node = OmegaConf.select(cfg, key, throw_on_missing=False)
        if isinstance(node, DictConfig):
            try:
                OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
            except Exception:  # an unresolvable key is reported where it is used, with its own message
                pass
    built = []
    for name, (experiment, overrides) in list(PENDING.items()):
        folder = Path(name)
        if is_complete(folder):
            continue
        with _lock(folder.with_name(folder.name + ".lock")):
            if not is_complete(folder):  # another job may have built it while we waited
                build_stage(folder, experiment, overrides)
                built.append(folder)
    return built


OmegaConf.register_new_resolver("stage", stage_dir, replace=True)
