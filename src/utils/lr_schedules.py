"""Learning-rate schedules, stepped once per optimizer step (``scheduler=constant|cosine``).

Both are ``LambdaLR``s, so their state (the step count) is in every checkpoint and a resume continues
the schedule exactly. Every module takes them as ``module.scheduler`` (``${scheduler}`` in its YAML).
"""

from __future__ import annotations

import math

import torch


def _warmup(step: int, warmup_steps: int) -> float:
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


def warmup_constant(optimizer: torch.optim.Optimizer, *, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ``lr / warmup_steps`` to ``lr`` over ``warmup_steps`` steps, then ``lr``."""
    if warmup_steps < 0:
        raise ValueError(f"scheduler.warmup_steps must be >= 0, got {warmup_steps}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _warmup(step, warmup_steps))


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    *,
    warmup_steps: int,
    total_steps: int,
    min_ratio: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay from ``lr`` to ``min_ratio * lr`` at ``total_steps`` (held after)."""
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"scheduler needs 0 <= warmup_steps < total_steps, got {warmup_steps}, {total_steps}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"scheduler.min_ratio must lie in [0, 1], got {min_ratio}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return _warmup(step, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
