"""DiFFPO: RL for masked-diffusion LMs with a jointly trained threshold controller.

Paper: DiFFPO ("Training Diffusion LLMs to Reason Fast and Furious via RL", arXiv 2510.02212);
what the method is and where we differ: ``docs/diffpo.md``.

Per step (manual optimisation, ``inner_updates`` PPO epochs per rollout batch):
1. the controller reads the prompt's hidden states and samples a confidence threshold per
   rollout (or a fixed ``threshold`` when the controller is off);
2. ``group_size`` rollouts per prompt with the masked-diffusion sampler (exact NFE count, the
   decoding trajectory and behaviour log-probs recorded);
3. verifiable rewards -> group-relative advantages for the model; ``reward - nfe_coef * NFE /
   gen_length`` -> group-relative advantages for the controller (accuracy vs speed);
4. surrogate likelihood of each completion with ``num_stages`` forward passes (1: one-step, all
   of the completion masked; 2: two-stage; ``S``: finer) under the current parameters, a PPO
   ratio against the same surrogate at rollout time, an importance weight surrogate/behaviour
   (truncated, ``is_truncate``) correcting for the surrogate's mismatch with the sampler, optional
   k3 KL to a frozen reference;
5. REINFORCE for the controller (its own parameter group, ``controller_lr``).

Simplified: the controller's hidden states are detached (it does not shape the LM); the IS weight
is per token and detached (off-policy correction, not differentiated).

Launch: ``python train.py experiment=diffpo_arith`` (after ``experiment=diffpo_arith_sft``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanMetric
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.datamodules.prompt import PromptDataModule
from src.losses import (
    REDUCE_MODES,
    LossOutput,
    aggregate,
    clipped_surrogate,
    group_advantages,
    importance_ratio,
    kl_penalty,
)
from src.losses.diffusion import (
    CUT_MODES,
    cut_assignment,
    draw_cut,
    stage_assignment,
    staged_token_logps,
    trajectory_assignment,
)
from src.models.diffusion_sampler import DiffusionRollout, KnobFn, MaskedDiffusionSampler, masked_lm_logits
from src.models.threshold_controller import ThresholdController
from src.modules.base import PostTrainModule, freeze, plain
from src.modules.rl_common import score_texts


def staged_logps(
    model: PreTrainedModel, ro: DiffusionRollout, assign: Tensor, *, mask_id: int, max_rows: int | None = None
) -> Tensor:
    """``(N, L)`` surrogate token log-probs: each token scored in the state at the start of its stage.

    ``assign`` ``(N, L)``: stage per token over *all* completion positions (the stage-``k`` state reveals
    the tokens of stages ``< k``, which must be the rollout's real state, so post-EOS tokens are not
    special-cased here; the loss masks them). The ``S`` stage states run as one batched forward of
    ``S * N`` rows (in chunks of ``max_rows`` when set), not ``S`` forwards one after another."""
    comp, P, N = ro.completion_ids, ro.prompt_len, ro.completion_ids.shape[0]
    S = int(assign.max()) + 1 if assign.numel() else 1
    states = torch.cat([torch.where(assign < k, comp, torch.full_like(comp, mask_id)) for k in range(S)], 0)
    x = torch.cat([ro.sequences[:, :P].repeat(S, 1), states], 1)
    attn, target = ro.attention_mask.repeat(S, 1), comp.repeat(S, 1)
    step = max_rows or x.shape[0]
    out = []
    for i in range(0, x.shape[0], step):
        logits = masked_lm_logits(model, x[i : i + step], attn[i : i + step], positions=slice(P, None)).float()
        logits[..., mask_id] = float("-inf")
        out.append(torch.log_softmax(logits, -1).gather(-1, target[i : i + step, :, None]).squeeze(-1))
    return staged_token_logps(torch.cat(out, 0).view(S, N, -1), assign)


class DiFFPOModule(PostTrainModule):
    data_type = PromptDataModule
    frozen_attrs = ("ref",)

    def __init__(
        self,
        *,
        model: Callable[[PreTrainedTokenizerBase], PreTrainedModel],
        tokenizer: PreTrainedTokenizerBase,
        optimizer: Callable[..., torch.optim.Optimizer],
        reward: Callable[[str, str], float],
        scheduler: Callable[..., Any] | None = None,
        sampler: dict[str, Any] | None = None,
        controller: dict[str, Any] | None = None,
        threshold: float = 0.9,
        train_model: bool = True,
        train_controller: bool = True,
        controller_lr: float = 1e-2,
        group_size: int = 4,
        nfe_coef: float = 0.5,
        num_stages: int = 2,
        cut: str = "uniform",
        inner_updates: int = 2,
        clip_eps: float = 0.2,
        is_truncate: float | None = 2.0,
        kl_coef: float = 0.0,
        kl_kind: str = "k3",
        reduce: str = "seq_mean_token_mean",
        score_max_rows: int | None = None,
        eval_thresholds: list[float] | None = None,
        eval_sampler: dict[str, Any] | None = None,
        gradient_clip: float = 1.0,
        on_non_finite: str = "skip",
        monitor: str | None = None,
        rng: str = "global",
    ) -> None:
        super().__init__(
            optimizer=optimizer, scheduler=scheduler, on_non_finite=on_non_finite, monitor=monitor, rng=rng
        )
        sampler, controller, eval_thresholds = plain(sampler) or {}, plain(controller), plain(eval_thresholds)
        eval_sampler = plain(eval_sampler) or {}
        self.save_hyperparameters(ignore=["model", "tokenizer", "optimizer", "scheduler", "reward"])
        if not (train_model or train_controller):
            raise ValueError("module.train_model and module.train_controller are both false: nothing to train")
        if train_controller and controller is None:
            raise ValueError("module.train_controller=true needs a module.controller config")
        if group_size < 2:
            raise ValueError(f"module.group_size must be >= 2 for group-relative advantages, got {group_size}")
        if num_stages < 1 or inner_updates < 1:
            raise ValueError("module.num_stages and module.inner_updates must be >= 1")
        if cut not in (*CUT_MODES, "exact"):
            raise ValueError(f"module.cut={cut!r}; valid: {', '.join((*CUT_MODES, 'exact'))}")
        if cut == "uniform" and num_stages > 2:
            raise ValueError(
                "module.cut=uniform draws one cut (num_stages=2); num_stages>2 needs cut=midpoint (even split)"
            )
        if reduce not in REDUCE_MODES:
            raise ValueError(f"module.reduce={reduce!r}; valid: {', '.join(REDUCE_MODES)}")
        self.automatic_optimization = False
        self.model_factory, self.tokenizer, self.reward_fn = model, tokenizer, reward
        self.sampler = MaskedDiffusionSampler(tokenizer, **{"mode": "threshold", "temperature": 1.0, **sampler})
        # evaluation decodes greedily with the training sampler, unless eval_sampler overrides it (e.g. d1's
        # protocol: low_confidence with steps = length / 2, at another gen_length)
        self.eval_sampler = MaskedDiffusionSampler(
            tokenizer, **{"mode": "threshold", **sampler, "temperature": 0.0, **eval_sampler}
        )
        if self.sampler.mode == "low_confidence" and controller is not None:
            raise ValueError(
                "sampler.mode=low_confidence has no per-row knob for the controller to pick: use "
                "mode=threshold or entropy_bounded, or module.controller=null"
            )
        self.mask_id = self.sampler.mask_id
        # d1's low-confidence evaluation has a fixed schedule: no knob grid, no controller point
        self.eval_knobless = self.eval_sampler.mode == "low_confidence"
        self.controller_cfg = controller
        self.eval_thresholds = list(eval_thresholds or [0.5, 0.7, 0.9, 1.0])
        knobs = [*self.eval_thresholds, threshold, *((controller or {}).get("thresholds") or [])]
        if self.sampler.mode == "threshold" and any(not 0.0 <= t <= 1.0 for t in knobs):
            raise ValueError(f"sampler.mode=threshold takes confidence thresholds in [0, 1], got {knobs}")
        if self.sampler.mode == "entropy_bounded" and any(t < 0 for t in knobs):
            raise ValueError(f"sampler.mode=entropy_bounded takes entropy budgets gamma >= 0, got {knobs}")
        self.policy: PreTrainedModel | None = None
        self.controller: ThresholdController | None = None
        self.ref: PreTrainedModel | None = None
        self.val_points = {t: (MeanMetric(), MeanMetric()) for t in self.eval_thresholds}
        self.val_ctrl = (MeanMetric(), MeanMetric(), MeanMetric())  # acc, nfe, threshold
        for i, (a, n) in enumerate(self.val_points.values()):  # register so they move with the module
            self.add_module(f"_val_acc_{i}", a)
            self.add_module(f"_val_nfe_{i}", n)
        for i, m in enumerate(self.val_ctrl):
            self.add_module(f"_val_ctrl_{i}", m)

    # ---- models -------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.policy is not None:
            return
        self.policy = self.model_factory(self.tokenizer).train()  # from_pretrained returns eval mode
        if self.controller_cfg is not None:
            self.controller = ThresholdController(self.policy.config.hidden_size, **self.controller_cfg)
        if not self.hparams.train_model:
            for p in self.policy.parameters():
                p.requires_grad_(False)
        if self.hparams.kl_coef > 0:
            import copy

            self.ref = freeze(copy.deepcopy(self.policy))
        self.shard(self.policy)  # after the reference copy (which stays whole on every rank)
        if self.controller is not None:
            self.shard(self.controller)  # its gradients must be reduced across ranks too

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
        """The sampler's per-row knob: the fixed ``threshold``, or a callable the sampler evaluates on its
        *first decoding forward* (so the controller's features cost no extra NFE). ``record`` receives
        the drawn grid indices and their log-probs (the controller's old policy for the PPO ratio)."""
        if self.controller is None:
            return self.hparams.threshold

        def pick(hidden_states: tuple[Tensor, ...], prompt_mask: Tensor) -> tuple[Tensor, Tensor]:
            with torch.no_grad():
                feats = self.controller.featurize(hidden_states)
                value, idx, logp = self.controller.sample(feats, prompt_mask, greedy=greedy, keys=keys)
            if record is not None:
                record.update(idx=idx, logp=logp)
            return value, feats

        return pick

    def assignment(self, ro: DiffusionRollout, draw: int, keys: Tensor | None) -> Tensor:
        """Stage of every completion token for one inner update: one-step (``num_stages=1``), the
        two-stage cut (``cut=uniform``: tau ~ U{0..NFE-1} per row, redrawn per update; ``midpoint``),
        an even ``num_stages`` split, or the exact trajectory (``cut=exact``)."""
        hp, full = self.hparams, torch.ones_like(ro.completion_ids)
        if hp.cut == "exact":
            return trajectory_assignment(ro.decode_step, full)
        if hp.num_stages == 1:
            return torch.zeros_like(ro.decode_step)
        if hp.num_stages == 2:
            return cut_assignment(ro.decode_step, full, draw_cut(ro.nfe, mode=hp.cut, keys=keys, counter=draw))
        return stage_assignment(ro.decode_step, full, num_stages=hp.num_stages, num_steps=ro.nfe)

    # ---- training -----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        hp, G = self.hparams, self.hparams.group_size
        ids, pmask = batch["prompt_ids"].repeat_interleave(G, 0), batch["prompt_mask"].repeat_interleave(G, 0)
        keys = self.rollout_keys(batch["index"], G)
        picked: dict[str, Tensor] = {}
        ro = self.sampler.generate(
            self.policy, ids, pmask, threshold=self.knob(greedy=False, keys=keys, record=picked), keys=keys
        )
        thr = ro.thresholds
        r = score_texts(self.reward_fn, ro.texts, batch["answer"], G, self.device)  # (prompts, G)
        adv = group_advantages(r).flatten()
        # the controller's reward prices NFE (ours: the paper's exact efficiency term is not known)
        speed = r - hp.nfe_coef * ro.nfe.view_as(r).float() / self.sampler.gen_length
        ctrl_adv = group_advantages(speed).flatten()
        # d1: the loss covers the completion up to and including the first EOS
        cmask = ro.completion_mask
        # one surrogate per inner update (a fresh cut each time under cut=uniform, as d1 redraws its
        # prompt masks), with its old log-probs and importance weights cached before any update
        fixed = hp.cut != "uniform" or hp.num_stages != 2
        draws = []
        with torch.no_grad():
            for i in range(1 if fixed else hp.inner_updates):
                assign = self.assignment(ro, i, keys)
                old = staged_logps(self.policy, ro, assign, mask_id=self.mask_id, max_rows=hp.score_max_rows)
                is_w = importance_ratio(old, ro.behaviour_logps, cmask, truncate=hp.is_truncate)
                ref = None
                if self.ref is not None:
                    ref = staged_logps(self.ref, ro, assign, mask_id=self.mask_id, max_rows=hp.score_max_rows)
                draws.append((assign, old, is_w, ref))
        opt = self.optimizers()
        metrics: dict[str, Tensor] = {}
        for i in range(hp.inner_updates):
            assign, old, is_w, ref = draws[0 if fixed else i]
            loss = torch.zeros((), device=self.device)
            if hp.train_model:
                pg = self.policy_loss(ro, assign, old, is_w.loss, adv, ref)
                loss = loss + pg.loss
                metrics.update({f"policy/{k}": v for k, v in pg.metrics.items()})
            if self.controller is not None and hp.train_controller:
                # PPO ratio/clip against the controller's policy at rollout time: later inner updates
                # reuse the same draws, which plain REINFORCE would treat as on-policy
                logits = self.controller(ro.first_hidden, pmask)
                logp = torch.distributions.Categorical(logits=logits).log_prob(picked["idx"])
                c = clipped_surrogate(logp, picked["logp"], ctrl_adv, torch.ones_like(logp), clip_eps_low=hp.clip_eps)
                loss = loss + c.loss
                metrics["controller/loss"] = c.loss.detach()
                metrics["controller/clip_frac"] = c.metrics["clip_frac"]
            loss = self.guard_loss(loss)
            opt.zero_grad()
            self.manual_backward(loss)
            self.clip_gradients(opt, gradient_clip_val=hp.gradient_clip, gradient_clip_algorithm="norm")
            opt.step()
        sch = self.lr_schedulers()
        if sch is not None:
            sch.step()
        metrics.update(
            {
                "loss": loss.detach(),
                "reward/mean": r.mean(),
                "rollout/nfe": ro.nfe.float().mean(),
                "rollout/length": cmask.float().sum(-1).mean(),
                "policy/is_weight_mean": draws[0][2].metrics["is_ratio_mean"],
            }
        )
        if thr is not None:  # low_confidence decoding has no per-row knob
            metrics["controller/threshold_mean"] = thr.mean()
        self.log_metrics("train", metrics, batch_size=len(batch["answer"]))

    def policy_loss(
        self, ro: DiffusionRollout, assign: Tensor, old: Tensor, is_w: Tensor, adv: Tensor, ref: Tensor | None = None
    ) -> LossOutput:
        """The model's objective for one surrogate draw, over the completion up to and including the
        first EOS (``ro.completion_mask``; d1): PPO-clip with the truncated IS weight multiplying the
        advantage (Eq. 12), plus ``kl_coef`` x KL to the reference when given."""
        hp, cmask = self.hparams, ro.completion_mask
        new = staged_logps(self.policy, ro, assign, mask_id=self.mask_id, max_rows=hp.score_max_rows)
        pg = clipped_surrogate(new, old, adv[:, None] * is_w, cmask, clip_eps_low=hp.clip_eps, reduce=hp.reduce)
        loss, metrics = pg.loss, dict(pg.metrics)
        if ref is not None:
            kl = aggregate(kl_penalty(new, ref, kind=hp.kl_kind), cmask, mode=hp.reduce)
            loss = loss + hp.kl_coef * kl
            metrics["kl_ref"] = kl.detach()
        return LossOutput(loss, metrics)

    # ---- evaluation: accuracy-vs-NFE points -----------------------------------------------------
    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        ids, pmask = batch["prompt_ids"], batch["prompt_mask"]
        knobless = self.eval_knobless
        for t, (acc, nfe) in ({} if knobless else self.val_points).items():
            ro = self.eval_sampler.generate(self.policy, ids, pmask, threshold=t)
            acc.update(score_texts(self.reward_fn, ro.texts, batch["answer"], 1, self.device).flatten())
            nfe.update(ro.nfe.float())
        ro = self.eval_sampler.generate(
            self.policy, ids, pmask, threshold=None if knobless else self.knob(greedy=True)
        )
        thr = ro.thresholds
        a, n, th = self.val_ctrl
        a.update(score_texts(self.reward_fn, ro.texts, batch["answer"], 1, self.device).flatten())
        n.update(ro.nfe.float())
        if thr is not None:
            th.update(thr)

    def on_validation_epoch_end(self) -> None:
        # the values come from torchmetrics' compute(), already reduced over ranks (identical everywhere);
        # sync_dist=True is then a no-op mean that also tells Lightning they are rank-synced
        log = functools.partial(self.log, sync_dist=True)
        points = []
        knobless = self.eval_knobless
        for t, (acc, nfe) in ({} if knobless else self.val_points).items():
            a, n = acc.compute(), nfe.compute()
            log(f"val/pareto/acc@{t}", a)
            log(f"val/pareto/nfe@{t}", n)
            points.append({"threshold": t, "accuracy": float(a), "nfe": float(n), "source": "fixed"})
            acc.reset()
            nfe.reset()
        acc_m, nfe_m, th_m = self.val_ctrl
        a, n = acc_m.compute(), nfe_m.compute()
        th = th_m.compute() if th_m.update_count else torch.tensor(float("nan"))
        log("val/accuracy", a)
        log("val/nfe", n)
        if not knobless:
            log("val/controller/threshold_mean", th)
        source = "low_confidence" if knobless else "controller" if self.controller is not None else "fixed-train"
        points.append({"threshold": float(th), "accuracy": float(a), "nfe": float(n), "source": source})
        for m in self.val_ctrl:
            m.reset()
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            write_pareto(
                points, Path(self.trainer.default_root_dir), step=self.global_step, loggers=self.trainer.loggers
            )


def write_pareto(points: list[dict[str, Any]], out_dir: Path, *, step: int, loggers=()) -> Path:
    """Append the accuracy-vs-NFE points to ``pareto.jsonl``, plot ``pareto_step{N}.png``, log a W&B table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "pareto.jsonl").open("a") as f:
        for p in points:
            f.write(json.dumps({"step": step, **p}) + "\n")
    from src.pareto import Point, mark_frontier, plot_frontier

    pts = [
        Point(
            x=p["nfe"],
            y=p["accuracy"],
            series="fixed threshold" if p["source"] == "fixed" else p["source"],
            label=f"{p['threshold']:.2g}",
        )
        for p in points
    ]
    path = plot_frontier(
        mark_frontier(pts, x_mode="min", y_mode="max"),
        out_dir / f"pareto_step{step:06d}.png",
        x="mean NFE per completion",
        y="accuracy",
        title=f"accuracy vs NFE (step {step})",
        styles={"controller": "r*", "fixed-train": "r*"},
    )
    from lightning.pytorch.loggers import WandbLogger

    for lg in loggers:
        if isinstance(lg, WandbLogger):
            cols = ["step", "threshold", "accuracy", "nfe", "source"]
            lg.log_table(key="val/pareto", columns=cols, data=[[step, *(p[c] for c in cols[1:])] for p in points])
    return path
