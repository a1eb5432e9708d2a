"""A task whose prompts differ in how much parallel decoding they tolerate (DiFFPO's controller).

Each prompt names a set of 5 distinct digits and one of two rules for a 4-digit answer:

* ``a<digits>:`` (**any**): every position independently takes any digit of the set. The positions
  do not depend on one another, so decoding all four in one step is as good as one at a time.
* ``d<digits>:`` (**distinct**): four *distinct* digits of the set. Each position's marginal is the
  same as under ``any`` (uniform over the set), but the positions depend on one another: decoding them
  in parallel from their marginals mostly repeats a digit, so this rule needs one token per step.

A model that has learned both rules is about equally (un)confident on every position of both kinds,
so no single confidence threshold (or entropy budget) is right for both: a low one is fast and wrong on
``distinct``, a high one is right and slow on ``any``. A per-prompt controller can be fast on ``any``
and careful on ``distinct``. Answers are verified by rule, not against one reference; the SFT target
(``solution``) is a random valid answer, several per prompt, so the model learns the distribution.
``split_key="prompt"`` in the data module keeps all of a prompt's records on one side of the split.
"""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

KINDS = {"a": "any", "d": "distinct"}


def parallel_mix_problems(
    *, seed: int = 0, num_examples: int = 4000, set_size: int = 5, length: int = 4, samples_per_prompt: int = 8
) -> list[dict[str, Any]]:
    """Every (rule, digit set) prompt with ``samples_per_prompt`` random valid solutions, shuffled and cut
    to ``num_examples`` records (whole prompts only)."""
    if not 1 <= length <= set_size <= 10:
        raise ValueError(f"need 1 <= length ({length}) <= set_size ({set_size}) <= 10")
    rng = random.Random(seed)
    prompts = [(k, "".join(c)) for k in KINDS for c in itertools.combinations("0123456789", set_size)]
    rng.shuffle(prompts)
    rows: list[dict[str, Any]] = []
    for kind, digits in prompts:
        if len(rows) + samples_per_prompt > num_examples:
            break
        spec = json.dumps({"rule": KINDS[kind], "digits": digits, "length": length})
        for _ in range(samples_per_prompt):
            sol = rng.sample(digits, length) if kind == "d" else [rng.choice(digits) for _ in range(length)]
            rows.append({"prompt": f"{kind}{digits}:", "answer": spec, "solution": "".join(sol), "rule": KINDS[kind]})
    return rows


def parallel_mix_reward(completion: str, spec: str) -> float:
    """1 if the completion (surrounding whitespace ignored) obeys the prompt's rule, else 0 (also on a
    malformed spec or completion; pure string checks, nothing is evaluated)."""
    try:
        s = json.loads(spec)
        rule, digits, length = s["rule"], str(s["digits"]), int(s["length"])
    except (ValueError, KeyError, TypeError):
        return 0.0
    if not isinstance(completion, str):
        return 0.0
    ans = completion.strip()
    if len(ans) != length or any(c not in digits for c in ans):
        return 0.0
    if rule == "distinct" and len(set(ans)) != length:
        return 0.0
    return 1.0 if rule in ("any", "distinct") else 0.0
