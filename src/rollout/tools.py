"""Tools a policy can call mid-rollout, and their safe execution.

A tool is a plain Python callable with a JSON schema (name, description, parameters), built from a Hydra
target: ``{_target_: src.rollout.tools.Tool, fn: src.rollout.tools.calculator}``. Without an explicit schema it
is read from the function's signature and Google-style docstring (``transformers.utils.get_json_schema``, what
chat templates' ``tools=`` take). :class:`ToolExecutor` runs calls with a per-call time limit and a cap on the
result's size; whatever goes wrong (unknown tool, bad arguments, an exception, a hang, a result that is not
JSON or is too large) becomes an error message the policy reads, never a crashed or hung run. Arguments are
data: nothing is ``eval``'d, and :func:`calculator` reads arithmetic from a syntax tree with bounds.
"""

from __future__ import annotations

import ast
import importlib
import json
import math
import multiprocessing
import operator
import threading
from collections.abc import Callable
from typing import Any

from src.datamodules.tasks.tool_use import ARITH_OPS

MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 64
MAX_MAGNITUDE = 1e30


class Tool:
    """A callable the policy may call. ``fn``: the callable or its dotted path (``"pkg.module.function"``);
    ``name`` / ``description`` / ``parameters`` (a JSON-schema object) default to what the function's signature
    and docstring say. (A plain class, not a dataclass: Hydra builds it from a config.)"""

    def __init__(
        self,
        fn: Callable[..., Any] | str,
        name: str | None = None,
        description: str | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        self.fn, self.name, self.description = fn, name, description
        self.parameters = dict(parameters) if parameters is not None else None
        self._resolve()

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"

    def _resolve(self) -> None:
        if isinstance(self.fn, str):
            module, _, attr = self.fn.rpartition(".")
            if not module:
                raise ValueError(f"tool fn={self.fn!r}: give a dotted path 'package.module.function'")
            self.fn = getattr(importlib.import_module(module), attr)
        if not callable(self.fn):
            raise TypeError(f"tool fn {self.fn!r} is not callable")
        derived: dict[str, Any] = {}
        if self.description is None or self.parameters is None:
            from transformers.utils import get_json_schema

            try:
                derived = get_json_schema(self.fn)["function"]
            except Exception as e:  # transformers' DocstringParsingException and friends
                raise ValueError(
                    f"tool {getattr(self.fn, '__name__', self.fn)}: no description/parameters given and none could "
                    f"be read from its docstring ({e}); give them in the tool's config"
                ) from None
        self.name = self.name or derived.get("name") or self.fn.__name__
        self.description = self.description if self.description is not None else derived.get("description", "")
        self.parameters = (
            self.parameters if self.parameters is not None else derived.get("parameters", {"type": "object"})
        )
        self._schema = {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    @property
    def schema(self) -> dict[str, Any]:
        return self._schema


# ---------------------------------------------------------------------------------- the calculator
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _bounded(x: Any) -> int | float:
    if isinstance(x, float) and not math.isfinite(x):
        raise ValueError("the result is not finite")
    if abs(x) > MAX_MAGNITUDE:
        raise ValueError(f"a value exceeds {MAX_MAGNITUDE:g}")
    return x


def _arith(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _arith(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _bounded(_UNARY[type(node.op)](_arith(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in ARITH_OPS:
        a, b = _arith(node.left), _arith(node.right)
        if isinstance(node.op, ast.Pow) and abs(b) > MAX_EXPONENT:
            raise ValueError(f"exponent {b} exceeds {MAX_EXPONENT}")
        if isinstance(node.op, ast.Pow) and a == 0 and b < 0:
            raise ValueError("zero to a negative power")
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and b == 0:
            raise ValueError("division by zero")
        out = ARITH_OPS[type(node.op)](a, b)
        if isinstance(out, complex):
            raise ValueError("the result is not a real number")
        return _bounded(out)
    raise ValueError(f"not arithmetic: {type(node).__name__}")


def calculator(expression: str) -> int | float:
    """Evaluate an arithmetic expression exactly as written.

    Args:
        expression: numbers with + - * / // % ** and parentheses, e.g. "(12 + 30) * 2"
    """
    if not isinstance(expression, str):
        raise TypeError(f"expression must be a string, got {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
    except (SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read {expression!r} as arithmetic") from e
    out = _arith(tree)
    if isinstance(out, float) and out.is_integer():
        out = int(out)
    return out


# ---------------------------------------------------------------------------------- execution
def error_message(msg: str) -> str:
    """What a failed call returns to the policy: ``{"error": msg}`` as JSON, the message cut to 500 characters."""
    return json.dumps({"error": msg[:500]})


def _run(fn: Callable[..., Any], arguments: dict[str, Any], max_chars: int) -> tuple[bool, str]:
    """``(ok, text)``: the JSON text of ``fn(**arguments)``, or an error message."""
    try:
        result = fn(**arguments)
    except Exception as e:
        return False, error_message(f"{type(e).__name__}: {e}")
    try:
        text = json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as e:
        return False, error_message(f"the tool returned a value that is not JSON ({type(result).__name__}: {e})")
    if len(text) > max_chars:
        return False, error_message(f"the tool's result has {len(text)} characters > the limit of {max_chars}")
    return True, text


def _child(conn, fn, arguments, max_chars) -> None:  # pragma: no cover - runs in the forked child
    try:
        conn.send(_run(fn, arguments, max_chars))
    finally:
        conn.close()


class ToolExecutor:
    """Runs tool calls. ``timeout``: seconds per call; ``max_result_chars``: the largest JSON result passed back;
    ``isolation``: ``process`` (a forked process per call, killed at the time limit: a hung tool costs nothing
    after it) or ``thread`` (cheaper; a hung call is abandoned, its thread left running)."""

    def __init__(
        self, tools: list[Tool], *, timeout: float = 2.0, max_result_chars: int = 2000, isolation: str = "process"
    ) -> None:
        if isolation not in ("process", "thread"):
            raise ValueError(f"tool isolation={isolation!r}; valid: process, thread")
        if isolation == "process" and "fork" not in multiprocessing.get_all_start_methods():
            isolation = "thread"  # no fork on this platform
        names = [t.name for t in tools]
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be unique, got {names}")
        self.tools = {t.name: t for t in tools}
        self.timeout, self.max_result_chars, self.isolation = timeout, max_result_chars, isolation

    def call(self, name: Any, arguments: Any) -> tuple[bool, str]:
        """``(ok, text)`` for one call: the result as JSON text, or ``{"error": ...}``."""
        if not isinstance(name, str) or name not in self.tools:
            return False, error_message(f"unknown tool {name!r}; available: {', '.join(self.tools)}")
        if not isinstance(arguments, dict):
            return False, error_message(f"the parameters of {name} must be a JSON object")
        fn = self.tools[name].fn
        if self.isolation == "thread":
            box: list[tuple[bool, str]] = []
            worker = threading.Thread(target=lambda: box.append(_run(fn, arguments, self.max_result_chars)))
            worker.daemon = True
            worker.start()
            worker.join(self.timeout)
            return box[0] if box else (False, error_message(f"{name} timed out after {self.timeout:g} s"))
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(child, fn, arguments, self.max_result_chars), daemon=True)
        proc.start()
        child.close()
        try:
            if parent.poll(self.timeout):
                try:
                    return parent.recv()
                except EOFError:
                    return False, error_message(f"{name} exited without a result")
            return False, error_message(f"{name} timed out after {self.timeout:g} s")
        finally:
            parent.close()
            if proc.is_alive():
                proc.kill()
            proc.join(1.0)
