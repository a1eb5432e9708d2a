"""Math tasks: generated arithmetic, reasoning-gym generators, GSM8K/MATH-style files; safe rewards.

Rewards never evaluate model output as code: answers are compared with ``math-verify`` (sympy
parsing with a time limit) after a normalised exact-match fast path. Over-long or malformed outputs,
parser errors and time-outs all score 0. ``scripts/check_answer_keys.py`` checks the verifier on
whole data files (every GSM8K test and MATH-500 gold solution scores 1 against its own key).
"""

from __future__ import annotations

import random
import re
import threading
from typing import Any

MAX_COMPLETION_CHARS = 4000
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
# spacing and delimiters that never change a LaTeX answer's value
_SPACING = re.compile(r"\\[!,;: ]|\\left(?![a-zA-Z])|\\right(?![a-zA-Z])|\s+|\$")
_MARKED = re.compile(r"####[ \t]*([^\n]*)")
_BOXES = ("\\boxed{", "\\fbox{")


def gsm8k_answer(solution: str) -> str:
    """Final answer of a GSM8K solution (``... #### 42``), commas removed."""
    if "####" not in solution:
        raise ValueError(f"GSM8K answer without '####': {solution[-80:]!r}")
    return solution.split("####")[-1].strip().replace(",", "")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces, else None."""
    start, tag = max((text.rfind(t), t) for t in _BOXES)
    if start < 0:
        return None
    i, depth = start + len(tag), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def boxed_answer(solution: str) -> str:
    """Content of the last ``\\boxed{...}`` (balanced braces) of a MATH solution."""
    ans = last_boxed(solution)
    if ans is None:
        raise ValueError(f"MATH solution without a balanced \\boxed{{}}: {solution[-80:]!r}")
    return ans


def gold_string(gold: Any) -> str:
    """A gold answer as a string; numeric keys stored as floats (``18.0``) become ``"18"``."""
    if isinstance(gold, bool) or gold is None:
        raise TypeError(f"gold answer must be a string or a number, got {gold!r}")
    if isinstance(gold, float):
        return str(int(gold)) if gold.is_integer() else repr(gold)
    if isinstance(gold, int):
        return str(gold)
    if not isinstance(gold, str):
        raise TypeError(f"gold answer must be a string or a number, got {type(gold).__name__}")
    return gold.strip()


def final_answer(completion: str) -> tuple[str | None, str]:
    """The completion's final answer and where it came from.

    In order: the last ``\\boxed{}``; the rest of the line after the last non-empty ``####`` (GSM8K
    style); else ``(None, "text")``, and the verifier lets math-verify search the whole text.
    """
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed, "boxed"
    marked = [m.strip() for m in _MARKED.findall(completion) if m.strip()]
    if marked:
        return marked[-1], "####"
    return None, "text"


def normalize_answer(ans: str) -> str:
    """A canonical spelling for the exact-match fast path: spacing, ``$``, ``\\left``/``\\right``,
    ``\\dfrac``/``\\tfrac``, degree and percent signs and thousands separators removed (MATH's
    answer-key conventions). Equal results are equal answers; unequal ones go to the symbolic check."""
    s = ans.strip().rstrip(".").removeprefix("+")  # a leading plus sign never changes the value
    if _THOUSANDS.match(s.replace("\\!", "").replace(" ", "")):
        s = s.replace(",", "")
    s = _SPACING.sub("", s)
    for a, b in (
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\%", ""),
        ("%", ""),
    ):
        s = s.replace(a, b)
    return s


_GOLD_CACHE: dict[str, list] = {}


def _parse_gold(gold: str, timeout_s: int) -> list:
    from math_verify import parse

    if gold in _GOLD_CACHE:
        return _GOLD_CACHE[gold]
    # a gold key is an answer, not a solution: box it so LaTeX (\sqrt{51}, \text{Evelyn}, tuples,
    # intervals, matrices) is read as one expression instead of searched for inside a sentence
    parsed = parse(gold if "\\boxed" in gold else f"\\boxed{{{gold}}}", parsing_timeout=timeout_s)
    if parsed and len(_GOLD_CACHE) < 100_000:  # a failed (timed-out) parse is retried, not cached
        _GOLD_CACHE[gold] = parsed
    return parsed


def math_reward(
    completion: str, gold: Any, *, timeout_s: int = 2, fast_path: bool = True, require_marked: bool = False
) -> float:
    """1.0 if ``completion``'s final answer equals ``gold``, else 0.0. Never executes anything.

    ``gold`` is a final answer (``"19"``, ``19.0``, ``"\\frac{\\sqrt3}{2}"``, ``"(3,4]"``,
    ``"\\text{Evelyn}"``). The completion's answer is its last ``\\boxed{}``, else what follows
    ``####``, else what math-verify finds in the text (``the answer is ...``, the last expression).
    An exact match after :func:`normalize_answer` scores 1 without sympy; otherwise math-verify
    compares the two symbolically (sympy, no ``eval``), with a ``timeout_s`` limit on parsing and
    on the comparison. Empty, over-long (> ``MAX_COMPLETION_CHARS``) or unparsable completions,
    parser errors and time-outs score 0. ``fast_path=False`` skips the exact match (to test the
    symbolic path alone). ``require_marked``: only a ``\\boxed{}`` or ``####`` answer counts (tool tasks: a
    number elsewhere in the text, e.g. in a call's arguments, is not the policy's answer).

    The time limit is a ``SIGALRM`` alarm, which Python only allows in the main thread: called from
    another thread this raises ``RuntimeError`` rather than score every answer 0.
    """
    if not isinstance(completion, str) or not completion.strip() or len(completion) > MAX_COMPLETION_CHARS:
        return 0.0
    try:
        gold = gold_string(gold)
    except TypeError:
        return 0.0
    if not gold:
        return 0.0
    cand, source = final_answer(completion)
    if require_marked and cand is None:
        return 0.0
    norm_gold = normalize_answer(gold)
    if fast_path and cand is not None and normalize_answer(cand) == norm_gold:
        return 1.0
    if fast_path and cand is None and normalize_answer(completion) == norm_gold:  # the whole completion is the answer
        return 1.0
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "math_reward's time limit uses SIGALRM, which only works in the main thread; "
            "score in the main thread or in worker processes"
        )
    try:
        from math_verify import parse, verify

        g = _parse_gold(gold, timeout_s)
        p = parse(f"\\boxed{{{cand}}}" if source == "####" else completion, parsing_timeout=timeout_s)
        return 1.0 if (g and p and verify(g, p, timeout_seconds=timeout_s)) else 0.0
    except Exception:  # parser/timeout/sympy errors on garbage output
        return 0.0


def arithmetic_problems(
    *, seed: int = 0, num_examples: int = 2000, max_operand: int = 99, ops: str = "+"
) -> list[dict[str, Any]]:
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


def reasoning_gym_problems(
    *, name: str = "basic_arithmetic", seed: int = 0, num_examples: int = 1000, **config: Any
) -> list[dict[str, Any]]:
    """Procedural problems from ``reasoning-gym`` (offline): ``gsm_symbolic``, ``basic_arithmetic``, ..."""
    import reasoning_gym

    ds = reasoning_gym.create_dataset(name, size=num_examples, seed=seed, **config)
    return [{"prompt": e["question"], "answer": str(e["answer"])} for e in ds]
