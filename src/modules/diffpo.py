"""DiFFPO: RL for masked-diffusion LMs with a jointly trained threshold controller.

Paper: DiFFPO ("Training Diffusion LLMs to Reason Fast and Furious via RL"); no paper notes were
available in ``../shared/research`` when this was written, so the design follows the issue text.

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

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanMetric
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.datamodules.prompt import PromptDataModule
from src.losses import clipped_surrogate, group_advantages, importance_ratio, kl_penalty, masked_mean
from src.losses.diffusion import stage_assignment, staged_token_logps
from src.models.diffusion_sampler import DiffusionRollout, MaskedDiffusionSampler, masked_lm_logits
from src.models.threshold_controller import ThresholdController
from src.modules.base import PostTrainModule, freeze, plain
from src.modules.rl_common import score_texts


def staged_logps(model: PreTrainedModel, ro: DiffusionRollout, *, num_stages: int, mask_id: int) -> Tensor:
    """``(N, L)`` surrogate token log-probs: each token scored in the state at the start of its stage."""
    comp = ro.completion_ids
    assign = stage_assignment(ro.decode_step, torch.ones_like(comp), num_stages=num_stages, num_steps=ro.nfe)
    P = ro.prompt_len
    per_stage = []
    for k in range(num_stages):
        state = torch.where(assign < k, comp, torch.full_like(comp, mask_id))
        x = torch.cat([ro.sequences[:, :P], state], 1)
        logits = masked_lm_logits(model, x, ro.attention_mask)[:, P:].float()
        logits[..., mask_id] = float("-inf")
        per_stage.append(torch.log_softmax(logits, -1).gather(-1, comp[..., None]).squeeze(-1))
    return staged_token_logps(torch.stack(per_stage), assign)


class DiFFPOModule(PostTrainModule):
    data_type = PromptDataModule
    frozen_attrs = ("ref",)

    def __init__(self, *, model: Callable[[PreTrainedTokenizerBase], PreTrainedModel], tokenizer: PreTrainedTokenizerBase,
                 optimizer: Callable[..., torch.optim.Optimizer], reward: Callable[[str, str], float],
                 scheduler: Callable[..., Any] | None = None, sampler: dict[str, Any] | None = None,
                 controller: dict[str, Any] | None = None, threshold: float = 0.9, train_model: bool = True,
                 train_controller: bool = True, controller_lr: float = 1e-2, group_size: int = 4, nfe_coef: float = 0.5,
                 num_stages: int = 2, inner_updates: int = 2, clip_eps: float = 0.2, is_truncate: float | None = 2.0,
                 kl_coef: float = 0.0, kl_kind: str = "k3", eval_thresholds: list[float] | None = None,
                 gradient_clip: float = 1.0, on_non_finite: str = "skip", monitor: str | None = None,
                 rng: str = "global") -> None:  # fmt: skip
        super().__init__(
            optimizer=optimizer, scheduler=scheduler, on_non_finite=on_non_finite, monitor=monitor, rng=rng
        )
        sampler, controller, eval_thresholds = plain(sampler) or {}, plain(controller), plain(eval_thresholds)
        self.save_hyperparameters(ignore=["model", "tokenizer", "optimizer", "scheduler", "reward"])
        if not (train_model or train_controller):
            raise ValueError("module.train_model and module.train_controller are both false: nothing to train")
        if train_controller and controller is None:
            raise ValueError("module.train_controller=true needs a module.controller config")
        if group_size < 2:
            raise ValueError(f"module.group_size must be >= 2 for group-relative advantages, got {group_size}")
        if num_stages < 1 or inner_updates < 1:
            raise ValueError("module.num_stages and module.inner_updates must be >= 1")
        self.automatic_optimization = False
        self.model_factory, self.tokenizer, self.reward_fn = model, tokenizer, reward
        self.sampler = MaskedDiffusionSampler(tokenizer, **{"mode": "threshold", "temperature": 1.0, **sampler})
        self.eval_sampler = MaskedDiffusionSampler(tokenizer, **{"mode": "threshold", **sampler, "temperature": 0.0})
        self.controller_cfg = controller
        self.eval_thresholds = list(eval_thresholds or [0.5, 0.7, 0.9, 1.0])
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

    def param_groups(self) -> list[dict[str, Any]]:
        groups = []
        if self.hparams.train_model:
            groups.append({"params": [p for p in self.policy.parameters() if p.requires_grad]})
        if self.controller is not None and self.hparams.train_controller:
            groups.append({"params": list(self.controller.parameters()), "lr": self.hparams.controller_lr,
                           "weight_decay": 0.0})  # fmt: skip
        return groups

    def _prompt_hidden(self, ids: Tensor, mask: Tensor) -> Tensor:
        with torch.no_grad():
            out = self.policy(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        return out.hidden_states[-1]

    def pick_thresholds(self, ids: Tensor, mask: Tensor, *, greedy: bool,
                        keys: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:  # fmt: skip
        """Per-row thresholds from the controller (or the fixed one): ``(thr, idx, hidden)``."""
        if self.controller is None:
            return torch.full((ids.shape[0],), self.hparams.threshold, device=ids.device), None, None
        hidden = self._prompt_hidden(ids, mask)
        with torch.no_grad():
            thr, idx, _ = self.controller.sample(hidden, mask, greedy=greedy, keys=keys)
        return thr, idx, hidden

    # ---- training -----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        hp, G = self.hparams, self.hparams.group_size
        ids, pmask = batch["prompt_ids"].repeat_interleave(G, 0), batch["prompt_mask"].repeat_interleave(G, 0)
        keys = self.rollout_keys(batch["index"], G)
        thr, idx, hidden = self.pick_thresholds(ids, pmask, greedy=False, keys=keys)
        ro = self.sampler.generate(self.policy, ids, pmask, threshold=thr, keys=keys)
        r = score_texts(self.reward_fn, ro.texts, batch["answer"], G, self.device)  # (prompts, G)
        adv = group_advantages(r).flatten()
        speed = r - hp.nfe_coef * ro.nfe.view_as(r).float() / self.sampler.gen_length
        ctrl_adv = group_advantages(speed).flatten()
        mask_id, full = self.tokenizer.mask_token_id, torch.ones_like(ro.completion_ids)
        with torch.no_grad():
            old = staged_logps(self.policy, ro, num_stages=hp.num_stages, mask_id=mask_id)
            is_w = importance_ratio(old, ro.behaviour_logps, full, truncate=hp.is_truncate)
            ref = (
                staged_logps(self.ref, ro, num_stages=hp.num_stages, mask_id=mask_id) if self.ref is not None else None
            )
        opt = self.optimizers()
        metrics: dict[str, Tensor] = {}
        for _ in range(hp.inner_updates):
            loss = torch.zeros((), device=self.device)
            if hp.train_model:
                new = staged_logps(self.policy, ro, num_stages=hp.num_stages, mask_id=mask_id)
                pg = clipped_surrogate(new, old, adv[:, None] * is_w.loss, full, clip_eps_low=hp.clip_eps)
                loss = loss + pg.loss
                metrics.update({f"policy/{k}": v for k, v in pg.metrics.items()})
                if ref is not None:
                    kl = masked_mean(kl_penalty(new, ref, kind=hp.kl_kind), full)
                    loss = loss + hp.kl_coef * kl
                    metrics["policy/kl_ref"] = kl.detach()
            if self.controller is not None and hp.train_controller:
                logits = self.controller(hidden, pmask)
                logp = torch.distributions.Categorical(logits=logits).log_prob(idx)
                c_loss = -(ctrl_adv * logp).mean()
                loss = loss + c_loss
                metrics["controller/loss"] = c_loss.detach()
            loss = self.guard_loss(loss)
            opt.zero_grad()
            self.manual_backward(loss)
            self.clip_gradients(opt, gradient_clip_val=hp.gradient_clip, gradient_clip_algorithm="norm")
            opt.step()
        sch = self.lr_schedulers()
        if sch is not None:
            sch.step()
        metrics.update({"loss": loss.detach(), "reward/mean": r.mean(), "rollout/nfe": ro.nfe.float().mean(),
                        "controller/threshold_mean": thr.mean(), "policy/is_weight_mean": is_w.metrics["is_ratio_mean"]})  # fmt: skip
        self.log_metrics("train", metrics, batch_size=len(batch["answer"]))

    # ---- evaluation: accuracy-vs-NFE points -----------------------------------------------------
    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        ids, pmask = batch["prompt_ids"], batch["prompt_mask"]
        for t, (acc, nfe) in self.val_points.items():
            ro = self.eval_sampler.generate(self.policy, ids, pmask, threshold=t)
            acc.update(score_texts(self.reward_fn, ro.texts, batch["answer"], 1, self.device).flatten())
            nfe.update(ro.nfe.float())
        thr, _, _ = self.pick_thresholds(ids, pmask, greedy=True)
        ro = self.eval_sampler.generate(self.policy, ids, pmask, threshold=thr)
        a, n, th = self.val_ctrl
        a.update(score_texts(self.reward_fn, ro.texts, batch["answer"], 1, self.device).flatten())
        n.update(ro.nfe.float())
        th.update(thr)

    def on_validation_epoch_end(self) -> None:
        points = []
        for t, (acc, nfe) in self.val_points.items():
            a, n = acc.compute(), nfe.compute()
            self.log(f"val/pareto/acc@{t}", a)
            self.log(f"val/pareto/nfe@{t}", n)
            points.append({"threshold": t, "accuracy": float(a), "nfe": float(n), "source": "fixed"})
            acc.reset()
            nfe.reset()
        a, n, th = (m.compute() for m in self.val_ctrl)
        self.log("val/accuracy", a)
        self.log("val/nfe", n)
        self.log("val/controller/threshold_mean", th)
        points.append({"threshold": float(th), "accuracy": float(a), "nfe": float(n),
                       "source": "controller" if self.controller is not None else "fixed-train"})  # fmt: skip
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    fixed = sorted((p for p in points if p["source"] == "fixed"), key=lambda p: p["nfe"])
    ax.plot([p["nfe"] for p in fixed], [p["accuracy"] for p in fixed], "o-", label="fixed threshold")
    for p in fixed:
        ax.annotate(f"{p['threshold']:g}", (p["nfe"], p["accuracy"]), fontsize=7)
    for p in points:
        if p["source"] != "fixed":
            ax.plot([p["nfe"]], [p["accuracy"]], "r*", markersize=12, label=p["source"])
    ax.set_xlabel("mean NFE per completion")
    ax.set_ylabel("accuracy")
    ax.set_title(f"accuracy vs NFE (step {step})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / f"pareto_step{step:06d}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    from lightning.pytorch.loggers import WandbLogger

    for lg in loggers:
        if isinstance(lg, WandbLogger):
            cols = ["step", "threshold", "accuracy", "nfe", "source"]
            lg.log_table(key="val/pareto", columns=cols, data=[[step, *(p[c] for c in cols[1:])] for p in points])
    return path
