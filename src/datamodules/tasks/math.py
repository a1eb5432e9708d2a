"""Math tasks: generated arithmetic, reasoning-gym generators, GSM8K/MATH-style files; safe rewards.

Rewards never evaluate model output as code: answers are compared with ``math-verify`` (sympy
parsing with a time limit) after a cheap exact-match fast path. Over-long or malformed outputs,
parser errors and time-outs all score 0.
"""

from __future__ import annotations

import random
import re
from typing import Any

MAX_COMPLETION_CHARS = 2000
_NUM = re.compile(r"-?\d+(?:\.\d+)?")


def gsm8k_answer(solution: str) -> str:
    """Final answer of a GSM8K solution (``... #### 42``), commas removed."""
    if "####" not in solution:
        raise ValueError(f"GSM8K answer without '####': {solution[-80:]!r}")
    return solution.split("####")[-1].strip().replace(",", "")


def boxed_answer(solution: str) -> str:
    """Content of the last ``\\boxed{...}`` (balanced braces) of a MATH solution."""
    start = solution.rfind("\\boxed{")
    if start < 0:
        raise ValueError(f"MATH solution without \\boxed{{}}: {solution[-80:]!r}")
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(solution)):
        depth += {"{": 1, "}": -1}.get(solution[j], 0)
        if depth == 0:
            return solution[i:j]
    raise ValueError("unbalanced \\boxed{")


def math_reward(completion: str, gold: str, *, timeout_s: int = 2) -> float:
    """1.0 if ``completion``'s final answer equals ``gold`` (math-verify), else 0.0. Never raises."""
    if not isinstance(completion, str) or not isinstance(gold, str) or not completion.strip():
        return 0.0
    if len(completion) > MAX_COMPLETION_CHARS:
        return 0.0
    text = completion.strip()
    nums = _NUM.findall(text)
    if nums and nums[-1] == gold.strip():  # fast path, no sympy
        return 1.0
    try:
        from math_verify import parse, verify

        g = parse(gold if "$" in gold or "\\" in gold else f"${gold}$", parsing_timeout=timeout_s)
        p = parse(text, parsing_timeout=timeout_s)
        return 1.0 if (g and p and verify(g, p, timeout_seconds=timeout_s)) else 0.0
    except Exception:  # parser/timeout/sympy errors on garbage output
        return 0.0


def arithmetic_problems(*, seed: int = 0, num_examples: int = 2000, max_operand: int = 99,
                        ops: str = "+") -> list[dict[str, Any]]:  # fmt: skip
    """Distinct problems ``{"prompt": "12+7=", "answer": "19"}``, operands in ``[0, max_operand]``.

    Problems are unique, so a train/val split never shares a problem (held-out means unseen); at
    most ``(max_operand + 1)^2 * len(ops)`` problems exist.
    """
    bad = set(ops) - set("+-*")
    if bad or not ops:
        raise ValueError(f"ops must be drawn from '+-*', got {ops!r}")
    space = [(a, b, op) for op in ops for a in range(max_operand + 1) for b in range(max_operand + 1)]
    rng = random.Random(seed)
    rng.shuffle(space)
    rows = []
    for a, b, op in space[:num_examples]:
        ans = {"+": a + b, "-": a - b, "*": a * b}[op]
        rows.append({"prompt": f"{a}{op}{b}=", "answer": str(ans)})
    return rows


def reasoning_gym_problems(*, name: str = "basic_arithmetic", seed: int = 0, num_examples: int = 1000,
                           **config: Any) -> list[dict[str, Any]]:  # fmt: skip
    """Procedural problems from ``reasoning-gym`` (offline): ``gsm_symbolic``, ``basic_arithmetic``, ..."""
    import reasoning_gym

    ds = reasoning_gym.create_dataset(name, size=num_examples, seed=seed, **config)
    return [{"prompt": e["question"], "answer": str(e["answer"])} for e in ds]
