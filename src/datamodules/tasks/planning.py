"""Planning tasks with safe verifiers: Countdown and Sudoku (4x4, 9x9).

Countdown answers are parsed by a whitelist recursive-descent grammar over integers, ``+ - * /``
and parentheses, evaluated with exact fractions. Nothing is ever passed to ``eval``; anything
outside the grammar, too long, too deep, or dividing by zero scores 0.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from fractions import Fraction
from typing import Any

MAX_EXPR_CHARS = 200
MAX_DEPTH = 32


class _ParseError(ValueError):
    pass


class _Parser:
    """expr := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)* ;
    factor := INT | '(' expr ')' | '-' factor"""

    def __init__(self, text: str) -> None:
        self.toks = self._lex(text)
        self.i = 0
        self.numbers: list[int] = []

    @staticmethod
    def _lex(text: str) -> list[str]:
        toks, i = [], 0
        while i < len(text):
            c = text[i]
            if c.isspace():
                i += 1
            elif c in "+-*/()":
                toks.append(c)
                i += 1
            elif c.isdigit() and c.isascii():
                j = i
                while j < len(text) and text[j].isdigit() and text[j].isascii():
                    j += 1
                if j - i > 6:
                    raise _ParseError("number too long")
                toks.append(text[i:j])
                i = j
            else:
                raise _ParseError(f"character {c!r} not allowed")
        return toks

    def parse(self) -> Fraction:
        v = self._expr(0)
        if self.i != len(self.toks):
            raise _ParseError("trailing tokens")
        return v

    def _peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def _expr(self, d: int) -> Fraction:
        v = self._term(d)
        while self._peek() in ("+", "-"):
            op = self.toks[self.i]
            self.i += 1
            r = self._term(d)
            v = v + r if op == "+" else v - r
        return v

    def _term(self, d: int) -> Fraction:
        v = self._factor(d)
        while self._peek() in ("*", "/"):
            op = self.toks[self.i]
            self.i += 1
            r = self._factor(d)
            if op == "/" and r == 0:
                raise _ParseError("division by zero")
            v = v * r if op == "*" else v / r
        return v

    def _factor(self, d: int) -> Fraction:
        if d > MAX_DEPTH:
            raise _ParseError("too deep")
        t = self._peek()
        if t is None:
            raise _ParseError("unexpected end")
        self.i += 1
        if t == "(":
            v = self._expr(d + 1)
            if self._peek() != ")":
                raise _ParseError("missing ')'")
            self.i += 1
            return v
        if t == "-":
            return -self._factor(d + 1)
        if t.isdigit():
            self.numbers.append(int(t))
            return Fraction(int(t))
        raise _ParseError(f"unexpected {t!r}")


def countdown_reward(completion: str, numbers: list[int], target: int, *, use_all: bool = False) -> float:
    """1.0 if ``completion`` is an expression over ``numbers`` (each at most once; all of them if
    ``use_all``) equal to ``target``; 0.0 for anything else, including malformed or malicious text."""
    if not isinstance(completion, str) or len(completion) > MAX_EXPR_CHARS:
        return 0.0
    text = completion.strip().split("\n")[0].split("=")[0]
    try:
        p = _Parser(text)
        value = p.parse()
    except (_ParseError, ZeroDivisionError, RecursionError):
        return 0.0
    used, avail = Counter(p.numbers), Counter(numbers)
    if any(used[k] > avail[k] for k in used) or (use_all and used != avail):
        return 0.0
    return 1.0 if value == target else 0.0


def countdown_problems(
    *, seed: int = 0, num_examples: int = 1000, num_numbers: int = 3, max_value: int = 9, ops: str = "+-*"
) -> list[dict[str, Any]]:
    """Solvable Countdown instances: a random expression over ``num_numbers`` numbers gives the target."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < num_examples:
        nums = [rng.randint(1, max_value) for _ in range(num_numbers)]
        expr = str(nums[0])
        for n in nums[1:]:
            expr = f"{expr}{rng.choice(ops)}{n}"
        target = _Parser(expr).parse()
        if target.denominator != 1 or target <= 0:
            continue
        shuffled = nums[:]
        rng.shuffle(shuffled)
        prompt = f"{' '.join(map(str, shuffled))}->{int(target)}:"
        spec = json.dumps({"numbers": shuffled, "target": int(target)})
        rows.append({"prompt": prompt, "answer": spec, "solution": expr, "numbers": shuffled, "target": int(target)})
    return rows


def countdown_task_reward(completion: str, spec: str) -> float:
    """Reward with the task's JSON spec ``{"numbers": [...], "target": N}`` as the answer key."""
    try:
        s = json.loads(spec)
        return countdown_reward(completion, list(s["numbers"]), int(s["target"]))
    except (ValueError, KeyError, TypeError):
        return 0.0


def sudoku_task_reward(completion: str, spec: str) -> float:
    """Reward with ``{"puzzle": "12_4...", "n": 4}`` as the answer key."""
    try:
        s = json.loads(spec)
        return sudoku_reward(completion, str(s["puzzle"]), n=int(s["n"]))
    except (ValueError, KeyError, TypeError):
        return 0.0


def _sudoku_solution(n: int, rng: random.Random) -> list[list[int]]:
    b = int(n**0.5)
    base = [[(b * (r % b) + r // b + c) % n + 1 for c in range(n)] for r in range(n)]
    digits = list(range(1, n + 1))
    rng.shuffle(digits)
    rows = [g * b + r for g in rng.sample(range(b), b) for r in rng.sample(range(b), b)]
    cols = [g * b + c for g in rng.sample(range(b), b) for c in rng.sample(range(b), b)]
    return [[digits[base[r][c] - 1] for c in cols] for r in rows]


def sudoku_valid(grid: list[list[int]], n: int) -> bool:
    """Rows, columns and boxes each hold 1..n exactly once."""
    b = int(n**0.5)
    want = set(range(1, n + 1))
    if len(grid) != n or any(len(r) != n for r in grid):
        return False
    rows_ok = all(set(r) == want for r in grid)
    cols_ok = all({grid[r][c] for r in range(n)} == want for c in range(n))
    boxes_ok = all(
        {grid[br * b + i][bc * b + j] for i in range(b) for j in range(b)} == want
        for br in range(b)
        for bc in range(b)
    )
    return rows_ok and cols_ok and boxes_ok


def sudoku_reward(completion: str, puzzle: str, *, n: int) -> float:
    """1.0 if the first ``n*n`` digits of ``completion`` form a valid grid that keeps the givens."""
    if not isinstance(completion, str) or len(completion) > 4 * n * n + 64:
        return 0.0
    digits = [int(c) for c in completion if c.isascii() and c.isdigit()]
    givens = [c for c in puzzle if c.isascii() and (c.isdigit() or c == "_")]
    if len(digits) < n * n or len(givens) != n * n:
        return 0.0
    cells = digits[: n * n]
    if any(g != "_" and int(g) != v for g, v in zip(givens, cells)):
        return 0.0
    return 1.0 if sudoku_valid([cells[r * n : (r + 1) * n] for r in range(n)], n) else 0.0


def sudoku_problems(
    *, seed: int = 0, num_examples: int = 1000, n: int = 4, num_empty: int = 4
) -> list[dict[str, Any]]:
    """Seeded puzzles: a random valid grid with ``num_empty`` cells blanked (``_``)."""
    if n not in (4, 9):
        raise ValueError(f"sudoku size must be 4 or 9, got {n}")
    rng = random.Random(seed)
    rows = []
    for _ in range(num_examples):
        sol = _sudoku_solution(n, rng)
        flat = [str(v) for r in sol for v in r]
        for i in rng.sample(range(n * n), num_empty):
            flat[i] = "_"
        puzzle = "".join(flat)
        rows.append(
            {
                "prompt": f"{puzzle}:",
                "answer": json.dumps({"puzzle": puzzle, "n": n}),
                "solution": "".join(str(v) for r in sol for v in r),
                "puzzle": puzzle,
                "n": n,
            }
        )
    return rows
