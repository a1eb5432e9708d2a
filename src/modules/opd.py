"""OPD / OPD+: on-policy distillation with any f-divergence (stop-gradient baseline vs unbiased).

Paper: "Rethinking the Advantage Design for On-Policy Distillation" (OPD+, arXiv 2606.01039).
Derivation and exact-enumeration proof: ``src/losses/distillation.py`` and its tests.

Each step: (1) the student samples ``n`` completions per prompt under ``no_grad`` (HF ``generate``
with KV cache, or another rollout backend); (2) the frozen teacher scores the student's tokens;
(3) ``opd_loss`` turns per-token log-ratios into OPD or OPD+ advantages for the chosen f and
returns the score-function surrogate; (4) optionally a verifiable task reward is mixed in as a
group-centred advantage (``reward_coef``).

What we changed / chose: the paper's per-token immediate advantage is the default
(``discount=0, center=False``); ``discount=1`` adds the divergence-to-go (exact for the full
objective, our extension); token level by default (``level=sequence`` available); rollouts must be
untempered (T = 1, top-p = 1) because the estimators are expectations under the student; the task
reward enters as ``-coef * (r - mean_group(r))`` on every completion token (we minimise); the
teacher must share the student's tokenizer (checked).

Launch: ``python train.py experiment=opd_arith`` (after ``experiment=opd_arith_teacher``),
``python train.py experiment=opd_arith module.divergence=js module.estimator=opd``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanMetric
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.datamodules.prompt import PromptDataModule
from src.losses import check_divergence, opd_loss
from src.losses.distillation import ESTIMATORS, LEVELS, distillation_advantages
from src.modules.base import PostTrainModule, freeze, plain
from src.modules.metrics import PassAtK
from src.modules.rl_common import RolloutEval, score_texts
from src.rollout.hf import completion_logps, greedy_generate, make_backend
from src.rollout.types import RolloutEngine, ToolRollout, tool_metrics

log = logging.getLogger(__name__)

ROLLOUT_KEYS = ("backend", "n", "max_new_tokens", "temperature", "top_p")


def check_same_tokenizer(
    student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase | None, teacher_model: PreTrainedModel
) -> None:
    """Distillation on sampled tokens needs identical token ids; fail loudly otherwise."""
    if teacher is not None and teacher.get_vocab() != student.get_vocab():
        diff = len(set(teacher.get_vocab().items()) ^ set(student.get_vocab().items()))
        raise ValueError(
            f"teacher and student tokenizers differ ({diff} differing (token, id) entries); OPD scores the "
            "student's token ids with the teacher, so both must use the same tokenizer"
        )
    n_emb = teacher_model.get_input_embeddings().num_embeddings
    if n_emb < len(student):
        raise ValueError(f"teacher vocabulary ({n_emb}) is smaller than the student tokenizer ({len(student)})")


class OPDModule(PostTrainModule):
    """On-policy distillation.

    Args:
        model: student factory ``model(tokenizer)``; teacher: teacher factory (frozen).
        teacher_tokenizer: optional tokenizer of the teacher, compared with the student's.
        estimator: ``opd | opd_plus``; divergence: any of ``src.losses.DIVERGENCES``; level:
            ``token | sequence``; alpha / js_weight: divergence hyperparameters.
        discount / center / max_abs_log_ratio: see ``src.losses.distillation``; ``0 / False / None``
            is the paper's estimator, ``discount=1`` the exact gradient of the full objective.
        rollout: ``{backend, n, max_new_tokens, temperature, top_p}``; ``backend``: ``hf`` | ``vllm`` | a
            factory taking the tokenizer (``src.rollout.hf.make_backend``).
        reward: optional ``reward(completion, answer) -> float``; ``reward_coef`` mixes it in.
        eval: ``{k, n, temperature, max_new_tokens}`` for held-out pass@1 / pass@k.
        report_divergences: extra divergences estimated on held-out prompts (the trained one and
            reverse KL always are), e.g. to compare runs trained with different f on every f.
        fused_logprobs: score completions with the LM head applied only to completion tokens, chunk
            by chunk (``src.models.scoring``); ``false``: full logits.
    """

    data_type = PromptDataModule

    frozen_attrs = ("teacher",)

    def __init__(
        self,
        *,
        model: Callable[[PreTrainedTokenizerBase], PreTrainedModel],
        teacher: Callable[[PreTrainedTokenizerBase], PreTrainedModel],
        tokenizer: PreTrainedTokenizerBase,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        teacher_tokenizer: PreTrainedTokenizerBase | None = None,
        estimator: str = "opd_plus",
        divergence: str = "reverse_kl",
        level: str = "token",
        alpha: float = 0.5,
        js_weight: float = 0.5,
        discount: float = 0.0,
        center: bool = False,
        max_abs_log_ratio: float | None = None,
        rollout: dict[str, Any] | None = None,
        reward: Callable[[str, str], float] | None = None,
        reward_coef: float = 0.0,
        max_abs_advantage: float | None = None,
        reduce: str = "seq_mean_token_sum",
        eval: dict[str, Any] | None = None,
        logprob_chunk: int = 128,
        on_non_finite: str = "skip",
        max_non_finite_fraction: float = 0.5,
        monitor: str | None = None,
        rng: str = "global",
        fused_logprobs: bool = True,
        report_divergences: list[str] | None = None,
    ) -> None:
        super().__init__(
            optimizer=optimizer,
            scheduler=scheduler,
            on_non_finite=on_non_finite,
            max_non_finite_fraction=max_non_finite_fraction,
            monitor=monitor,
            rng=rng,
        )
        rollout, eval = dict(plain(rollout) or {}), plain(eval) or {}
        backend = rollout.pop("backend", None)  # a factory object stays out of the checkpoint's hparams
        report_divergences = list(plain(report_divergences) or [])  # plain list: checkpoints load with weights_only
        self.save_hyperparameters(
            ignore=["model", "teacher", "tokenizer", "teacher_tokenizer", "optimizer", "scheduler", "reward"]
        )
        if estimator not in ESTIMATORS:
            raise ValueError(f"module.estimator={estimator!r}; valid: {', '.join(ESTIMATORS)}")
        if level not in LEVELS:
            raise ValueError(f"module.level={level!r}; valid: {', '.join(LEVELS)}")
        check_divergence(divergence, alpha=alpha, js_weight=js_weight)
        if reward_coef and reward is None:
            raise ValueError("module.reward_coef != 0 needs module.reward")
        missing = [k for k in ROLLOUT_KEYS if (rollout | {"backend": backend}).get(k) is None]
        if missing:
            raise ValueError(f"module.rollout needs {', '.join(missing)} (have: {', '.join(rollout) or 'nothing'})")
        self.rollout_cfg = rollout
        if self.rollout_cfg["temperature"] != 1.0 or self.rollout_cfg["top_p"] != 1.0:
            # the estimators are expectations under the student itself; tempered or truncated samples
            # (scored at T = 1) would make every advantage off-policy without any correction
            raise ValueError(
                f"module.rollout.temperature={self.rollout_cfg['temperature']} and top_p="
                f"{self.rollout_cfg['top_p']}: OPD/OPD+ need samples from the student (both 1.0)"
            )
        if not 0.0 <= discount <= 1.0:
            raise ValueError(f"module.discount={discount} must lie in [0, 1] (0: the paper; 1: exact for the full J)")
        self.loss_kw = {
            "estimator": estimator,
            "divergence": divergence,
            "level": level,
            "alpha": alpha,
            "js_weight": js_weight,
            "discount": discount,
            "center": center,
            "max_abs_log_ratio": max_abs_log_ratio,
        }
        self.model_factory, self.teacher_factory = model, teacher
        self.tokenizer, self.teacher_tokenizer, self.reward_fn = tokenizer, teacher_tokenizer, reward
        self.policy: PreTrainedModel | None = None
        self.teacher: PreTrainedModel | None = None
        self.backend: RolloutEngine = make_backend(backend, tokenizer)
        self.evaluator = RolloutEval(**eval)
        # held-out divergences: the trained one, reverse KL (the common yardstick) and any extra ones
        self.report = list(dict.fromkeys([divergence, "reverse_kl", *report_divergences]))
        for d in self.report:
            check_divergence(d, alpha=alpha, js_weight=js_weight)
        self.val_divs = torch.nn.ModuleDict({d: MeanMetric() for d in self.report})
        self.val_lr = MeanMetric()
        self.val_len = MeanMetric()  # held-out sample length when no reward (the evaluator logs it otherwise)
        # the frozen teacher's greedy held-out pass@1: what distillation can reach on the task (computed at the
        # first validation, then logged as that constant)
        self.teacher_pass1 = PassAtK(1)
        self._teacher_pass1: float | None = None
        self._said_why = False

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        self.policy = self.shard(self.model_factory(self.tokenizer).train())  # from_pretrained: eval mode
        self.teacher = freeze(self.teacher_factory(self.tokenizer))
        check_same_tokenizer(self.tokenizer, self.teacher_tokenizer, self.teacher)

    def _logps(self, model: PreTrainedModel, ro) -> Tensor:
        return completion_logps(model, ro, chunk_size=self.hparams.logprob_chunk, fused=self.hparams.fused_logprobs)

    def _rollout_and_score(self, batch: dict[str, Any], **overrides: Any):
        cfg = {**self.rollout_cfg, **overrides}
        keys = self.rollout_keys(batch["index"], cfg["n"])
        ro = self.backend.generate(self.policy, batch["prompt_ids"], batch["prompt_mask"], **cfg, keys=keys)
        with torch.no_grad():
            t = self._logps(self.teacher, ro)
        return ro, cfg["n"], t

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        ro, n, t_lp = self._rollout_and_score(batch)
        s_lp = self._logps(self.policy, ro)
        mask = ro.action_mask
        extra, metrics = None, {}
        if self.reward_fn is not None:
            r = score_texts(self.reward_fn, ro.texts, batch["answer"], n, self.device)
            metrics["reward/mean"] = r.mean()
            if self.hparams.reward_coef:
                centred = (r - r.mean(-1, keepdim=True)).flatten()
                extra = (-self.hparams.reward_coef * centred)[:, None].expand_as(s_lp)
        out = opd_loss(
            s_lp,
            t_lp,
            mask,
            **self.loss_kw,
            extra_advantages=extra,
            max_abs_advantage=self.hparams.max_abs_advantage,
            reduce=self.hparams.reduce,
            **self.ddp_normaliser(mask, mode=self.hparams.reduce),
        )
        metrics.update({f"distill/{k}": v for k, v in out.metrics.items()})
        metrics["rollout/length"] = mask.sum(-1).float().mean()  # policy tokens (tool responses excluded)
        if isinstance(ro, ToolRollout):
            metrics.update(tool_metrics(ro))
        self.log_metrics("train", {"loss": out.loss.detach(), **metrics}, batch_size=len(batch["answer"]))
        return self.skip_or_loss(out.loss)

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.reward_fn is not None:
            sampled = self.evaluator.run(self, batch, self.backend, self.reward_fn)
            self.evaluator.log(self, "val")
            t_lp = self._logps(self.teacher, sampled)
            if self._teacher_pass1 is None and not self.trainer.sanity_checking:
                greedy = self.backend.generate(
                    self.teacher,
                    batch["prompt_ids"],
                    batch["prompt_mask"],
                    n=1,
                    max_new_tokens=self.evaluator.max_new_tokens,
                    do_sample=False,
                )
                self.teacher_pass1.update(score_texts(self.reward_fn, greedy.texts, batch["answer"], 1, self.device))
        else:
            sampled, _, t_lp = self._rollout_and_score(batch, n=self.evaluator.n)
            self.val_len.update(sampled.action_mask.sum(-1).float())
            self.log("val/rollout/length", self.val_len, on_epoch=True)
        # student-teacher divergences on held-out prompts: per-sequence MC estimates (unbiased)
        s_lp = self._logps(self.policy, sampled)
        m = sampled.action_mask
        kw = {k: self.loss_kw[k] for k in ("level", "alpha", "js_weight")}
        for d in self.report:  # the estimate does not depend on the estimator or on clipping
            _, est = distillation_advantages(s_lp, t_lp, m, divergence=d, **kw)
            self.val_divs[d].update(est)
            self.log(f"val/distill/{d}", self.val_divs[d], on_epoch=True)
        # token-weighted over all held-out tokens (not a mean of batch means): batch- and rank-invariant
        self.val_lr.update((s_lp - t_lp)[m.bool()].float())
        self.log("val/distill/log_ratio", self.val_lr, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        if self.reward_fn is None or self.trainer.sanity_checking:
            return
        if self._teacher_pass1 is None:
            self._teacher_pass1 = float(self.teacher_pass1.compute())  # rank-synced by the metric
            self.teacher_pass1.reset()
        self.log("val/teacher/pass@1", self._teacher_pass1, sync_dist=False)
        student = self.trainer.callback_metrics.get("val/pass@1")
        if not self._said_why and student is not None and self._teacher_pass1 <= float(student) + 0.05:
            # the task metric cannot move through distillation: say so once instead of a silent flat line
            self._said_why = True
            (log.warning if self.trainer.is_global_zero else log.debug)(
                f"the teacher's held-out pass@1 is {self._teacher_pass1:.2f}, the student's {float(student):.2f}: "
                "distillation moves the student toward the teacher, so pass@1 has little room to rise; "
                "val/distill/reverse_kl (student to teacher) is the metric that shows OPD working here. For a "
                "teacher that solves the task start from SFT'd models (experiment=opd_arith)"
            )

    def generate(self, prompts: list[str], *, max_new_tokens: int = 16) -> list[str]:
        return greedy_generate(
            self.policy, self.tokenizer, prompts, max_new_tokens=max_new_tokens, engine=self.backend
        )
