"""Tools: the calculator reads arithmetic from a syntax tree with bounds (nothing is eval'd), and the executor
turns every failure (unknown tool, bad arguments, an exception, a hang, non-JSON, a huge result) into an error
message within its time limit."""

import json
import time

import pytest

from src.datamodules.tasks.tool_use import tools_prompt
from src.rollout.tools import Tool, ToolExecutor, calculator


@pytest.mark.parametrize(
    "expr, want",
    [("(12 + 30) * 2", 84), ("7/2", 3.5), ("8/2", 4), ("2**10", 1024), ("2^3", 8), ("-3 + +4", 1), ("17 % 5", 2)],
)
def test_calculator_values(expr, want):
    got = calculator(expr)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(
    "expr",
    [
        "2**100",
        "1/0",
        "__import__('os').system('true')",
        "x + 1",
        "[1, 2]",
        "1e308 * 10",
        "9" * 40,
        "(" * 300,
        "2**-2000",
    ],
)
def test_calculator_refuses_what_is_not_bounded_arithmetic(expr):
    with pytest.raises((ValueError, TypeError)):
        calculator(expr)


def test_schema_is_read_from_the_docstring():
    t = Tool(fn="src.rollout.tools.calculator")
    assert t.name == "calculator" and t.parameters["required"] == ["expression"]
    assert t.parameters["properties"]["expression"]["type"] == "string"
    assert '"name": "calculator"' in tools_prompt([t])


def _raises(x: int):
    raise RuntimeError("boom")


def _spins(x: int):
    while True:
        pass


def _sleeps(x: int):
    time.sleep(3)  # a thread cannot be killed: this one ends by itself (a spinning one would burn a core)


def _not_json(x: int):
    return object()


def _huge(x: int):
    return "a" * 10**6


def _ok(x: int):
    return {"double": 2 * x}


SCHEMA = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_every_failure_is_an_error_message_in_bounded_time(isolation):
    hangs = _spins if isolation == "process" else _sleeps
    tools = [Tool(fn=f, description="t", parameters=SCHEMA) for f in (_raises, hangs, _not_json, _huge, _ok)]
    ex = ToolExecutor(tools, timeout=0.5, max_result_chars=100, isolation=isolation)
    cases = [
        ("_raises", {"x": 1}, "RuntimeError: boom"),
        (hangs.__name__, {"x": 1}, "timed out after 0.5 s"),
        ("_not_json", {"x": 1}, "not JSON"),
        ("_huge", {"x": 1}, "> the limit of 100"),
        ("nope", {"x": 1}, "unknown tool 'nope'"),
        ("_ok", [1], "must be a JSON object"),
        ("_ok", {"y": 1}, "TypeError"),
    ]
    for name, args, msg in cases:
        t0 = time.monotonic()
        ok, text = ex.call(name, args)
        assert not ok and msg in json.loads(text)["error"], (name, text)
        assert time.monotonic() - t0 < 3.0
    assert ex.call("_ok", {"x": 4}) == (True, '{"double": 8}')


def test_duplicate_names_and_bad_isolation_are_config_errors():
    with pytest.raises(ValueError, match="unique"):
        ToolExecutor([Tool(fn=_ok, description="", parameters=SCHEMA)] * 2)
    with pytest.raises(ValueError, match="valid: process, thread"):
        ToolExecutor([], isolation="docker")
