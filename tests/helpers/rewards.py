"""A dense test-only reward, so a randomly initialised model gets a learning signal in a few steps.

``math_reward`` scores a random model's garbage 0 almost always (as it should), which leaves a
3-step run with zero advantages and unmoved weights; tests that must see training move use this.
"""

from __future__ import annotations


def digit_overlap(completion: str, answer: str) -> float:
    """Fraction of the answer's characters found, position by position, at the start of the completion."""
    if not isinstance(completion, str) or not answer:
        return 0.0
    return sum(a == c for a, c in zip(answer, completion.strip())) / len(answer)


def digit_fraction(completion: str, answer: str) -> float:
    """Fraction of digits in the completion: almost never equal for two samples of a random model, so even a
    two-rollout group has a non-zero advantage (for tests that check the policy moves on long-answer tasks)."""
    if not isinstance(completion, str) or not completion:
        return 0.0
    return sum(c.isdigit() for c in completion) / len(completion)
