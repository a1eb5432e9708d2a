"""DiFFPO's threshold controller: per-prompt distribution over decoding thresholds.

Reads the policy's last hidden states over the prompt (mean-pooled, detached: the controller is a
separate head with its own parameter group and does not push gradients into the LM), and outputs
a categorical distribution over a fixed grid of confidence thresholds. Trained by policy gradient
on a reward that trades accuracy against NFEs (``src.modules.diffpo``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from src.utils.keyed_random import keyed_categorical

CONTROLLER_COUNTER = 0x7FFFFFFF  # keyed-draw stream of the controller (samplers count up from 0)


class ThresholdController(nn.Module):
    def __init__(self, hidden_size: int, thresholds: list[float] | tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 1.0),
                 mlp_hidden: int = 64, init_threshold: float | None = None) -> None:  # fmt: skip
        super().__init__()
        if not thresholds or any(not 0.0 <= t <= 1.0 for t in thresholds):
            raise ValueError(f"thresholds must be a non-empty list in [0, 1], got {thresholds}")
        self.register_buffer("grid", torch.tensor(sorted(thresholds), dtype=torch.float32))
        self.net = nn.Sequential(nn.Linear(hidden_size, mlp_hidden), nn.Tanh(), nn.Linear(mlp_hidden, len(thresholds)))
        nn.init.normal_(self.net[-1].weight, std=0.01)  # near-uniform start, but every layer gets gradient
        with torch.no_grad():  # start uniform, or peaked at init_threshold
            self.net[-1].bias.zero_()
            if init_threshold is not None:
                self.net[-1].bias[(self.grid - init_threshold).abs().argmin()] = 2.0

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        """Logits ``(B, K)`` from hidden states ``(B, T, H)`` pooled over ``mask`` ``(B, T)``."""
        m = mask.to(hidden.dtype)[..., None]
        pooled = (hidden.detach().float() * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.net(pooled)

    def sample(self, hidden: Tensor, mask: Tensor, *, greedy: bool = False,
               keys: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        """``(thresholds (B,), indices (B,), log_probs (B,))``; log-probs carry gradients.
        ``keys``: per-row keyed draws (``src.utils.keyed_random``) instead of the global RNG."""
        logits = self(hidden, mask)
        dist = torch.distributions.Categorical(logits=logits)
        if greedy:
            idx = logits.argmax(-1)
        elif keys is not None:
            idx = keyed_categorical(logits.detach(), keys, CONTROLLER_COUNTER)
        else:
            idx = dist.sample()
        return self.grid[idx], idx, dist.log_prob(idx)
