"""DiFFPO: RL for masked-diffusion LMs with a jointly trained decoding-knob controller.

Paper: DiFFPO ("Training Diffusion LLMs to Reason Fast and Furious via RL", arXiv 2510.02212);
what the method is and where we differ: ``docs/diffpo.md``.

The knob is what the sampler's mode reads per row: a confidence threshold (``sampler.mode=threshold``,
Fast-dLLM) or the entropy budget gamma (``sampler.mode=entropy_bounded``, the EB sampler). Per step
(manual optimisation, ``inner_updates`` PPO epochs per rollout batch):

1. the controller reads the prompt's hidden states on the sampler's first decoding forward and
   samples a knob per rollout (or the fixed ``knob`` when the controller is off);
2. ``group_size`` rollouts per prompt (exact NFE count, decoding trajectory, behaviour log-probs);
3. verifiable rewards -> group-relative advantages for the model; ``reward - nfe_coef * NFE /
   gen_length`` -> group-relative advantages for the controller (accuracy vs speed);
4. surrogate likelihood of each completion (``num_stages`` forward passes: 1 is d1's one-step, 2 the
   two-stage cut, more an even split; ``cut=exact`` the trajectory likelihood), old log-probs and the
   truncated importance weight surrogate/behaviour fixed before any update;
5. PPO-clip for the model (advantage times IS weight, Eq. 12; optional k3 KL to a frozen reference)
   and PPO-clip for the controller (its own parameter group, ``controller_lr``).

Simplified: the controller's features are detached (it does not shape the LM); the IS weight is per
token and detached (off-policy correction, not differentiated). The accuracy-vs-NFE grid at fixed
knobs and its artifacts are the :class:`src.callbacks.pareto_eval.ParetoEval` callback
(``module.pareto_eval``), attached through :meth:`configure_callbacks`.

Launch: ``python train.py experiment=diffpo_arith`` (after ``experiment=diffpo_arith_sft``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanMetric
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.datamodules.prompt import PromptDataModule
from src.losses import REDUCE_MODES, LossOutput, aggregate, clipped_surrogate, group_advantages, kl_penalty
from src.losses.diffusion import check_surrogate, surrogate_assignment
from src.models.families import mask_token_id
from src.modules.base import PostTrainModule, freeze, plain
from src.modules.diffpo.controller import KnobController
from src.modules.diffpo.surrogate import SurrogateDraw, staged_logps, surrogate_draws
from src.modules.rl_common import score_texts
from src.rollout.diffusion_sampler import DiffusionRollout, KnobFn, MaskedDiffusionSampler, check_knobs


class DiFFPOModule(PostTrainModule):
    """DiFFPO (and its d1 / one-step special cases).

    Args:
        model: policy factory ``model(tokenizer)`` (a masked-diffusion LM).
        tokenizer: the policy's tokenizer (the mask token comes from the model's family: ``model.mask_token_id``, the
            config's or the tokenizer's).
        optimizer: partial of a torch optimizer.
        reward: ``reward(completion, answer) -> float``: the task's verifier.
        sampler: partial of :class:`MaskedDiffusionSampler` (``_partial_: true``): rollouts.
        eval_sampler: overrides of ``sampler``'s arguments for validation (greedy by default).
        controller: partial of :class:`KnobController` (``hidden_size`` is added), or ``None``.
        pareto_eval: the accuracy-vs-NFE grid callback, or ``None``.
        knob: the fixed knob (threshold or gamma) when ``controller`` is ``None``.
        train_model: update the policy.
        train_controller: update the controller.
        controller_lr: the controller's learning rate (its own parameter group, no weight decay).
        group_size: rollouts per prompt (group-relative advantages need >= 2).
        nfe_coef: price of an NFE in the controller's reward (``NFE / gen_length`` units).
        num_stages: surrogate stages: 1 one-step (d1), 2 two-stage (DiFFPO), more an even split.
        cut: ``uniform`` (the paper's random cut) | ``midpoint`` | ``exact`` (trajectory likelihood).
        inner_updates: PPO epochs per rollout batch.
        clip_eps: PPO clip range (model and controller).
        is_truncate: truncation of the importance weight; ``None``: untruncated.
        importance_weights: correct the surrogate towards the behaviour policy (Eq. 12); false: weight 1 (d1).
        prompt_mask_prob: d1's random prompt masking in the scoring states (a fresh draw per inner update,
            keyed under ``rng=keyed``); 0: the prompt intact.
        kl_coef: weight of the KL to a frozen reference (0: no reference is built).
        kl_kind: ``k1 | k2 | k3`` KL estimator.
        reduce: loss reduction (``src.losses.reduce``).
        score_max_rows: chunk the ``S * N``-row surrogate forward (memory).
        gradient_clip: max gradient norm (manual optimisation clips here).
        scheduler: partial of a learning-rate scheduler, stepped once per optimizer step.
        on_non_finite: ``skip | raise | ignore`` (``PostTrainModule``).
        max_non_finite_fraction: stop once more than this fraction of recent steps were skipped.
        monitor: headline metric.
        rng: ``global | keyed``.
    """

    data_type = PromptDataModule
    frozen_attrs = ("ref",)

    def __init__(
        self,
        *,
        model: Callable[[PreTrainedTokenizerBase], PreTrainedModel],
        tokenizer: PreTrainedTokenizerBase,
        optimizer: Callable[..., torch.optim.Optimizer],
        reward: Callable[[str, str], float],
        sampler: Callable[..., MaskedDiffusionSampler],
        eval_sampler: dict[str, Any] | None,
        controller: Callable[..., KnobController] | None,
        pareto_eval: Any | None,
        knob: float,
        train_model: bool,
        train_controller: bool,
        controller_lr: float,
        group_size: int,
        nfe_coef: float,
        num_stages: int,
        cut: str,
        inner_updates: int,
        clip_eps: float,
        is_truncate: float | None,
        importance_weights: bool,
        prompt_mask_prob: float,
        kl_coef: float,
        kl_kind: str,
        reduce: str,
        score_max_rows: int | None,
        gradient_clip: float,
        scheduler: Callable[..., Any] | None = None,
        on_non_finite: str = "skip",
        max_non_finite_fraction: float = 0.5,
        monitor: str | None = None,
        rng: str = "global",
    ) -> None:
        super().__init__(
            optimizer=optimizer,
            scheduler=scheduler,
            on_non_finite=on_non_finite,
            max_non_finite_fraction=max_non_finite_fraction,
            monitor=monitor,
            rng=rng,
        )
        eval_sampler = plain(eval_sampler) or {}
        self.save_hyperparameters(
            ignore=["model", "tokenizer", "optimizer", "scheduler", "reward", "sampler", "controller", "pareto_eval"]
        )
        if not (train_model or train_controller):
            raise ValueError("module.train_model and module.train_controller are both false: nothing to train")
        if train_controller and controller is None:
            raise ValueError("module.train_controller=true needs a module.controller config")
        if group_size < 2:
            raise ValueError(f"module.group_size must be >= 2 for group-relative advantages, got {group_size}")
        if inner_updates < 1:
            raise ValueError(f"module.inner_updates must be >= 1, got {inner_updates}")
        check_surrogate(num_stages, cut)
        if not 0.0 <= prompt_mask_prob < 1.0:
            raise ValueError(f"module.prompt_mask_prob={prompt_mask_prob} must lie in [0, 1)")
        if reduce not in REDUCE_MODES:
            raise ValueError(f"module.reduce={reduce!r}; valid: {', '.join(REDUCE_MODES)}")
        self.automatic_optimization = False
        self.model_factory, self.tokenizer, self.reward_fn = model, tokenizer, reward
        self.sampler = sampler(tokenizer)
        # evaluation decodes greedily with the training sampler, unless eval_sampler overrides it (e.g. d1's
        # protocol: low_confidence with steps = length / 2, at another gen_length)
        self.eval_sampler = sampler(tokenizer, **{"temperature": 0.0, **eval_sampler})
        if self.sampler.mode == "low_confidence" and controller is not None:
            raise ValueError(
                "sampler.mode=low_confidence has no per-row knob for the controller to pick: use "
                "mode=threshold or entropy_bounded, or module.controller=null"
            )
        grid = list(getattr(controller, "keywords", {}).get("grid") or [])
        check_knobs(self.sampler.mode, [knob, *grid], key="module.knob / module.controller.grid")
        if pareto_eval is not None:
            check_knobs(self.eval_sampler.mode, pareto_eval.knobs, key="module.pareto_eval.knobs")
        # d1's low-confidence evaluation has a fixed schedule: no knob grid, no controller point
        self.eval_knobless = self.eval_sampler.mode == "low_confidence"
        self.controller_factory, self.pareto_eval = controller, pareto_eval
        self.policy: PreTrainedModel | None = None
        self.controller: KnobController | None = None
        self.ref: PreTrainedModel | None = None
        self.val_acc, self.val_nfe, self.val_knob = MeanMetric(), MeanMetric(), MeanMetric()

    # ---- models -------------------------------------------------------------------------------
    @property
    def mask_id(self) -> int:
        """The policy's mask token, as its model family says (:mod:`src.models.families`)."""
        return mask_token_id(self.policy, self.tokenizer)

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        self.policy = self.model_factory(self.tokenizer).train()  # from_pretrained returns eval mode
        if self.controller_factory is not None:
            self.controller = self.controller_factory(self.policy.config.hidden_size)
        if not self.hparams.train_model:
            for p in self.policy.parameters():
                p.requires_grad_(False)
        if self.hparams.kl_coef > 0:
            self.ref = freeze(copy.deepcopy(self.policy))
        self.shard(self.policy)  # after the reference copy (which stays whole on every rank)
        if self.controller is not None:
            self.shard(self.controller)  # its gradients must be reduced across ranks too

    def configure_callbacks(self) -> list[Any]:
        return [self.pareto_eval] if self.pareto_eval is not None else []

    def param_groups(self) -> list[dict[str, Any]]:
        groups = []
        if self.hparams.train_model:
            groups.append({"params": [p for p in self.policy.parameters() if p.requires_grad]})
        if self.controller is not None and self.hparams.train_controller:
            groups.append(
                {"params": list(self.controller.parameters()), "lr": self.hparams.controller_lr, "weight_decay": 0.0}
            )
        return groups

    def knob(
        self, *, greedy: bool, keys: Tensor | None = None, record: dict[str, Tensor] | None = None
    ) -> float | KnobFn:
        """The sampler's per-row knob: the fixed ``knob``, or a callable the sampler evaluates on its
        *first decoding forward* (so the controller's features cost no extra NFE). ``record`` receives
        the drawn grid indices and their log-probs (the controller's old policy for the PPO ratio)."""
        if self.controller is None:
            return self.hparams.knob

        def pick(hidden_states: tuple[Tensor, ...], prompt_mask: Tensor) -> tuple[Tensor, Tensor]:
            with torch.no_grad():
                feats = self.controller.featurize(hidden_states)
                value, idx, logp = self.controller.sample(feats, prompt_mask, greedy=greedy, keys=keys)
            if record is not None:
                record.update(idx=idx, logp=logp)
            return value, feats

        return pick

    # ---- training: the paper's algorithm --------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        hp, G = self.hparams, self.hparams.group_size
        t0 = time.perf_counter()
        # 1-2. G rollouts per prompt; the controller picks each rollout's knob on the first forward
        prompt_mask = batch["prompt_mask"].repeat_interleave(G, 0)
        keys = self.rollout_keys(batch["index"], G)
        picked: dict[str, Tensor] = {}
        knob = self.knob(greedy=False, keys=keys, record=picked)
        ro = self.sampler.generate(
            self.policy, batch["prompt_ids"].repeat_interleave(G, 0), prompt_mask, knob=knob, keys=keys
        )
        # 3. rewards -> group-relative advantages; the controller's reward also prices NFE (ours: the
        # paper's exact efficiency term is not known)
        r = score_texts(self.reward_fn, ro.texts, batch["answer"], G, self.device)  # (prompts, G)
        adv = group_advantages(r).flatten()
        ctrl_adv = group_advantages(r - hp.nfe_coef * ro.nfe.view_as(r).float() / self.sampler.gen_length).flatten()
        # 4. surrogates with their old log-probs and IS weights, fixed before any update
        t1 = time.perf_counter()
        draws = self.surrogate_draws(ro, keys)
        t2 = time.perf_counter()
        # 5. inner PPO epochs (a fresh cut per epoch under cut=uniform, as d1 redraws its prompt masks)
        metrics: dict[str, Tensor] = {}
        for i in range(hp.inner_updates):
            loss = torch.zeros((), device=self.device)
            if hp.train_model:
                pg = self.policy_loss(ro, draws[i % len(draws)], adv)
                loss = loss + pg.loss
                metrics.update({f"policy/{k}": v for k, v in pg.metrics.items()})
            if self.controller is not None and hp.train_controller:
                c = self.controller_loss(ro, prompt_mask, picked, ctrl_adv)
                loss = loss + c.loss
                metrics.update({f"controller/{k}": v for k, v in c.metrics.items()})
            self.manual_update(loss)
        t3 = time.perf_counter()
        metrics.update(
            {
                # wall-clock seconds of the step's parts: what an estimator costs (its forwards are in "score"
                # and "update"; the exact trajectory likelihood runs one state per decoding step)
                "time/rollout_s": torch.tensor(t1 - t0),
                "time/score_s": torch.tensor(t2 - t1),
                "time/update_s": torch.tensor(t3 - t2),
                "loss": loss.detach(),
                "reward/mean": r.mean(),
                "rollout/nfe": ro.nfe.float().mean(),
                "rollout/length": ro.action_mask.float().sum(-1).mean(),
                "policy/is_weight_mean": draws[0].is_w.metrics["is_ratio_mean"],
            }
        )
        if ro.knobs is not None:  # low_confidence decoding has no per-row knob
            metrics["controller/knob_mean"] = ro.knobs.mean()
        self.log_metrics("train", metrics, batch_size=len(batch["answer"]))

    def surrogate_draws(self, ro: DiffusionRollout, keys: Tensor | None) -> list[SurrogateDraw]:
        hp = self.hparams
        return surrogate_draws(
            self.policy,
            self.ref,
            ro,
            num_stages=hp.num_stages,
            cut=hp.cut,
            inner_updates=hp.inner_updates,
            keys=keys,
            mask_id=self.mask_id,
            max_rows=hp.score_max_rows,
            is_truncate=hp.is_truncate,
            importance_weights=hp.importance_weights,
            prompt_mask_prob=hp.prompt_mask_prob,
        )

    def assignment(self, ro: DiffusionRollout, draw: int, keys: Tensor | None) -> Tensor:
        """Stage of every completion token for surrogate draw ``draw`` (``src.losses.diffusion``)."""
        hp = self.hparams
        return surrogate_assignment(
            ro.decode_step, ro.nfe, num_stages=hp.num_stages, cut=hp.cut, keys=keys, counter=draw
        )

    def policy_loss(self, ro: DiffusionRollout, draw: SurrogateDraw, adv: Tensor) -> LossOutput:
        """The model's objective for one surrogate draw, over the completion up to and including the
        first EOS (``ro.action_mask``; d1): PPO-clip with the truncated IS weight multiplying the
        advantage (Eq. 12), plus ``kl_coef`` x KL to the reference when there is one."""
        hp, cmask = self.hparams, ro.action_mask
        new = staged_logps(
            self.policy,
            ro,
            draw.assign,
            mask_id=self.mask_id,
            max_rows=hp.score_max_rows,
            prompt_masked=draw.prompt_masked,
        )
        pg = clipped_surrogate(
            new, draw.old, adv[:, None] * draw.is_w.loss, cmask, clip_eps_low=hp.clip_eps, reduce=hp.reduce
        )
        loss, metrics = pg.loss, dict(pg.metrics)
        if draw.ref is not None:
            kl = aggregate(kl_penalty(new, draw.ref, kind=hp.kl_kind), cmask, mode=hp.reduce)
            loss = loss + hp.kl_coef * kl
            metrics["kl_ref"] = kl.detach()
        return LossOutput(loss, metrics)

    def controller_loss(
        self, ro: DiffusionRollout, prompt_mask: Tensor, picked: dict[str, Tensor], adv: Tensor
    ) -> LossOutput:
        """PPO-clip for the controller against its policy at rollout time (``picked``): later inner
        updates reuse the same draws, which plain REINFORCE would treat as on-policy."""
        logits = self.controller(ro.first_hidden, prompt_mask)
        logp = torch.distributions.Categorical(logits=logits).log_prob(picked["idx"])
        c = clipped_surrogate(logp, picked["logp"], adv, torch.ones_like(logp), clip_eps_low=self.hparams.clip_eps)
        return LossOutput(c.loss, {"loss": c.loss.detach(), "clip_frac": c.metrics["clip_frac"]})

    def manual_update(self, loss: Tensor) -> None:
        opt = self.optimizers()
        loss = self.guard_loss(loss)
        opt.zero_grad()
        self.manual_backward(loss)
        self.clip_gradients(opt, gradient_clip_val=self.hparams.gradient_clip, gradient_clip_algorithm="norm")
        opt.step()
        self.step_scheduler()  # once per optimizer step, as trainer.max_steps counts them

    # ---- evaluation: the module's own decoding (controller or fixed knob) -------------------------
    @property
    def decoding_source(self) -> str:
        """What decides the knob at evaluation: ``controller``, ``fixed-train`` or ``low_confidence``."""
        if self.eval_knobless:
            return "low_confidence"
        return "controller" if self.controller is not None else "fixed-train"

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        knob = None if self.eval_knobless else self.knob(greedy=True)
        ro = self.eval_sampler.generate(self.policy, batch["prompt_ids"], batch["prompt_mask"], knob=knob)
        self.val_acc.update(score_texts(self.reward_fn, ro.texts, batch["answer"], 1, self.device).flatten())
        self.val_nfe.update(ro.nfe.float())
        if ro.knobs is not None:
            self.val_knob.update(ro.knobs)

    def on_validation_epoch_end(self) -> None:
        # torchmetrics' compute() is already reduced over ranks (identical everywhere); sync_dist=True is
        # then a no-op mean that also tells Lightning the values are rank-synced
        self.log("val/accuracy", self.val_acc.compute(), sync_dist=True)
        self.log("val/nfe", self.val_nfe.compute(), sync_dist=True)
        if not self.eval_knobless:
            knob = self.val_knob.compute() if self.val_knob.update_count else torch.tensor(float("nan"))
            self.log("val/controller/knob_mean", knob, sync_dist=True)
        for m in (self.val_acc, self.val_nfe, self.val_knob):
            m.reset()
