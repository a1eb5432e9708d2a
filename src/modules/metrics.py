"""torchmetrics for rollout evaluation: unbiased pass@k (Chen et al. 2021, Eq. 1)."""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased ``pass@k = 1 - C(n - c, k) / C(n, k)`` from ``n`` samples with ``c`` correct."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


class PassAtK(Metric):
    """Mean unbiased pass@k over prompts; ``update(correct)`` with ``correct`` ``(prompts, n)`` 0/1."""

    full_state_update = False

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, correct: torch.Tensor) -> None:
        n = correct.shape[-1]
        for c in correct.sum(-1).long().tolist():
            self.total += pass_at_k(n, int(c), self.k)
        self.count += correct.shape[0]

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()
