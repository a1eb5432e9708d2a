"""Tool use: one safe reader of tool calls, and the three benchmarks' scorers, rule for rule.

Two completion formats are read, never evaluated:

* **ours** (ToolRL's and API-Bank's system prompts ask for it)::

      <think> reasoning </think>
      <tool_call>
      {"name": "ToolName", "parameters": {"arg": "value"}}
      </tool_call>
      <response> final reply </response>

  :func:`parse_completion` is the strict reading (one block, one JSON object ``{"name", "parameters"}`` per
  line); it decides the *format-valid* rate an evaluation reports.
* **BFCL's prompting format**, a Python list of calls ``[f(a=1), g(b="x")]``: :func:`decode_python_calls`
  parses it with :mod:`ast` and reads the tree (names, keyword arguments, literals, arithmetic on numbers
  within bounds); nothing is executed.

Scorers (``docs/tool_use.md`` states every rule and where each benchmark's own checker differs from a naive
reading):

* :func:`bfcl_check` / :func:`bfcl_reward`: BFCL's AST checker (simple, multiple, parallel, parallel_multiple)
  with its failure reasons;
* :func:`api_bank_check` / :func:`api_bank_reward`: API-Bank as ToolRL scores it (any parsed call equal to the
  gold call: a soft match);
* :func:`toolrl_reward`: ToolRL's training reward, format (0 or 1 by the gold completion's shape) plus
  correctness in [-3, 3] with its partial credit.

Bad output never raises and never hangs: completions over :data:`MAX_COMPLETION_CHARS`, JSON nested past the
interpreter's limit, ``NaN``/``Infinity``, integers too long to convert, non-object parameters, unknown
functions all score 0 (ToolRL: its floor), in time linear in the completion's length.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

#: longer completions are not read (a model's tool call is a few hundred characters; 100 000 is generous)
MAX_COMPLETION_CHARS = 100_000
#: more calls than this in one completion are a format error
MAX_CALLS = 64
#: bounds on arithmetic inside a decoded BFCL call (``4.0/2`` is evaluated, ``9**9**9`` is not)
MAX_POW_EXPONENT, MAX_INT_BITS, MAX_AST_NODES = 64, 256, 20_000

# failure reasons, as the eval reports count them
OK = "ok"
DECODE = "decode_failed"
WRONG_COUNT = "wrong_count"
WRONG_NAME = "wrong_func_name"
MISSING_REQUIRED = "missing_required"
UNEXPECTED_PARAM = "unexpected_param"
TYPE_ERROR = "type_error"
VALUE_ERROR = "value_error"
MISSING_OPTIONAL = "missing_optional"
NO_MATCH = "cannot_find_match"
REASONS = (DECODE, WRONG_COUNT, WRONG_NAME, MISSING_REQUIRED, UNEXPECTED_PARAM, TYPE_ERROR, VALUE_ERROR)
REASONS += (MISSING_OPTIONAL, NO_MATCH)


# ------------------------------------------------------------------------------------------ our format


@dataclass(frozen=True)
class Parsed:
    """A completion read by :func:`parse_completion`: ``calls`` in order (``()`` when malformed), the
    ``<think>``/``<response>`` contents (``None`` when absent) and ``error`` (``None``: format-valid)."""

    calls: tuple[dict[str, Any], ...]
    think: str | None
    response: str | None
    error: str | None

    @property
    def valid(self) -> bool:
        return self.error is None


def _blocks(text: str, tag: str) -> tuple[list[str], str | None]:
    """Contents of every ``<tag>...</tag>`` (linear scan) and an error for an unclosed or stray tag."""
    open_t, close_t = f"<{tag}>", f"</{tag}>"
    out, i = [], 0
    while (j := text.find(open_t, i)) >= 0:
        k = text.find(close_t, j + len(open_t))
        if k < 0:
            return out, f"unclosed {open_t}"
        out.append(text[j + len(open_t) : k])
        i = k + len(close_t)
    if text.count(close_t) != len(out):
        return out, f"stray {close_t}"
    return out, None


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ValueError(f"duplicate key {next(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)!r}")
    return d


def load_json(text: str, *, strict: bool = True) -> Any:
    """JSON with every failure a ``ValueError``: over-deep nesting (``RecursionError``) and integers too long
    to convert included. ``strict``: duplicate keys and ``NaN``/``Infinity`` are errors too (Python's
    ``json`` accepts both; the benchmarks' scripts use it, so ``strict=False`` reads as they do)."""
    try:
        if strict:
            return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def parse_call(line: str) -> dict[str, Any]:
    """One tool-call line as ``{"name": str, "parameters": dict}``; ``ValueError`` says what is wrong."""
    obj = load_json(line)
    if not isinstance(obj, dict):
        raise ValueError(f"a tool call must be a JSON object, got {type(obj).__name__}")
    if set(obj) != {"name", "parameters"}:
        raise ValueError(f"a tool call has exactly the keys name and parameters, got {sorted(obj)}")
    if not isinstance(obj["name"], str) or not obj["name"].strip():
        raise ValueError("the tool name must be a non-empty string")
    if not isinstance(obj["parameters"], dict):
        raise ValueError(f"parameters must be a JSON object, got {type(obj['parameters']).__name__}")
    return obj


def parse_completion(text: Any) -> Parsed:
    """The strict reading of our format (module docstring). Never raises."""
    if not isinstance(text, str):
        return Parsed((), None, None, f"completion is {type(text).__name__}, not text")
    if len(text) > MAX_COMPLETION_CHARS:
        return Parsed((), None, None, f"completion has {len(text)} > {MAX_COMPLETION_CHARS} characters")
    think, err_t = _blocks(text, "think")
    response, err_r = _blocks(text, "response")
    blocks, err = _blocks(text, "tool_call")
    if err is None and not blocks:
        err = "no <tool_call> block"
    if err is None and len(blocks) > 1:
        err = f"{len(blocks)} <tool_call> blocks (one block, one call per line)"
    calls: list[dict[str, Any]] = []
    if err is None:
        lines = [ln.strip() for ln in blocks[0].split("\n") if ln.strip()]
        if not lines:
            err = "empty <tool_call> block"
        elif len(lines) > MAX_CALLS:
            err = f"{len(lines)} tool calls > {MAX_CALLS}"
        for n, ln in enumerate(lines if err is None else [], 1):
            try:
                calls.append(parse_call(ln))
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                err, calls = f"tool call line {n}: {e}", []
                break
    think_s = think[0].strip() if len(think) == 1 else None
    resp_s = response[0].strip() if len(response) == 1 else None
    return Parsed(tuple(calls), think_s, resp_s, err or err_t or err_r)


def render_calls(calls: list[dict[str, Any]], *, think: str = "I call the tools the request needs.") -> str:
    """A completion in our format for ``calls`` (gold answers rendered for SFT targets and tests)."""
    body = "\n".join(json.dumps({"name": c["name"], "parameters": c["parameters"]}) for c in calls)
    return f"<think> {think} </think>\n<tool_call>\n{body}\n</tool_call>"


# ---------------------------------------------------------------------------------- BFCL: decoding


class DecodeError(ValueError):
    """The completion is not a list of Python calls BFCL's decoder reads."""


#: the binary operators arithmetic read from a syntax tree may apply (BFCL's decoder here; the calculator tool)
ARITH_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _arith(node: ast.BinOp, source: str) -> Any:
    """BFCL evaluates arithmetic in arguments (``4.0/2`` -> 2.0); here on numbers only, within bounds."""
    a, b = _value(node.left, source), _value(node.right, source)
    op = ARITH_OPS.get(type(node.op))
    if op is None or not (_number(a) and _number(b)):
        raise DecodeError(f"unsupported expression {ast.unparse(node)[:60]!r}")
    if isinstance(node.op, ast.Pow) and (abs(b) > MAX_POW_EXPONENT or abs(a) > 2**MAX_INT_BITS):
        raise DecodeError("exponent out of bounds")
    try:
        out = op(a, b)
    except (ArithmeticError, ValueError) as e:
        raise DecodeError(f"arithmetic error: {e}") from None
    if isinstance(out, int) and out.bit_length() > MAX_INT_BITS or isinstance(out, complex):
        raise DecodeError("arithmetic result out of bounds")
    return out


def _call_name(func: ast.expr) -> str:
    """``math.factorial`` from an attribute chain, ``f`` from a name."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        raise DecodeError("a call's function must be a (dotted) name")
    return ".".join([func.id, *reversed(parts)])


def _call(node: ast.Call, source: str) -> dict[str, dict[str, Any]]:
    # BFCL keeps keyword arguments only: a positional argument is dropped (and then usually fails as missing)
    params = {}
    for kw in node.keywords:
        if kw.arg is None:  # **kwargs
            raise DecodeError("** arguments are not decoded")
        params[kw.arg] = _value(kw.value, source)
    return {_call_name(node.func): params}


def _value(node: ast.expr, source: str) -> Any:
    """An argument's value, read from the tree as BFCL's decoder reads it (nothing is executed)."""
    if isinstance(node, ast.Constant):
        return "..." if node.value is Ellipsis else node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _value(node.operand, source)
        if not _number(v):
            raise DecodeError("a sign on something that is not a number")
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.List):
        return [_value(e, source) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_value(e, source) for e in node.elts)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise DecodeError("** in a dict literal is not decoded")
        out = {}
        for k, v in zip(node.keys, node.values):
            key = _value(k, source)
            try:
                out[key] = _value(v, source)
            except TypeError:  # an unhashable key
                raise DecodeError("unhashable dict key") from None
        return out
    if isinstance(node, ast.Name):  # a bare name is its identifier: unit=meters -> "meters"
        return node.id
    if isinstance(node, ast.BinOp):
        return _arith(node, source)
    if isinstance(node, ast.Call):  # a nested call: its source text, or {name: {kwargs}} when it has kwargs
        return _call(node, source) if node.keywords else ast.get_source_segment(source, node)
    if isinstance(node, ast.Subscript):
        return ast.get_source_segment(source, node)
    raise DecodeError(f"unsupported value {type(node).__name__}")


def decode_python_calls(text: Any) -> list[dict[str, dict[str, Any]]]:
    """BFCL's prompting-mode decoder: ``[f(a=1), m.g(b="x")]`` -> ``[{"f": {"a": 1}}, {"m.g": {"b": "x"}}]``.

    As BFCL does: backticks, newlines and spaces are stripped from both ends, ``[`` / ``]`` added when missing,
    then whitespace and ``'`` stripped from both ends; a bare call is a one-element list; every element must be
    a call. Raises :class:`DecodeError` on anything else (prose after the list, a ```` ```python ```` fence,
    a syntax error, limits exceeded)."""
    if not isinstance(text, str):
        raise DecodeError(f"completion is {type(text).__name__}, not text")
    if len(text) > MAX_COMPLETION_CHARS:
        raise DecodeError(f"completion has {len(text)} > {MAX_COMPLETION_CHARS} characters")
    s = text.strip("` \n")
    if not s.startswith("["):
        s = "[" + s
    if not s.endswith("]"):
        s = s + "]"
    s = s.strip().strip("'")
    try:
        tree = ast.parse(s, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as e:
        raise DecodeError(f"not Python ({type(e).__name__})") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_AST_NODES:
        raise DecodeError("too many syntax nodes")
    body = tree.body
    elts = [body] if isinstance(body, ast.Call) else body.elts if isinstance(body, ast.List) else None
    if elts is None or not all(isinstance(e, ast.Call) for e in elts):
        raise DecodeError("not a list of calls")
    try:
        return [_call(e, s) for e in elts]
    except RecursionError:
        raise DecodeError("nested too deeply") from None


# ---------------------------------------------------------------------------------- BFCL: checking

#: BFCL's schema type -> Python type (``tuple`` is checked as a list, ``any`` as a string)
BFCL_TYPES = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "any": str,
}
BFCL_CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple")
_STRIPPED = str.maketrans("", "", " ,./-_*^")


def bfcl_normalise(s: str) -> str:
    """BFCL's string normalisation: spaces and ``,./-_*^`` removed, lower case, ``'`` -> ``"`` (nothing else:
    tabs, newlines, other punctuation and unicode stay)."""
    return s.translate(_STRIPPED).lower().replace("'", '"')


def _norm(v: Any) -> Any:
    return bfcl_normalise(v) if isinstance(v, str) else v


def _answer_type(acceptable: list[Any]) -> type | None:
    return next((type(a) for a in acceptable if a != ""), None)


def _type_ok(value: Any, acceptable: list[Any], expected: type, inner: type | None) -> tuple[bool, bool]:
    """``(type accepted, value is a "variable")`` as BFCL's type checker decides.

    When the answer's values have another type than the schema's, a value of the answer's type is taken
    for a variable and compared by plain membership. Arrays are checked one level deep, against each
    acceptable value that is a list; an acceptable value that is not a list (``""``) passes, so an optional
    array's elements are not type-checked (BFCL's quirk, kept)."""
    ans_t = _answer_type(acceptable)
    variable = ans_t is not None and ans_t is not expected
    if type(value) is expected:
        if inner is None:
            return True, variable
        for a in acceptable:
            if not isinstance(a, list) or all(_type_ok(x, a, inner, None)[0] for x in value):
                return True, variable
        return False, False
    if ans_t is not None and type(value) is ans_t:
        return True, True
    return False, False


def _dict_ok(value: dict, acceptable: list[Any]) -> bool:
    """One level: every key of ``value`` is a key of some acceptable dict, with a value among its
    (normalised) acceptable values, and every key left out has ``""`` among its values."""
    for a in acceptable:
        if not isinstance(a, dict):
            continue
        if all(k in a and _norm(v) in [_norm(x) for x in a[k]] for k, v in value.items()) and all(
            k in value or "" in vals for k, vals in a.items()
        ):
            return True
    return False


def bfcl_check_call(call: dict[str, dict[str, Any]], doc: dict[str, Any], answer: dict[str, dict]) -> str:
    """One decoded call ``{name: params}`` against one function doc and one gold entry ``{name: {param:
    [acceptable values]}}``: :data:`OK` or the failure reason (BFCL's ``simple_function_checker`` for
    Python)."""
    ((gold_name, accepted),) = answer.items()
    name = doc.get("name")
    if name not in call:
        return WRONG_NAME
    params = call[name]
    if not isinstance(params, dict):
        return TYPE_ERROR
    schema = doc.get("parameters") or {}
    props = schema.get("properties") or {}
    if any(p not in params for p in schema.get("required") or []):
        return MISSING_REQUIRED  # schema-required wins even when the answer marks it optional
    for p, value in params.items():
        if p not in props or p not in accepted:
            return UNEXPECTED_PARAM  # unknown to the schema, or not listed by the answer
        declared = props[p].get("type")
        expected = BFCL_TYPES.get(declared)
        if expected is None:
            return TYPE_ERROR
        inner = BFCL_TYPES.get((props[p].get("items") or {}).get("type")) if declared in ("array", "tuple") else None
        if declared == "tuple" and type(value) is tuple:
            value = list(value)  # a tuple is accepted for a tuple parameter (not for an array one)
        if declared == "float" and type(value) is int:
            value = float(value)  # int accepted for float; never the reverse, and bool is not int
        ok, variable = _type_ok(value, accepted[p], expected, inner)
        if not ok:
            return TYPE_ERROR
        if variable:
            good = value in accepted[p]
        elif expected is dict:
            good = _dict_ok(value, accepted[p])
        elif expected is list and inner is dict:
            good = any(
                isinstance(a, list) and len(a) == len(value) and all(_dict_ok(v, [d]) for v, d in zip(value, a))
                for a in accepted[p]
            )
        elif expected is str:
            good = bfcl_normalise(value) in [bfcl_normalise(a) for a in accepted[p] if isinstance(a, str)]
        elif expected is list:  # in order, same length, strings normalised
            good = [_norm(v) for v in value] in [[_norm(x) for x in a] for a in accepted[p] if isinstance(a, list)]
        else:  # numbers and booleans: exact membership, no tolerance
            good = value in accepted[p]
        if not good:
            return VALUE_ERROR
    # every answer parameter left out must be marked optional ("" among its values)
    return OK if all(p in params or "" in vals for p, vals in accepted.items()) else MISSING_OPTIONAL


def _doc(functions: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((f for f in functions if f.get("name") == name), None)


def bfcl_check(
    calls: list[dict[str, dict[str, Any]]], functions: list[dict[str, Any]], ground_truth: list[dict], category: str
) -> str:
    """Decoded ``calls`` against a row's function docs and ground truth: :data:`OK` or the reason.

    Dispatch by the category's name, as BFCL does: ``parallel`` in it -> every gold entry matched, order-free,
    by the first unused call that passes; else ``multiple`` -> one call, checked against the gold function's
    doc; else (simple) -> exactly one call, against the first doc."""
    if not all(isinstance(c, dict) and len(c) == 1 and isinstance(next(iter(c.values())), dict) for c in calls):
        return DECODE
    if len(calls) != len(ground_truth):
        return WRONG_COUNT
    if "parallel" in category:
        used: set[int] = set()
        for gold in ground_truth:
            doc = _doc(functions, next(iter(gold)))
            hit = (
                None
                if doc is None
                else next(
                    (i for i, c in enumerate(calls) if i not in used and bfcl_check_call(c, doc, gold) == OK), None
                )
            )
            if hit is None:
                return NO_MATCH
            used.add(hit)
        return OK
    if "multiple" in category:
        doc = _doc(functions, next(iter(ground_truth[0])))
        return WRONG_NAME if doc is None else bfcl_check_call(calls[0], doc, ground_truth[0])
    return bfcl_check_call(calls[0], functions[0], ground_truth[0])


def bfcl_score(completion: Any, functions: list[dict[str, Any]], ground_truth: list[dict], category: str) -> str:
    """Decode a prompting-mode completion and check it: :data:`OK` or the failure reason. Never raises."""
    try:
        calls = decode_python_calls(completion)
    except DecodeError:
        return DECODE
    try:
        return bfcl_check(calls, functions, ground_truth, category)
    except RecursionError:  # a value nested past the interpreter's limit
        return TYPE_ERROR


def bfcl_render(calls: list[dict[str, dict[str, Any]]]) -> str:
    """``[{"f": {"a": 1}}]`` -> ``[f(a=1)]``: calls in BFCL's prompting format (Python literals)."""
    return (
        "["
        + ", ".join(f"{n}({', '.join(f'{k}={v!r}' for k, v in p.items())})" for c in calls for n, p in c.items())
        + "]"
    )


def bfcl_gold_calls(ground_truth: list[dict], functions: list[dict[str, Any]]) -> list[dict[str, dict[str, Any]]]:
    """One correct call per gold entry: each parameter's first acceptable value, with the three choices BFCL's
    rules force: a schema-required parameter takes its first value that is not ``""``; a ``dict`` parameter
    (and each dict of a list of dicts) takes the first acceptable value of each inner key; answer keys that
    are not schema properties (which no call can supply) and parameters whose first value is ``""`` are left
    out."""

    def first(vals: list[Any], required: bool) -> Any:
        return next((v for v in vals if v != ""), "") if required else vals[0]

    def inner(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: x[0] for k, x in v.items() if isinstance(x, list) and x and x[0] != ""}
        if isinstance(v, list) and v and all(isinstance(d, dict) for d in v):
            return [inner(d) for d in v]
        return v

    out = []
    for entry in ground_truth:
        ((name, accepted),) = entry.items()
        doc = _doc(functions, name) or {}
        schema = doc.get("parameters") or {}
        props, required = schema.get("properties") or {}, set(schema.get("required") or [])
        params = {}
        for p, vals in accepted.items():
            v = first(vals, p in required)
            if p in props and v != "":
                params[p] = inner(v)
        out.append({name: params})
    return out


def bfcl_reward(completion: Any, functions: list[dict[str, Any]], ground_truth: list[dict], category: str) -> float:
    return float(bfcl_score(completion, functions, ground_truth, category) == OK)


# --------------------------------------------------------------------------------------------- API-Bank


def api_bank_calls(completion: str) -> list[Any]:
    """The JSON objects ToolRL's API-Bank script reads from a completion: the lines after the *last*
    ``<tool_call>`` up to the next ``</tool_call>`` (or the end); without any ``<tool_call>``, every line of
    the completion. Blank lines and lines that are not JSON are dropped."""
    if "<tool_call>" in completion:
        completion = completion.rsplit("<tool_call>", 1)[1].split("</tool_call>", 1)[0]
    out = []
    for line in completion.split("\n"):
        if line.strip():
            try:
                out.append(load_json(line.strip(), strict=False))
            except ValueError:
                continue
    return out


def api_bank_check(completion: Any, answer: Any) -> str:
    """:data:`OK` when any read call equals the gold call (API-Bank's first call when the answer is a list):
    the same name and the same parameters (exact dict equality, type-sensitive: ``"3"`` is not ``3``).
    Extra calls do not hurt (ToolRL's soft match). An object without ``name`` and ``parameters`` is read as
    the parameters of a call to the gold tool; a value that is not an object stops the scan (as the
    script's exception does). Never raises."""
    gold = answer[0] if isinstance(answer, list) and answer else answer
    if not isinstance(gold, dict) or "name" not in gold or "parameters" not in gold:
        return DECODE
    if not isinstance(completion, str) or len(completion) > MAX_COMPLETION_CHARS:
        return DECODE
    calls = api_bank_calls(completion)
    reason = DECODE if not calls else WRONG_NAME
    for c in calls:
        if not isinstance(c, dict):
            reason = DECODE if reason == WRONG_NAME else reason
            break
        if "name" not in c or "parameters" not in c:
            c = {"name": gold["name"], "parameters": c}
        if c["name"] != gold["name"]:
            continue
        p, g = c["parameters"], gold["parameters"]
        if p == g:
            return OK
        if not isinstance(p, dict):
            reason = TYPE_ERROR
        elif set(g) - set(p):
            reason = MISSING_REQUIRED
        elif set(p) - set(g):
            reason = UNEXPECTED_PARAM
        elif any(type(p[k]) is not type(g[k]) for k in g):
            reason = TYPE_ERROR
        else:
            reason = VALUE_ERROR
    return reason


def api_bank_reward(completion: Any, answer: Any) -> float:
    return float(api_bank_check(completion, answer) == OK)


# ----------------------------------------------------------------------------------------------- ToolRL

TOOLRL_FORMAT = (0.0, 1.0)  # (min, max)
TOOLRL_CORRECT = (-3.0, 3.0)


def _once(t: str, tag: str) -> int:
    """The index of ``tag`` when ``t`` holds it exactly once, else -1."""
    return t.find(tag) if t.count(tag) == 1 else -1


def _think_before(t: str, i: int) -> bool:
    """``t`` opens with ``<think>`` and a ``</think>\n`` after it ends exactly at ``i``."""
    return t.startswith("<think>") and t[:i].endswith("</think>\n") and i - len("</think>\n") >= len("<think>")


def toolrl_format(completion: str, gold: str) -> float:
    """ToolRL's format reward: max when the completion has the shape the gold completion has, else min.

    The shapes are ToolRL's anchored patterns (dot matching newlines): ``<think>...</think>`` first; then
    ``\n<tool_call>\n...\n</tool_call>`` when the gold calls a tool and ``\n<response>...</response>`` when
    it responds (both: the call block first), the last block ending the text, each of those tags exactly once.
    Checked here by position, in linear time, rather than with a pattern that can backtrack. The completion is
    stripped first, as ToolRL's extraction of the assistant turn does."""
    lo, hi = TOOLRL_FORMAT
    if not isinstance(completion, str) or len(completion) > MAX_COMPLETION_CHARS:
        return lo
    t = completion.strip()
    has_call, has_resp = "<tool_call>" in gold, "<response>" in gold
    if not has_call and not has_resp:
        return hi if t.startswith("<think>") and t.endswith("</think>") and len(t) >= 15 else lo
    end = len(t)
    if has_resp:  # <response>...</response> ends the text
        r, rc = _once(t, "<response>"), _once(t, "</response>")
        if r < 0 or rc < 0 or rc + len("</response>") != end or rc < r + len("<response>"):
            return lo
        if not has_call:
            return hi if _think_before(t, r) else lo
        if not t[:r].endswith("\n"):
            return lo
        end = r - 1
    c, cc = _once(t, "<tool_call>"), _once(t, "</tool_call>")
    if c < 0 or cc < 0 or cc + len("</tool_call>") != end:
        return lo
    # <tool_call>\n (...) \n</tool_call>: the two newlines are distinct characters
    ok = t.startswith("<tool_call>\n", c) and t[cc - 1] == "\n" and cc - 1 >= c + len("<tool_call>\n")
    return hi if ok and _think_before(t, c) else lo


def _match_score(a: list[Any], b: list[Any]) -> float:
    """ToolRL's overlap: 1 for equal lists, 0 when either is empty, else the multiset Jaccard index."""
    if a == b:
        return 1.0
    if not a or not b:
        return 0.0
    inter = sum((Counter(map(_hashable, a)) & Counter(map(_hashable, b))).values())
    return inter / (len(a) + len(b) - inter)


def _hashable(x: Any) -> Any:
    return json.dumps(x, sort_keys=True) if isinstance(x, (dict, list)) else x


def _toolrl_calls(text: str) -> list[dict[str, Any]]:
    """The calls of the *first* ``<tool_call>`` block, one JSON object per line (a blank line is an error)."""
    if "<tool_call>" not in text or "</tool_call>" not in text:
        raise ValueError("no <tool_call> block")
    block = text.split("<tool_call>", 1)[1].split("</tool_call>", 1)[0].strip()
    calls = [load_json(line) for line in block.split("\n")]
    if len(calls) > MAX_CALLS or not all(
        isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("parameters"), dict) for c in calls
    ):
        raise ValueError("a tool call must be an object with a name and a parameters object")
    return calls


def toolrl_correctness(completion: str, gold: str) -> float:
    """ToolRL's correctness reward in [-3, 3]: 0 when the gold completion calls no tool; the floor when the
    completion's calls cannot be read; the ceiling when they equal the gold calls (same order); else the
    partial credit: name overlap, plus for each gold call (in order) the best unused predicted call of the
    same name (parameter-name overlap + number of equal values), normalised by 1 + sum(1 + #gold params)."""
    lo, hi = TOOLRL_CORRECT
    if "<tool_call>" not in gold:
        return 0.0
    try:
        if not isinstance(completion, str) or len(completion) > MAX_COMPLETION_CHARS:
            raise ValueError("not a completion")
        want, got = _toolrl_calls(gold), _toolrl_calls(completion.strip())
        if want == got:
            return hi
        score, norm, used = _match_score([c["name"] for c in want], [c["name"] for c in got]), 1.0, set()
        for g in want:
            gp = g["parameters"]
            norm += 1 + len(gp)
            best, best_i = 0.0, None
            for i, p in enumerate(got):
                if i in used or p["name"] != g["name"]:
                    continue
                pp = p["parameters"]
                s = _match_score(list(gp), list(pp)) + sum(1 for k, v in gp.items() if k in pp and pp[k] == v)
                if s > best:
                    best, best_i = s, i
            if best_i is not None:
                used.add(best_i)
                score += best
        return (hi - lo) * score / norm + lo
    except (ValueError, TypeError, RecursionError):
        return lo


def toolrl_reward(completion: Any, gold: str) -> float:
    """ToolRL's training reward: :func:`toolrl_format` + :func:`toolrl_correctness` (in [-3, 4])."""
    if not isinstance(completion, str):
        return TOOLRL_FORMAT[0] + (TOOLRL_CORRECT[0] if "<tool_call>" in gold else 0.0)
    value = toolrl_format(completion, gold) + toolrl_correctness(completion, gold)
    return value if math.isfinite(value) else TOOLRL_FORMAT[0] + TOOLRL_CORRECT[0]


# ------------------------------------------------------------------------------ task family: records
#
# Each benchmark's record becomes ``{"messages", "answer", "solution", "group"}`` (``PromptDataModule``'s
# ``record_fn``): the chat turns of the prompt, the string its reward compares with, an SFT target in the format
# the scorer parses, and the level / category the metrics are grouped by.

#: our BFCL prompt (prompting mode): the functions as JSON and the answer format, in our own words
BFCL_SYSTEM = (
    "You are an expert in composing functions. You are given a question and a set of possible functions. Based "
    "on the question, make one or more function calls to achieve the purpose. If none of the functions can be "
    "used, point it out. If the question lacks the parameters a function requires, point that out too.\n"
    "Answer with the function calls only, in this format: [func_name1(param_name1=value1, param_name2=value2), "
    "func_name2(param=value)]. Do not write any other text.\n"
    "Here is the list of functions you can call, in JSON format:\n{functions}"
)
PYTHON_NOTE = " Note that the provided function is in Python 3 syntax."


def _text(rec: dict[str, Any], key: str) -> str:
    v = rec.get(key)
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"missing or empty {key!r} (fields: {sorted(rec)})")
    return v


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def shorten_think(text: str, sentences: int) -> str:
    """``text`` with the content of its first ``<think>...</think>`` block cut to its first ``sentences``
    sentences (split after ``.``, ``!`` or ``?`` followed by whitespace); everything else unchanged. A text
    without a closed think block is returned as is."""
    if sentences < 1:
        raise ValueError(f"sentences must be >= 1, got {sentences}")
    start, end = text.find("<think>"), text.find("</think>")
    if start < 0 or end < start:
        return text
    body = text[start + len("<think>") : end].strip()
    kept = " ".join(_SENTENCE_END.split(body)[:sentences])
    return f"{text[:start]}<think> {kept} {text[end:]}"


def toolrl_record(rec: Any, *, think_sentences: int | None = None) -> dict[str, Any]:
    """ToolRL's SFT file: system = ``instruction``, user = ``input``; ``output`` is the reference completion
    (the reward's gold and the SFT target). ``think_sentences``: the SFT target keeps only the first sentences
    of its ``<think>`` (ToolRL's thoughts run ~300 tokens before the first call; a short thought keeps the
    format, which asks for a think field, at a generation length CPU runs can afford). The gold is untouched."""
    if not isinstance(rec, dict):
        raise ValueError(f"expected an object, got {type(rec).__name__}")
    out = _text(rec, "output")
    msgs = [{"role": "system", "content": _text(rec, "instruction")}, {"role": "user", "content": _text(rec, "input")}]
    target = out if think_sentences is None else shorten_think(out, think_sentences)
    return {"messages": msgs, "answer": out, "solution": target, "group": "toolrl"}


def api_bank_gold(answer: Any) -> list[dict[str, Any]]:
    """API-Bank's gold as a list of calls (level 2 stores one object); ``ValueError`` when malformed."""
    calls = [answer] if isinstance(answer, dict) else answer
    if not isinstance(calls, list) or not calls:
        raise ValueError(f"the answer must be a call or a non-empty list of calls, got {answer!r:.80}")
    for c in calls:
        if not (isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("parameters"), dict)):
            raise ValueError(f"a gold call needs a name and a parameters object, got {c!r:.80}")
    return calls


def api_bank_record(rec: Any, *, level: int | str | None = None) -> dict[str, Any]:
    """API-Bank (ToolRL's processing): system = ``system``, user = ``user``; the answer is the gold calls' JSON."""
    if not isinstance(rec, dict):
        raise ValueError(f"expected an object, got {type(rec).__name__}")
    gold = api_bank_gold(rec.get("answer"))
    msgs = [{"role": "system", "content": _text(rec, "system")}, {"role": "user", "content": _text(rec, "user")}]
    group = f"level{level}" if level is not None else "all"
    return {"messages": msgs, "answer": json.dumps(gold), "solution": render_calls(gold), "group": group}


def tools_prompt(tools: list[Any], *, style: str = "json") -> str:
    """The tools (each tool's ``.schema``, :class:`src.rollout.tools.Tool`) and our call format, as the system text
    of a prompt whose policy may call them mid-rollout. ``style``: ``json`` lists the full JSON schemas (what chat
    templates' ``tools=`` carry); ``brief`` lists ``name(param, ...)`` only (short prompts for tiny models)."""
    if style == "json":
        listed = "\n".join(json.dumps(t.schema, sort_keys=True) for t in tools)
    elif style == "brief":
        listed = "\n".join(
            f"{t.schema['function']['name']}({', '.join(t.schema['function']['parameters'].get('properties', {}))})"
            for t in tools
        )
    else:
        raise ValueError(f"tools prompt style={style!r}; valid: json, brief")
    return (
        "You can call these tools:\n"
        f"{listed}\n"
        "To call one, write <tool_call>\n"
        '{"name": <tool name>, "parameters": {<arguments>}}\n'
        "</tool_call> and wait for the <tool_response>."
    )


def tool_response_text(results: list[str]) -> str:
    """Tool results as plain text after a policy turn (prompts without a chat template): one
    ``<tool_response>`` block per result, then a newline."""
    return "".join(f"\n<tool_response>\n{r}\n</tool_response>" for r in results) + "\n"


def tool_prompt_record(
    rec: Any,
    *,
    tools: list[Any],
    question_key: str = "question",
    answer_key: str = "answer",
    instruction: str = "",
    style: str = "json",
) -> dict[str, Any]:
    """Any question/answer record (GSM8K, ...) as a prompt whose policy may call ``tools``: system = the tools and
    the call format (:func:`tools_prompt`), user = the question and ``instruction``; the answer is passed on for
    the task's verifier, a ``solution`` for SFT. A record with a ``context`` (the policy's earlier turns and the
    tool responses, as the rollout wrote them) becomes a plain-text prompt ending in that context (``data.chat``
    false), so SFT can teach the turn after a tool response without ever training on the response."""
    if not isinstance(rec, dict):
        raise ValueError(f"expected an object, got {type(rec).__name__}")
    question = _text(rec, question_key)
    user = f"{question}\n{instruction}" if instruction else question
    system = tools_prompt(tools, style=style)
    out: dict[str, Any] = {"answer": rec.get(answer_key)}
    if rec.get("solution") is not None:
        out["solution"] = rec["solution"]
    if rec.get("context") is not None:
        out["prompt"] = f"{system}\n\n{user}{rec['context']}"
    else:
        out["messages"] = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return out


def calculator_call(expression: str) -> str:
    return f'<tool_call>\n{{"name": "calculator", "parameters": {{"expression": "{expression}"}}}}\n</tool_call>'


def calculator_problems(
    *, num_examples: int = 2000, low: int = 10, high: int = 99, seed: int = 0, sft: bool = False
) -> list[dict[str, Any]]:
    """Distinct products ``{"question": "What is 37 times 48?", "answer": "1776"}`` that a small model cannot
    compute but can hand to the calculator. ``sft``: two records per problem, the call turn (solution = the
    call) and the answer turn (context = the call and the calculator's response as the rollout appends them,
    solution = ``#### <answer>``)."""
    import random

    pairs = [(a, b) for a in range(low, high + 1) for b in range(low, high + 1)]
    if num_examples > len(pairs):
        raise ValueError(f"only {len(pairs)} distinct problems with operands in [{low}, {high}]")
    rows: list[dict[str, Any]] = []
    for a, b in random.Random(seed).sample(pairs, num_examples):
        rec = {"question": f"What is {a} times {b}?", "answer": str(a * b)}
        if not sft:
            rows.append(rec)
            continue
        call = calculator_call(f"{a}*{b}")
        rows.append({**rec, "solution": call})
        rows.append({**rec, "context": call + tool_response_text([json.dumps(a * b)]), "solution": f"#### {a * b}"})
    return rows


class BFCLRecords:
    """BFCL question rows joined with their ground truth (the ``*_answers.json`` file beside them, or
    ``answers_path``), as prompting-mode chat prompts: our system prompt with the function docs (each description
    with BFCL's Python note), then the question's first turn."""

    def __init__(self, *, path: str, answers_path: str | None = None, category: str | None = None) -> None:
        """``path``: the question file; ``answers_path`` (default: ``<stem>_answers.json`` beside it) and
        ``category`` (default: from the file name, ``BFCL_v4_<category>.json``)."""
        if category is None:
            stem = path.replace("\\", "/").rsplit("/", 1)[-1].split(".")[0]
            category = next((c for c in sorted(BFCL_CATEGORIES, key=len, reverse=True) if stem.endswith(c)), None)
            if category is None:
                raise ValueError(f"{path}: cannot tell the BFCL category from the name; set its category")
        if category not in BFCL_CATEGORIES:
            raise ValueError(f"BFCL category {category!r}; valid: {', '.join(BFCL_CATEGORIES)}")
        self.answers_path, self.category = answers_path or bfcl_answers_path(path), category
        self._answers: dict[str, Any] | None = None

    def answers(self) -> dict[str, Any]:
        if self._answers is None:
            from src.datamodules.records import load_records

            self._answers = {r["id"]: r["ground_truth"] for r in load_records(self.answers_path)}
        return self._answers

    def __call__(self, rec: Any) -> dict[str, Any]:
        if not isinstance(rec, dict):
            raise ValueError(f"expected an object, got {type(rec).__name__}")
        rid, functions, question = rec.get("id"), rec.get("function"), rec.get("question")
        gt = self.answers().get(rid)
        if gt is None:
            raise ValueError(f"no ground truth for id {rid!r} in {self.answers_path}")
        if not isinstance(functions, list) or not functions or not all(isinstance(f, dict) for f in functions):
            raise ValueError("missing 'function' docs")
        if not (isinstance(question, list) and question and isinstance(question[0], list) and question[0]):
            raise ValueError("'question' must be a list of turns, each a list of messages")
        if not isinstance(gt, list) or not all(isinstance(g, dict) and len(g) == 1 for g in gt):
            raise ValueError(f"the ground truth of {rid!r} must be a list of one-function objects")
        docs = [{**f, "description": str(f.get("description", "")) + PYTHON_NOTE} for f in functions]
        system = BFCL_SYSTEM.replace("{functions}", json.dumps(docs, indent=1))
        msgs = [{"role": "system", "content": system}, *[m for m in question[0] if m.get("role") != "system"]]
        answer = json.dumps({"functions": functions, "ground_truth": gt, "category": self.category})
        return {
            "messages": msgs,
            "answer": answer,
            "solution": bfcl_render(bfcl_gold_calls(gt, functions)),
            "group": self.category,
        }


def bfcl_answers_path(question_path: str) -> str:
    """``.../BFCL_v4_simple_python.json`` -> ``.../BFCL_v4_simple_python_answers.json``."""
    head, dot, suffix = question_path.rpartition(".json")
    return f"{head}_answers{dot}{suffix}" if dot else f"{question_path}_answers"


# ------------------------------------------------------------------------------ task family: scoring
#
# ``(completion, answer) -> float`` rewards for ``data.reward`` (the answer is the record's ``answer`` string), and
# ``(completion, answer) -> (score, reason)`` scorers for ``eval.py task=api_bank|bfcl|toolrl``.


def api_bank_score(completion: Any, answer: str) -> tuple[float, str]:
    reason = api_bank_check(completion, json.loads(answer))
    return float(reason == OK), reason


def bfcl_task_score(completion: Any, answer: str) -> tuple[float, str]:
    a = json.loads(answer)
    reason = bfcl_score(completion, a["functions"], a["ground_truth"], a["category"])
    return float(reason == OK), reason


def toolrl_score(completion: Any, answer: str) -> tuple[float, str]:
    r = toolrl_reward(completion, answer)
    return r, OK if r == TOOLRL_FORMAT[1] + (TOOLRL_CORRECT[1] if "<tool_call>" in answer else 0.0) else "partial"


def api_bank_task_reward(completion: Any, answer: str) -> float:
    return api_bank_score(completion, answer)[0]


def bfcl_task_reward(completion: Any, answer: str) -> float:
    return bfcl_task_score(completion, answer)[0]


def format_valid(completion: Any, answer: str) -> bool:
    """Whether ``completion`` is well-formed for the task whose ``answer`` this is: BFCL's Python list decodes;
    otherwise our format reads strictly (or, for a gold that calls no tool, has a ``<response>`` block)."""
    try:
        a = json.loads(answer)
    except ValueError:
        a = None
    if isinstance(a, dict) and "ground_truth" in a:
        try:
            decode_python_calls(completion)
            return True
        except DecodeError:
            return False
    if isinstance(answer, str) and "<think>" in answer and "<tool_call>" not in answer:
        return toolrl_format(completion, answer) == TOOLRL_FORMAT[1]
    return parse_completion(completion).valid


def describe(completion: Any, answer: str) -> dict[str, Any]:
    """What an evaluation records beside the score: the calls as the task's scorer reads them (JSON-safe) and
    whether the completion is well-formed (:func:`format_valid`)."""
    try:
        a = json.loads(answer)
    except ValueError:
        a = None
    calls: Any
    try:
        if isinstance(a, dict) and "ground_truth" in a:
            calls = decode_python_calls(completion)
        else:
            calls = api_bank_calls(completion) if isinstance(completion, str) else []
        calls = json.loads(json.dumps(calls, default=str))  # tuples as lists, anything odd as text
    except (DecodeError, ValueError, RecursionError):
        calls = None
    return {"calls": calls, "format_valid": format_valid(completion, answer)}
