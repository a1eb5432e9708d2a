"""Supervised fine-tuning on prompt/answer pairs: the warm start for teachers and students.

Not one of the three papers: it exists so the OPD+ experiment can make a competent teacher and a
weaker student offline (``experiment=opd_arith_teacher``). Loss: token-mean cross-entropy on the
answer tokens (prompt tokens are masked). Validation: greedy pass@1 / sampled pass@k.

Launch: ``python train.py experiment=opd_arith_teacher``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.datamodules.prompt import PromptDataModule
from src.losses import aggregate
from src.models.scoring import suffix_logps
from src.modules.base import PostTrainModule, plain
from src.modules.rl_common import RolloutEval
from src.rollout.hf import greedy_generate, make_backend
from src.rollout.types import RolloutEngine


def join_prompt_target(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Left-padded prompt + right-padded target: ``(ids, attention_mask, position_ids, P)``."""
    ids = torch.cat([batch["prompt_ids"], batch["target_ids"]], 1)
    attn = torch.cat([batch["prompt_mask"], batch["target_mask"]], 1)
    return ids, attn, (attn.cumsum(-1) - 1).clamp_min(0), batch["prompt_ids"].shape[1]


class SFTModule(PostTrainModule):
    """Supervised fine-tuning.

    Args:
        model: policy factory ``model(tokenizer)``.
        tokenizer: the policy's tokenizer.
        optimizer: partial of a torch optimizer.
        rollout_backend: ``hf`` | ``vllm`` | a factory taking the tokenizer: samples for held-out pass@k.
        eval: ``{k, n, temperature, max_new_tokens}`` of the held-out pass@1 / pass@k (``RolloutEval``).
        scheduler: partial of a learning-rate scheduler, stepped once per optimizer step.
        reward: optional verifier; without one validation logs only ``val/loss``.
        on_non_finite: ``skip | raise | ignore``.
        max_non_finite_fraction: stop once more than this fraction of recent steps were skipped.
        monitor: headline metric.
        rng: ``global | keyed``.
        fused_logprobs: LM head only on answer tokens, chunked (``src.models.scoring``).
    """

    data_type = PromptDataModule

    def __init__(
        self,
        *,
        model: Callable[[PreTrainedTokenizerBase], PreTrainedModel],
        tokenizer: PreTrainedTokenizerBase,
        optimizer: Callable[..., torch.optim.Optimizer],
        rollout_backend: str | Callable[[PreTrainedTokenizerBase], Any],
        eval: dict[str, Any],
        scheduler: Callable[..., Any] | None = None,
        reward: Callable[[str, str], float] | None = None,
        on_non_finite: str = "skip",
        max_non_finite_fraction: float = 0.5,
        monitor: str | None = None,
        rng: str = "global",
        fused_logprobs: bool = True,
    ) -> None:
        super().__init__(
            optimizer=optimizer,
            scheduler=scheduler,
            on_non_finite=on_non_finite,
            max_non_finite_fraction=max_non_finite_fraction,
            monitor=monitor,
            rng=rng,
        )
        eval = plain(eval) or {}
        if reward is None and monitor is not None and "pass@" in monitor:
            raise ValueError(
                f"module.monitor={monitor} needs module.reward (without one, validation logs only val/loss: "
                "use module.monitor=val/loss callbacks.model_checkpoint.mode=min)"
            )
        self.save_hyperparameters(ignore=["model", "tokenizer", "optimizer", "scheduler", "reward", "rollout_backend"])
        self.model_factory, self.tokenizer, self.reward_fn = model, tokenizer, reward
        self.policy: PreTrainedModel | None = None
        self.backend: RolloutEngine = make_backend(rollout_backend, tokenizer)
        self.evaluator = RolloutEval(**eval)

    def configure_model(self) -> None:
        if self.policy is None:
            self.policy = self.shard(self.model_factory(self.tokenizer).train())  # from_pretrained: eval mode

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        ids, attn, pos, _ = join_prompt_target(batch)
        mask = batch["target_mask"]
        lp = suffix_logps(self.policy, ids, attn, mask, position_ids=pos, fused=self.hparams.fused_logprobs)
        return aggregate(-lp, mask, mode="token_mean", **self.ddp_normaliser(mask, mode="token_mean"))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        loss = self._loss(batch)
        self.log_metrics("train", {"loss": loss.detach()}, batch_size=len(batch["answer"]))
        return self.skip_or_loss(loss)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log_metrics("val", {"loss": self._loss(batch)}, batch_size=len(batch["answer"]))
        if self.reward_fn is not None:
            self.evaluator.run(self, batch, self.backend, self.reward_fn)
            self.evaluator.log(self, "val")

    def generate(self, prompts: list[str], *, max_new_tokens: int = 16) -> list[str]:
        return greedy_generate(self.policy, self.tokenizer, prompts, max_new_tokens=max_new_tokens)
