"""Masked-diffusion SFT (LLaDA's SFT objective): the warm start before DiFFPO.

The completion is the answer followed by EOS tokens up to ``gen_length`` (LLaDA pads answers with
EOS so the model learns to stop). Each row draws a mask ratio ``t ~ U(eps, 1)``; every completion
token is masked with probability ``t``; the loss is the cross-entropy on masked tokens weighted by
``1 / t`` and divided by the completion length (LLaDA Eq. 5, SFT form). Validation decodes with
the masked-diffusion sampler at a fixed threshold and reports accuracy and NFE.

Launch: ``python train.py experiment=diffpo_arith_sft``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanMetric
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.datamodules.prompt import PromptDataModule
from src.models.families import mask_token_id
from src.modules.base import PostTrainModule
from src.modules.rl_common import score_texts
from src.rollout.diffusion_sampler import MaskedDiffusionSampler, check_knobs, masked_lm_logits
from src.utils.keyed_random import keyed_uniform


def eos_padded_targets(batch: dict[str, Any], gen_length: int, eos_id: int) -> Tensor:
    """``(B, gen_length)`` answer tokens followed by EOS (answers longer than gen_length are cut)."""
    tgt, m = batch["target_ids"][:, :gen_length], batch["target_mask"][:, :gen_length]
    out = torch.full((tgt.shape[0], gen_length), eos_id, dtype=tgt.dtype, device=tgt.device)
    out[:, : tgt.shape[1]] = torch.where(m.bool(), tgt, torch.full_like(tgt, eos_id))
    return out


class MDMSFTModule(PostTrainModule):
    """Masked-diffusion SFT.

    Args:
        model: policy factory ``model(tokenizer)`` (a masked-diffusion LM).
        tokenizer: the policy's tokenizer.
        optimizer: partial of a torch optimizer.
        sampler: partial of :class:`MaskedDiffusionSampler`: its ``gen_length`` is the answer length
            trained on, and validation decodes greedily with it.
        eval_knob: the knob validation decodes at (a threshold, or gamma for ``entropy_bounded``).
        eps: lowest masking ratio ``t`` (LLaDA's ``t ~ U[eps, 1]``).
        reward: optional verifier for held-out accuracy.
        scheduler: partial of a learning-rate scheduler, stepped once per optimizer step.
        on_non_finite: ``skip | raise | ignore``.
        max_non_finite_fraction: stop once more than this fraction of recent steps were skipped.
        monitor: headline metric.
        rng: ``global | keyed``.
    """

    data_type = PromptDataModule

    def __init__(
        self,
        *,
        model: Callable[[PreTrainedTokenizerBase], PreTrainedModel],
        tokenizer: PreTrainedTokenizerBase,
        optimizer: Callable[..., torch.optim.Optimizer],
        sampler: Callable[..., MaskedDiffusionSampler],
        eval_knob: float,
        eps: float,
        reward: Callable[[str, str], float] | None = None,
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
        self.save_hyperparameters(ignore=["model", "tokenizer", "optimizer", "scheduler", "reward", "sampler"])
        self.model_factory, self.tokenizer, self.reward_fn = model, tokenizer, reward
        self.sampler = sampler(tokenizer, temperature=0.0)
        check_knobs(self.sampler.mode, [eval_knob], key="module.eval_knob")
        self.policy: PreTrainedModel | None = None
        self.val_acc, self.val_nfe = MeanMetric(), MeanMetric()

    def configure_model(self) -> None:
        if self.policy is None:
            self.policy = self.shard(self.model_factory(self.tokenizer).train())  # from_pretrained: eval mode

    def _loss(self, batch: dict[str, Any]) -> Tensor:
        L, mask_id = self.sampler.gen_length, mask_token_id(self.policy, self.tokenizer)
        target = eos_padded_targets(batch, L, self.tokenizer.eos_token_id)
        B = target.shape[0]
        keys = self.rollout_keys(batch["index"])
        if keys is None:
            u_t, u_mask = torch.rand(B, 1, device=target.device), torch.rand(B, L, device=target.device)
        else:  # per-example keyed draws: the same masks on any world size / batch split
            u_t, u_mask = keyed_uniform(keys, 0, (1,)), keyed_uniform(keys, 1, (L,))
        t = self.hparams.eps + (1 - self.hparams.eps) * u_t
        masked = u_mask < t
        x = torch.cat([batch["prompt_ids"], torch.where(masked, torch.full_like(target, mask_id), target)], 1)
        attn = torch.cat([batch["prompt_mask"], torch.ones_like(target)], 1)
        logits = masked_lm_logits(self.policy, x, attn, positions=slice(-L, None)).float()
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # (B, L)
        return ((ce * masked / t).sum(-1) / L).mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        loss = self._loss(batch)
        self.log_metrics("train", {"loss": loss.detach()}, batch_size=len(batch["answer"]))
        return self.skip_or_loss(loss)

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log_metrics("val", {"loss": self._loss(batch)}, batch_size=len(batch["answer"]))
        if self.reward_fn is None:
            return
        ro = self.sampler.generate(self.policy, batch["prompt_ids"], batch["prompt_mask"], knob=self.hparams.eval_knob)
        self.val_acc.update(score_texts(self.reward_fn, ro.texts, batch["answer"], 1, self.device).flatten())
        self.val_nfe.update(ro.nfe.float())
        self.log("val/accuracy", self.val_acc, on_epoch=True)
        self.log("val/nfe", self.val_nfe, on_epoch=True)
