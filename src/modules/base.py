"""Helpers every algorithm module uses: model construction, freezing, optimizers, logging.

It deliberately imposes no ``training_step`` control flow: each algorithm keeps
its own short step; this class only removes the boilerplate around it.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

log = logging.getLogger(__name__)

NON_FINITE_ACTIONS = ("skip", "raise", "ignore")
RNG_KINDS = ("global", "keyed")


def plain(x: Any) -> Any:
    """Hydra containers to plain Python (so hparams pickle into checkpoints as builtins)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return OmegaConf.to_container(x, resolve=True) if isinstance(x, (DictConfig, ListConfig)) else x


def _callable_key(fn: Callable) -> tuple:
    """What a reward computes: the function and its bound arguments (two partials of one function are equal)."""
    return (
        getattr(fn, "func", fn),
        tuple(getattr(fn, "args", ())),
        tuple(sorted(getattr(fn, "keywords", {}).items())),
    )


def _callable_name(fn: Callable) -> str:
    f = getattr(fn, "func", fn)
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', repr(f))}"


def check_task_reward(module_reward: Callable | None, task_reward: Callable | None) -> None:
    """The reward belongs to the task: a module scoring with another verifier than its data preset's is an
    error (e.g. ``math_reward`` on Sudoku scores every correct grid 0). No reward on either side is fine."""
    if module_reward is None or task_reward is None or _callable_key(module_reward) == _callable_key(task_reward):
        return
    raise ValueError(
        f"module.reward ({_callable_name(module_reward)}) is not the task's reward data.reward "
        f"({_callable_name(task_reward)}): the reward belongs to the data preset. Remove the module.reward override "
        "(it follows data.reward), or set data.reward to change the task's verifier."
    )


def freeze(module: nn.Module) -> nn.Module:
    """Put ``module`` in eval mode with ``requires_grad=False`` everywhere."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class PostTrainModule(L.LightningModule):
    """Base LightningModule: optimizer/scheduler partials, param groups, NaN guard, metric logging.

    Args:
        optimizer: ``functools.partial`` of a torch optimizer (Hydra ``_partial_: true``).
        scheduler: optional partial of a torch LR scheduler; stepped every optimizer step.
        on_non_finite: what to do when the loss is NaN/inf: ``skip`` the step (zero loss, logged as
            ``train/non_finite_steps``, a warning each time), ``raise`` a clear error, or ``ignore``.
        max_non_finite_fraction: under ``skip``, stop with an error once more than this fraction of the last
            ``non_finite_window`` steps (at least 10 seen) were skipped: a run that mostly skips is broken.
        monitor: name of the headline metric (used for checkpoints and sweeps).
    """

    #: DataModule class this module consumes (checked in ``setup`` with a clear message)
    data_type: type | None = None

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.data_type is not None and dm is not None and not isinstance(dm, self.data_type):
            raise TypeError(
                f"{type(self).__name__} needs a {self.data_type.__name__} (data=...), got {type(dm).__name__}; "
                "preference modules take preference pairs, rollout modules take prompts with answers"
            )
        check_task_reward(getattr(self, "reward_fn", None), getattr(dm, "reward", None))

    def __init__(
        self,
        *,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        on_non_finite: str = "skip",
        monitor: str | None = None,
        rng: str = "global",
        max_non_finite_fraction: float = 0.5,
        non_finite_window: int = 50,
    ) -> None:
        super().__init__()
        if not 0.0 <= max_non_finite_fraction <= 1.0 or non_finite_window < 1:
            raise ValueError("module.max_non_finite_fraction must lie in [0, 1] and non_finite_window be >= 1")
        self.max_non_finite_fraction = max_non_finite_fraction
        self.recent_non_finite: collections.deque[bool] = collections.deque(maxlen=non_finite_window)
        if rng not in RNG_KINDS:
            raise ValueError(f"module.rng={rng!r}; valid: {', '.join(RNG_KINDS)}")
        self.rng = rng
        self.monitor = monitor  # the module's headline metric (configs: optimized_metric: ${module.monitor})
        if on_non_finite not in NON_FINITE_ACTIONS:
            raise ValueError(f"on_non_finite={on_non_finite!r}; valid: {', '.join(NON_FINITE_ACTIONS)}")
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.on_non_finite = on_non_finite
        self.non_finite_steps = 0
        self._rng_to_restore: list[dict[str, Any]] | None = None  # per-rank RNG states from a checkpoint

    # ---- sharding -----------------------------------------------------------------------------
    def shard(self, model: nn.Module) -> nn.Module:
        """FSDP2-shard ``model`` when the trainer runs Lightning's ``ModelParallelStrategy``
        (``trainer=fsdp2``: it gives the module a device mesh before ``configure_model``); a no-op
        otherwise. Call it after any frozen copy (a reference) has been taken."""
        if self.device_mesh is None:
            return model
        from src.utils.fsdp import shard_model

        return shard_model(model, self.device_mesh["data_parallel"])

    # ---- optimisation -------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameter groups; modules with extra heads override this (own lr/wd)."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError(f"{type(self).__name__} has no trainable parameters")
        return [{"params": params}]

    def configure_optimizers(self):
        if self.device_mesh is not None:
            from torch.distributed.tensor import DTensor

            loose = [n for n, p in self.named_parameters() if p.requires_grad and not isinstance(p, DTensor)]
            if loose:  # under FSDP2 nothing else reduces their gradients: ranks would silently diverge
                raise RuntimeError(
                    f"trainable parameters outside any FSDP2 unit (call self.shard on them in "
                    f"configure_model): {loose[:5]}"
                )
        opt = self.optimizer_factory(params=self.param_groups())
        if self.scheduler_factory is None:
            return opt
        sched = self.scheduler_factory(optimizer=opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """The step, then the gradients freed at once. Lightning zeroes them inside the *next* step's closure, after
        that step's forward, so without this they stay allocated (one fp32 copy of the trainable weights) through the
        next rollout, teacher / reference pass and forward. Called at accumulation boundaries only, so accumulated
        gradients are untouched; manual-optimisation modules zero their own."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure=optimizer_closure)
        optimizer.zero_grad(set_to_none=True)

    def step_scheduler(self) -> None:
        """Manual optimisation: step the learning-rate schedule once per optimizer step (automatic
        optimisation steps it through ``configure_optimizers``' ``interval: step``)."""
        sch = self.lr_schedulers()
        if sch is not None:
            sch.step()

    def guard_loss(self, loss: Tensor) -> Tensor:
        """Apply the non-finite policy. ``skip`` returns a zero loss with exact zero gradients (no
        update from this batch; DDP stays in sync because every rank still runs backward)."""
        if self.on_non_finite == "ignore" or bool(torch.isfinite(loss)):
            self.recent_non_finite.append(False)
            return loss
        self.non_finite_steps += 1
        self.recent_non_finite.append(True)
        if self.on_non_finite == "raise":
            raise FloatingPointError(
                f"non-finite loss ({loss.detach().item()}) at global step {self.global_step}; set "
                "module.on_non_finite=skip to skip such steps, lower the lr, or check the data"
            )
        self.log("train/non_finite_steps", float(self.non_finite_steps), on_step=True, reduce_fx="max")
        recent = self.recent_non_finite
        skipped = sum(recent)
        log.warning(
            "non-finite loss (%s) at global step %d: step skipped (%d so far, %d of the last %d)",
            loss.detach().item(),
            self.global_step,
            self.non_finite_steps,
            skipped,
            len(recent),
        )
        # a zero built from the parameters, *not* from the NaN graph (0 * NaN-gradient is NaN):
        # every trainable parameter gets an exact zero gradient, so DDP's all-reduce still matches.
        # (Adam's momentum still moves the weights a little on such a step; training_step callers on
        # one device may return None instead to skip the optimizer step entirely: see skip_or_loss.)
        return sum((p.sum() * 0.0 for p in self.parameters() if p.requires_grad), torch.zeros((), device=loss.device))

    def skip_or_loss(self, loss: Tensor) -> Tensor | None:
        """For automatic optimisation: ``None`` (Lightning skips the optimizer step) when the loss
        is non-finite under ``skip`` on a single process; otherwise :meth:`guard_loss`."""
        guarded = self.guard_loss(loss)
        if guarded is not loss and self.on_non_finite == "skip" and self.trainer.world_size == 1:
            return None
        return guarded

    def ddp_normaliser(self, mask: Tensor, *, mode: str) -> dict[str, Any]:
        """``{num_items, loss_scale}`` for :func:`src.losses.reduce.aggregate` under DDP: the item count
        is summed over ranks and the loss scaled by the world size (DDP averages gradients), so a
        token-mean over ranks with unequal token counts equals the single-process loss (tested).
        One process: ``{}`` (the local count is the global one). Gradient accumulation keeps
        per-micro-batch normalisers (the next micro-batches are not known yet)."""
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1:
            return {}
        from src.losses.reduce import count_items

        total = self.all_gather(count_items(mask, mode=mode).detach().float()).sum()
        return {"num_items": total, "loss_scale": float(world)}

    def rollout_keys(self, index: Tensor, n: int = 1) -> Tensor | None:
        """Per-row keys for ``rng=keyed`` sampling (``None`` under ``rng=global``): rows follow the
        ``repeat_interleave(n)`` layout; the same example at the same step draws the same noise on any
        world size, batch composition or resume (``src.utils.keyed_random``)."""
        if self.rng != "keyed":
            return None
        from src.utils.keyed_random import row_keys

        return row_keys(torch.initial_seed(), int(self.global_step), index.to(self.device), n)

    # ---- checkpoints --------------------------------------------------------------------------
    #: attribute names of frozen models rebuilt from their factories (reference, teacher): their
    #: weights are not written to checkpoints (they never change), and are filled back on load.
    frozen_attrs: tuple[str, ...] = ()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # frozen models (reference, teacher) are rebuilt from their factories on load, so they are
        # left out; except under FSDP2, whose distributed loader needs every key of the module
        if self.device_mesh is None:
            prefixes = tuple(f"{a}." for a in self.frozen_attrs)
            sd = checkpoint.get("state_dict", {})
            for k in [k for k in sd if k.startswith(prefixes)]:
                del sd[k]
        # exact resume: every rank's RNG streams (sampling, masking, dropout) and the fault counter;
        # on_save_checkpoint runs on every rank, the file is written by rank 0
        states = [rng_state()]
        if self._trainer is not None and self.trainer.world_size > 1 and torch.distributed.is_initialized():
            states = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(states, rng_state())
        checkpoint["post_train"] = {
            "rng": states,
            "non_finite_steps": self.non_finite_steps,
            "module_class": _qualname(type(self)),  # which module can load it (checked on load)
            "module_choice": _module_choice(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        sd = checkpoint.setdefault("state_dict", {})
        for attr in self.frozen_attrs:
            mod = getattr(self, attr, None)
            if isinstance(mod, nn.Module):
                sd.update({f"{attr}.{k}": v for k, v in mod.state_dict().items() if f"{attr}.{k}" not in sd})
        extra = checkpoint.get("post_train", {})
        written_by, choice, here = extra.get("module_class"), extra.get("module_choice"), _module_choice()
        if written_by and written_by != _qualname(type(self)):
            # before the weights are loaded: a clear error instead of torch's "Missing key(s) in state_dict"
            named = f"module={choice} ({written_by})" if choice else written_by
            raise ValueError(
                f"this checkpoint was written by {named}, but this run builds {_qualname(type(self))}"
                f"{f' (module={here})' if here else ''}: pass "
                f"{f'module={choice}' if choice else 'the module it was trained with'} and the run's other "
                "settings (its run folder's .hydra/overrides.yaml)"
            )
        if choice and here and choice != here:
            log.warning("checkpoint written under module=%s, loaded under module=%s", choice, here)
        self.non_finite_steps = extra.get("non_finite_steps", 0)
        self._rng_to_restore = extra.get("rng")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # the stop decision is taken on every rank every step (and agreed on: any rank over the limit stops
        # all of them), so a rank that raises never leaves the others waiting in a collective
        recent = self.recent_non_finite
        over = len(recent) >= min(10, recent.maxlen) and sum(recent) / len(recent) > self.max_non_finite_fraction
        if self._trainer is not None and self.trainer.world_size > 1:
            over = self.trainer.strategy.reduce_boolean_decision(over, all=False)
        if over:
            raise FloatingPointError(
                f"{sum(recent)} of the last {len(recent)} steps had a non-finite loss and were skipped (more than "
                f"module.max_non_finite_fraction={self.max_non_finite_fraction}): stopping at global step "
                f"{self.global_step}. Lower the lr, check the data, or set module.on_non_finite=raise to stop at the "
                "first one"
            )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # RNG states are restored here, as late as possible: whatever ran between loading the
        # checkpoint and the first resumed step (dataloader set-up, sanity checks) must not shift them
        states = self._rng_to_restore
        if states:
            rank = self.trainer.global_rank
            if len(states) != self.trainer.world_size:
                rank_zero_warn(
                    f"checkpoint has RNG states for {len(states)} ranks, this run has "
                    f"{self.trainer.world_size}: RNG streams are not resumed exactly"
                )
            else:
                set_rng_state(states[rank])
        self._rng_to_restore = None

    # ---- logging ------------------------------------------------------------------------------
    def log_metrics(self, stage: str, metrics: dict[str, Tensor], *, batch_size: int | None = None, **kw) -> None:
        """Log ``{stage}/{name}`` for every metric (names already carry their ``group/`` part).

        Training metrics are per step and rank-local, except ``train/loss``: it is averaged over
        ranks every step (one scalar all-reduce). Every loss is normalised so that this average is
        the global-batch loss, which equals the single-process value (tested in ``tests/test_ddp.py``)."""
        on_step = stage == "train"
        metrics = dict(metrics)
        if on_step and "loss" in metrics:
            self.log(
                "train/loss",
                metrics.pop("loss").float(),
                on_step=True,
                on_epoch=False,
                sync_dist=True,
                batch_size=batch_size,
                **kw,
            )
        self.log_dict(
            {f"{stage}/{k}": v.float() for k, v in metrics.items()},
            on_step=on_step,
            on_epoch=not on_step,
            sync_dist=not on_step,
            batch_size=batch_size,
            **kw,
        )


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _module_choice() -> str | None:
    """The ``module=`` config choice of the run (its first start's on a resume; None outside Hydra)."""
    from src.utils.run_record import run_choices

    return run_choices().get("module")


def rng_state() -> dict[str, Any]:
    """torch / CUDA / numpy / python RNG states as tensors and plain tuples (``weights_only``-loadable)."""
    import random

    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
