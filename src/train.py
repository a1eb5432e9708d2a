"""``run(cfg)``: seed -> tokenizer -> data -> module -> callbacks/loggers -> trainer -> fit/test.

Shape follows lightning-hydra-template's ``train()``; returns the metrics dict and the value of
``cfg.optimized_metric`` for sweepers.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar as ProgressBarBase
from omegaconf import DictConfig, OmegaConf

import src.utils.resolvers  # noqa: F401  (registers resolvers)
from src.callbacks.progress import ProgressBar, run_header
from src.datamodules.base import RecordDataModule
from src.utils.checkpoint_io import AtomicCheckpointIO, resolve_ckpt_path
from src.utils.config_checks import check_config
from src.utils.instantiate import instantiate_callbacks, instantiate_loggers
from src.utils.launch import is_run_writer
from src.utils.run_lock import lock_run_dir, release_run_dir
from src.utils.run_record import prepare_run, run_overrides
from src.utils.stages import ensure_stages
from src.utils.sweep import write_run_summary

log = logging.getLogger(__name__)


def check_devices(cfg: DictConfig) -> None:
    """Say what ``trainer.devices=N`` does here: N CPU processes (DDP over gloo) with the CPU accelerator,
    or a clear error when N GPUs are asked for and fewer exist. CPU processes share the cores, so each
    gets ``cores // N`` threads instead of all of them (oversubscription slows every process ~10x)."""
    from src.utils.resolvers import _world

    t = cfg.trainer
    devices, accel = t.get("devices", 1), str(t.get("accelerator", "cpu"))
    if isinstance(devices, int) and accel in ("gpu", "cuda") and devices > torch.cuda.device_count():
        raise RuntimeError(
            f"trainer.devices={devices} with trainer.accelerator={accel} asks for {devices} GPUs, but "
            f"{torch.cuda.device_count()} are visible. Use trainer.accelerator=cpu to run {devices} CPU processes "
            "instead, or lower trainer.devices."
        )
    if accel == "cpu" and devices not in (1, "1", "auto"):
        world = _world(devices, t.get("num_nodes", 1))
        local = world // int(t.get("num_nodes", 1))
        cores = os.cpu_count() or 1
        threads = max(1, cores // max(1, local))
        torch.set_num_threads(threads)
        if is_run_writer():
            log.warning(
                "trainer.devices=%s on CPU: running %d CPU processes (DDP, gloo backend) on this machine's %d "
                "cores, %d thread(s) each; the per-device batch is data.global_batch_size / %d. For GPUs use "
                "trainer=gpu or trainer=ddp.",
                devices,
                local,
                cores,
                threads,
                world,
            )


def check_data_sources(data: DictConfig | None) -> None:
    """``data.path`` / ``data.val_path`` exist (local) or load from the cache (hub, offline): see
    :func:`src.datamodules.records.check_source`."""
    from src.datamodules.records import check_source

    if not data:
        return
    for key, split in (("path", data.get("split", "train")), ("val_path", "test")):
        if data.get(key):
            check_source(str(data.get(key)), split=split, name=data.get("name"))


def build(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate every object of a run (no training). Used by ``run``, ``eval`` and the tests."""
    check_config(cfg)  # types and ranges first: one line naming the key, before any model loads
    check_devices(cfg)
    check_data_sources(cfg.get("data"))  # a missing file is said before stages train or models load
    ensure_stages(cfg)  # models this run starts from (``${stage:...}``), trained once and cached by content
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    tokenizer = hydra.utils.instantiate(cfg.model.tokenizer)
    datamodule = hydra.utils.instantiate(cfg.data, tokenizer=tokenizer)
    if isinstance(datamodule, RecordDataModule):  # read and checked before any model loads (one-line errors)
        datamodule.setup("fit")
    module = hydra.utils.instantiate(cfg.module, tokenizer=tokenizer)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    if cfg.trainer.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBarBase) for c in callbacks):
        callbacks.append(ProgressBar())  # Lightning's Rich bar, minus its "Epoch 3/-2" under max_epochs=-1
    loggers = with_csv(instantiate_loggers(cfg.get("logger")), cfg.paths.get("output_dir"))
    extra = {}
    if not module.automatic_optimization and int(cfg.trainer.get("accumulate_grad_batches") or 1) > 1:
        raise ValueError(
            f"{type(module).__name__} optimises manually, so there is no gradient accumulation, but "
            f"data.micro_batch_size={cfg.data.get('micro_batch_size')} asks for "
            f"{cfg.trainer.accumulate_grad_batches} micro-batches per step: set data.micro_batch_size=null"
            + (" (module.score_max_rows bounds the scoring memory)" if "score_max_rows" in cfg.module else "")
        )
    if not module.automatic_optimization and cfg.trainer.get("gradient_clip_val"):
        # manual-optimisation modules (DiFFPO) clip inside their step (module.gradient_clip)
        log.info("%s optimises manually: trainer.gradient_clip_val ignored", type(module).__name__)
        extra["gradient_clip_val"] = None
    # every checkpoint is written atomically in its own folder (a kill at any instant leaves the previous one)
    plugins = [*(cfg.trainer.get("plugins") or []), AtomicCheckpointIO()]
    trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins, **extra
    )
    return {
        "cfg": cfg,
        "tokenizer": tokenizer,
        "datamodule": datamodule,
        "module": module,
        "callbacks": callbacks,
        "loggers": loggers,
        "trainer": trainer,
    }


def with_csv(loggers: list, out_dir: str | None) -> list:
    """Every run folder gets ``csv/metrics.csv`` (what ``src.report``, resumes and the tests read), beside any
    other logger (``logger=wandb``) and even with ``logger=null``."""
    from lightning.pytorch.loggers import CSVLogger as LightningCSV

    from src.utils.csv_logger import CSVLogger

    if out_dir and not any(isinstance(lg, LightningCSV) for lg in loggers):
        loggers = [CSVLogger(save_dir=out_dir, name="csv", version=""), *loggers]
    return loggers


def log_hyperparameters(objs: dict[str, Any]) -> None:
    """Send the resolved config (not the models) to every logger."""
    cfg = objs["cfg"]
    hparams = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    hparams.pop("hydra", None)
    module = objs["module"]
    # the job's command-line overrides as flat config keys, so the W&B UI can plot a sweep against them
    hparams["overrides"] = run_overrides(cfg.paths.get("output_dir"))
    hparams["num_params/trainable"] = sum(p.numel() for p in module.parameters() if p.requires_grad)
    for lg in objs["loggers"]:
        lg.log_hyperparams(hparams)


def export_policy(module: L.LightningModule, tokenizer, out_dir: Path, *, is_global_zero: bool = True) -> Path | None:
    """Save the final policy as a plain HF folder (LoRA merged), loadable without this framework.

    Collective under FSDP2 (``trainer=fsdp2``): every rank must call it; the full weights are
    gathered to CPU, loaded into a fresh unsharded copy from the module's factory, and rank 0 writes.
    """
    policy = getattr(module, "policy", None)
    if policy is None:
        return None
    if module.device_mesh is not None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not is_global_zero:
            return None
        policy = module.model_factory(module.tokenizer)
        policy.load_state_dict(full)  # strict: a key mismatch is an error, not a silent partial export
    elif not is_global_zero:
        return None
    elif hasattr(policy, "merge_and_unload"):  # peft: merge a copy, keep the training model intact
        import copy

        policy = copy.deepcopy(policy)
    if hasattr(policy, "merge_and_unload"):
        policy = policy.merge_and_unload()
    bad = [n for n, p in policy.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:  # a model that is not a number is not a result: never written where a user would load it
        raise FloatingPointError(f"not exporting a non-finite policy to {out_dir}: NaN/inf in {bad[:5]}")
    # written next to its final name and renamed into place: a full disk or a kill never leaves an hf_model/
    # with configs and no weights, and an earlier export stays until the new one is complete
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        policy.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def run(cfg: DictConfig) -> tuple[dict[str, float], float | None]:
    """Train (and optionally test) as configured; return metrics and the optimized metric."""
    check_config(cfg)  # a wrong value is not a start of the run
    out = cfg.paths.get("output_dir")
    lock_run_dir(out)  # one run per folder (taken earlier, before Hydra wrote .hydra/, by RunFolderGuard)
    try:
        return _run(cfg)
    finally:
        release_run_dir(out)


def _run(cfg: DictConfig) -> tuple[dict[str, float], float | None]:
    if cfg.get("train", True):  # a resume trains under the run's stored config; every start is recorded
        cfg = prepare_run(cfg)
    tasks = eval_tasks_of(cfg)  # refused under sharded strategies before any model loads
    objs = build(cfg)
    trainer: L.Trainer = objs["trainer"]
    module, dm = objs["module"], objs["datamodule"]
    if objs["loggers"]:
        log_hyperparameters(objs)
    if is_run_writer():
        log.info("run settings\n%s", run_header(cfg, trainer, module, cfg.paths.get("output_dir")))
    if cfg.get("train", True) and isinstance(dm, RecordDataModule):  # before the first (pre-fit) validation
        dm.check_size(trainer.world_size)
    metrics: dict[str, float] = {}
    task_rows = task_records_for(tasks, objs["tokenizer"])
    ckpt = cfg.get("ckpt_path")
    if ckpt:  # "last": the newest readable checkpoint of this run folder; nothing there is an error
        cb = trainer.checkpoint_callback
        ckpt = resolve_ckpt_path(
            ckpt, cb.dirpath if cb is not None and cb.dirpath else Path(cfg.paths.output_dir) / "checkpoints"
        )
    if not cfg.get("train", True):  # evaluation-only job (e.g. one point of a threshold sweep)
        for k, v in trainer.validate(module, datamodule=dm, ckpt_path=ckpt, verbose=False)[0].items():
            metrics[k] = float(v)
    elif cfg.get("validate_before_fit") and not ckpt:
        # the metric's starting point, logged at step 0 (e.g. held-out preference accuracy)
        for k, v in trainer.validate(module, datamodule=dm, verbose=False)[0].items():
            metrics[f"init/{k}"] = float(v)
    if cfg.get("train", True):
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
        save_final_checkpoint(trainer)
    metrics.update(scalar_metrics(trainer))
    if task_rows and trainer.is_global_zero and not trainer.interrupted:  # the final policy on each benchmark
        metrics.update(evaluate_tasks(cfg, module.policy, objs["tokenizer"], task_rows))
    name = cfg.get("optimized_metric")
    if name and name not in metrics and cfg.get("train", True) and not trainer.interrupted:
        # e.g. max_steps reached before the first val_check_interval: validate the final weights once
        # rather than fail after training (sweepers and checkpoint selection need the value)
        warn = log.warning if trainer.is_global_zero else log.debug
        warn(
            "optimized_metric=%r was never logged during training (trainer.val_check_interval=%s, "
            "global_step=%d): validating the final model once",
            name,
            cfg.trainer.get("val_check_interval"),
            trainer.global_step,
        )
        trainer.validate(module, datamodule=dm, verbose=False)
        metrics.update(scalar_metrics(trainer))
    if cfg.get("test"):
        trainer.test(module, datamodule=dm, ckpt_path="best" if trainer.checkpoint_callback else None)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    if cfg.get("export"):  # every rank: collective under FSDP2
        out = export_policy(module, objs["tokenizer"], Path(cfg.export_dir), is_global_zero=trainer.is_global_zero)
        if out:
            log.info("exported policy to %s", out)
    if trainer.is_global_zero:  # one summary per job, not one per rank
        for k in sorted(metrics):
            if k.startswith(("init/", "val/")):
                log.info("%-40s %.4f", k, metrics[k])
    if trainer.is_global_zero and cfg.paths.get("output_dir"):
        write_run_summary(cfg.paths.output_dir, metrics, task_name=cfg.get("task_name"))
    if name and name not in metrics:
        raise KeyError(f"optimized_metric={name!r} was not logged; available: {', '.join(sorted(metrics))}")
    return metrics, (metrics[name] if name else None)


def eval_tasks_of(cfg: DictConfig) -> dict[str, DictConfig]:
    """The run's ``eval_tasks`` (null entries dropped); refused under sharded strategies before anything loads."""
    tasks = {k: v for k, v in (cfg.get("eval_tasks") or {}).items() if v is not None}
    strategy = str(cfg.trainer.get("strategy", ""))
    if tasks and ("fsdp" in strategy or "deepspeed" in strategy):
        raise ValueError(
            f"eval_tasks scores the trained policy on rank 0, which needs unsharded weights (trainer.strategy="
            f"{strategy}); set eval_tasks=null and score the exported policy with eval.py task=..."
        )
    return tasks


def task_records_for(tasks: dict[str, DictConfig], tokenizer) -> dict[str, list]:
    """The records of ``eval_tasks_of(cfg)``, read and checked before training (a wrong path fails now, not after
    fit)."""
    from src.eval import task_records

    return {name: task_records(task, tokenizer) for name, task in tasks.items()}


def evaluate_tasks(cfg: DictConfig, policy, tokenizer, task_rows: dict[str, list]) -> dict[str, float]:
    """After fit, the trained policy scored on each ``eval_tasks.<name>`` exactly as ``eval.py task=<name>``
    scores a model (``eval/<task>/...`` metrics; completions under ``<run>/eval/<name>/``)."""
    from src.eval import score_task

    metrics: dict[str, float] = {}
    for name, rows in task_rows.items():
        out = Path(cfg.paths.output_dir) / "eval" / name
        metrics.update(
            score_task(policy, tokenizer, cfg.eval_tasks[name], out_dir=out, seed=int(cfg.seed or 0), records=rows)
        )
    return metrics


def scalar_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}


def save_final_checkpoint(trainer: L.Trainer) -> None:
    """``last.ckpt`` at the final step even when the run stops between checkpoint intervals (resume /
    extend a finished run). Collective: every rank calls ``save_checkpoint``; rank 0 writes."""
    cb = trainer.checkpoint_callback
    if cb is None or not getattr(cb, "save_last", False) or not cb.dirpath or trainer.interrupted:
        return
    last = Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
    saved_step = getattr(cb, "_last_global_step_saved", -1)
    if saved_step != trainer.global_step or not last.exists():
        trainer.save_checkpoint(last)


def finish_loggers() -> None:
    """Close W&B even after a crash, so one failed sweep job does not poison the next (LHT)."""
    if "wandb" in os.sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()
