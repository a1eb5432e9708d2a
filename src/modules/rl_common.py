"""Shared pieces of the rollout-based modules (SFT warm-start eval, OPD+): rewards and evaluation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchmetrics import MeanMetric

from src.modules.metrics import PassAtK
from src.rollout.types import Rollout, RolloutEngine


def score_texts(
    reward_fn: Callable[[str, str], float], texts: list[str], answers: list[str], n: int, device
) -> Tensor:
    """``(len(answers), n)`` rewards for completions grouped by prompt."""
    r = [float(reward_fn(t, answers[i // n])) for i, t in enumerate(texts)]
    return torch.tensor(r, device=device).view(len(answers), n)


class RolloutEval(torch.nn.Module):
    """Held-out pass@1 (greedy) and unbiased pass@k (``n`` samples), plus mean response length.

    Args:
        k: the k of pass@k.
        n: samples per prompt (``k <= n``).
        temperature: sampling temperature of the ``n`` samples.
        max_new_tokens: completion length cap (greedy and sampled).
    """

    def __init__(self, *, k: int, n: int, temperature: float, max_new_tokens: int) -> None:
        super().__init__()
        if not 1 <= k <= n:
            raise ValueError(f"eval needs 1 <= k <= n, got k={k}, n={n}")
        self.k, self.n, self.temperature, self.max_new_tokens = k, n, temperature, max_new_tokens
        self.pass1, self.passk, self.length = PassAtK(1), PassAtK(k), MeanMetric()

    def run(self, module, batch: dict, backend: RolloutEngine, reward_fn) -> Rollout:
        """Update the metrics for one batch; returns the sampled rollout (for divergence metrics)."""
        greedy = backend.generate(
            module.policy,
            batch["prompt_ids"],
            batch["prompt_mask"],
            n=1,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
        )
        self.pass1.update(score_texts(reward_fn, greedy.texts, batch["answer"], 1, module.device))
        sampled = backend.generate(
            module.policy,
            batch["prompt_ids"],
            batch["prompt_mask"],
            n=self.n,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            keys=module.rollout_keys(batch["index"], self.n),
        )
        self.passk.update(score_texts(reward_fn, sampled.texts, batch["answer"], self.n, module.device))
        self.length.update(sampled.action_mask.sum(-1).float())
        return sampled

    def log(self, module, stage: str = "val") -> None:
        module.log(f"{stage}/pass@1", self.pass1, on_epoch=True)
        # k = 1: the sampled estimate gets its own name (pass@1 is the greedy one)
        module.log(f"{stage}/pass@{self.k}" if self.k > 1 else f"{stage}/sampled/pass@1", self.passk, on_epoch=True)
        module.log(f"{stage}/rollout/length", self.length, on_epoch=True)
