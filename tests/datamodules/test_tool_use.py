"""Tool-use parsing and the three benchmarks' scorers (src/datamodules/tasks/tool_use.py).

Golden values are derived by hand from the benchmarks' rules (docs/tool_use.md); the ToolRL partial-credit
values are worked out in the comments. Gold answers of every shipped fixture score the maximum, and BFCL's
"naive first value" calls reproduce the exact failure counts of the benchmark's own checker on the full files
(6 / 3 / 2 / 5 failures in simple_python / multiple / parallel / parallel_multiple), whose failing rows the
fixtures include."""

import json
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from src.datamodules.tasks import tool_use as tu
from src.datamodules.tasks.tool_use import OK

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "tool_use"


def _bfcl(cat):
    qs = [json.loads(line) for line in (FIX / "bfcl" / f"BFCL_v4_{cat}.json").read_text().splitlines()]
    ans = {
        r["id"]: r["ground_truth"]
        for r in map(json.loads, (FIX / "bfcl" / f"BFCL_v4_{cat}_answers.json").read_text().splitlines())
    }
    return [(q, ans[q["id"]]) for q in qs]


# ------------------------------------------------------------------------------------------ gold fixtures


@pytest.mark.parametrize("cat", tu.BFCL_CATEGORIES)
def test_bfcl_gold_calls_of_every_fixture_row_score_one(cat):
    rows = _bfcl(cat)
    assert len(rows) >= 15
    for q, gt in rows:
        text = tu.bfcl_render(tu.bfcl_gold_calls(gt, q["function"]))
        assert tu.bfcl_score(text, q["function"], gt, cat) == OK, (q["id"], text)


@pytest.mark.parametrize(
    "cat, failures",
    [
        ("simple_python", {"value_error": 5, "missing_required": 1}),
        ("multiple", {"value_error": 3}),
        ("parallel", {"cannot_find_match": 2}),
        ("parallel_multiple", {"cannot_find_match": 5}),
    ],
)
def test_bfcl_naive_first_values_fail_where_the_benchmark_does(cat, failures):
    """Each parameter's first acceptable value, without the three adjustments BFCL's rules force (dict
    values not unwrapped, "" passed over for required parameters, answer keys outside the schema kept):
    BFCL's own checker fails 6 / 3 / 2 / 5 rows of the full files; the fixtures hold all of them."""
    got = Counter()
    for q, gt in _bfcl(cat):
        calls = [{n: {k: v[0] for k, v in p.items() if v[0] != ""}} for e in gt for n, p in e.items()]
        got[tu.bfcl_score(tu.bfcl_render(calls), q["function"], gt, cat)] += 1
    assert {k: v for k, v in got.items() if k != OK} == failures


def test_api_bank_gold_of_every_fixture_row_scores_one():
    for level in (1, 2, 3):
        rows = json.loads((FIX / f"api_bank_level{level}.json").read_text())
        for r in rows:
            calls = [r["answer"]] if isinstance(r["answer"], dict) else r["answer"]  # level 2: a bare object
            assert tu.api_bank_check(tu.render_calls(calls), r["answer"]) == OK, r["answer"]


def test_toolrl_references_score_the_maximum_of_their_shape():
    rows = [json.loads(line) for line in (FIX / "toolrl_rlla_test.jsonl").read_text().splitlines()]
    for r in rows:
        g = r["ground_truth"]
        assert tu.toolrl_reward(g, g) == (4.0 if "<tool_call>" in g else 1.0)  # format 1 + correctness 3 (or 0)
    sft = json.loads((FIX / "toolrl_rlla_sft.json").read_text())
    mentions = [r for r in sft if r["output"].count("<tool_call>") > 1]
    for r in sft:
        if r not in mentions:
            assert tu.toolrl_reward(r["output"], r["output"]) == (4.0 if "<tool_call>" in r["output"] else 1.0)
    # 8 references name "<tool_call>" inside their <think>: ToolRL reads the *first* block, so they score its
    # floor as written (format 0, correctness -3); their real calls (the last block) rendered in the format the
    # reward parses score the maximum
    assert len(mentions) == 8
    for r in mentions:
        assert tu.toolrl_reward(r["output"], r["output"]) == -3.0
        calls = tu.api_bank_calls(r["output"])
        gold = tu.render_calls(calls)
        assert tu.toolrl_reward(gold, gold) == 4.0


# ------------------------------------------------------------------------------------------ BFCL: rules

DOC = {
    "name": "geo.area",
    "parameters": {
        "type": "dict",
        "properties": {
            "side": {"type": "float"},
            "count": {"type": "integer"},
            "exact": {"type": "boolean"},
            "unit": {"type": "string"},
            "dims": {"type": "array", "items": {"type": "float"}},
            "pair": {"type": "tuple", "items": {"type": "integer"}},
            "opts": {"type": "dict"},
            "extra": {"type": "string"},
        },
        "required": ["side"],
    },
}
GT = {
    "geo.area": {
        "side": [2.0],
        "count": [3, ""],
        "exact": [True, ""],
        "unit": ["square meters", ""],
        "dims": [[1.0, 2.5], ""],
        "pair": [[1, 2], ""],
        "opts": [{"min": [1], "max": [5, ""]}, ""],
    }
}


def _check(src, doc=DOC, gt=GT, cat="simple_python"):
    return tu.bfcl_score(src, [doc], [gt], cat)


@pytest.mark.parametrize(
    "src, reason",
    [
        ("[geo.area(side=2)]", OK),  # an int is accepted for a float
        ("[geo.area(side=2.0, count=3.0)]", "type_error"),  # never a float for an int
        ("[geo.area(side=2.0, count=True)]", "type_error"),  # bool is not int
        ("[geo.area(side=2.0, exact=1)]", "type_error"),  # nor int bool
        ("[geo.area(side=2.00001)]", "value_error"),  # floats compare exactly
        ("[geo.area(side=2.0, unit='Square-Meters')]", OK),  # spaces and ,./-_*^ removed, lower case
        ("[geo.area(side=2.0, unit='square_meters.')]", OK),
        ("[geo.area(side=2.0, unit='sq m')]", "value_error"),
        ("[geo.area(side=2.0, unit='square\\tmeters')]", "value_error"),  # a tab is not removed
        ("[geo.area(side=2.0, dims=[1.0, 2.5])]", OK),
        ("[geo.area(side=2.0, dims=[2.5, 1.0])]", "value_error"),  # lists compare in order
        ("[geo.area(side=2.0, dims=(1.0, 2.5))]", "type_error"),  # a tuple is not an array
        ("[geo.area(side=2.0, pair=(1, 2))]", OK),  # but is a tuple
        ("[geo.area(side=2.0, pair=[1, 2])]", OK),
        ("[geo.area(side=2.0, opts={'min': 1})]", OK),  # an optional key of a dict value left out
        ("[geo.area(side=2.0, opts={'min': 1, 'max': 5})]", OK),
        ("[geo.area(side=2.0, opts={'min': 1, 'step': 2})]", "value_error"),  # a key the answer lacks
        ("[geo.area(side=2.0, opts={'max': 5})]", "value_error"),  # a required key of the dict left out
        ("[geo.area(side=2.0, extra='x')]", "unexpected_param"),  # in the schema, not in the answer
        ("[geo.area(side=2.0, bogus='x')]", "unexpected_param"),  # in neither
        ("[geo.area(count=3)]", "missing_required"),
        ("[geo.area(2.0)]", "missing_required"),  # positional arguments are dropped by the decoder
        ("[geo_area(side=2.0)]", "wrong_func_name"),  # dots are not rewritten for prompting models
        ("[geo.area(side=2.0), geo.area(side=2.0)]", "wrong_count"),
        ("geo.area(side=2.0)", OK),  # a bare call
        ("```\n[geo.area(side=2.0)]\n```", OK),  # backticks stripped
        ("```python\n[geo.area(side=2.0)]\n```", "decode_failed"),  # the leftover 'python' is not a call
        ("[geo.area(side=2.0)] I hope this helps", "decode_failed"),
        ("[geo.area(side=4.0/2)]", OK),  # arithmetic on numbers is evaluated
        ("[geo.area(side=-(-2.0))]", OK),
        ("[geo.area(side=2.0, unit=square_meters)]", OK),  # a bare name decodes to its identifier
        ("[geo.area(side=2.0, count=9**9**9)]", "decode_failed"),  # out of bounds, never computed
        ("[geo.area(side=2.0, unit='x'*10**9)]", "decode_failed"),
        ("[geo.area(side=2.0, **{'count': 3})]", "decode_failed"),
        ("[]", "wrong_count"),
    ],
)
def test_bfcl_rules(src, reason):
    assert _check(src) == reason


def test_bfcl_required_wins_over_an_answer_that_marks_it_optional_and_omissions_need_the_empty_mark():
    doc = {
        "name": "f",
        "parameters": {"properties": {"a": {"type": "float"}, "b": {"type": "string"}}, "required": ["a"]},
    }
    assert _check("[f(b='x')]", doc, {"f": {"a": ["", 25.0], "b": ["x"]}}) == "missing_required"
    assert _check("[f(a=25.0)]", doc, {"f": {"a": ["", 25.0], "b": ["x"]}}) == "missing_optional"  # b has no ""
    assert _check("[f(a=25, b='')]", doc, {"f": {"a": [25.0], "b": ["x", ""]}}) == OK  # "" passed for a string


def test_bfcl_variables_and_the_optional_array_quirk():
    doc = {
        "name": "f",
        "parameters": {"properties": {"n": {"type": "integer"}, "xs": {"type": "array", "items": {"type": "float"}}}},
    }
    # the answer's value is a string where the schema says integer: a string is taken for a variable name
    assert _check("[f(n='k')]", doc, {"f": {"n": ["k"]}}) == OK
    assert _check("[f(n='j')]", doc, {"f": {"n": ["k"]}}) == "value_error"
    # ints in a float array: a type error when the array is required by the answer, not when it may be omitted
    assert _check("[f(xs=[1, 2])]", doc, {"f": {"xs": [[1.0, 2.0]]}}) == "type_error"
    assert _check("[f(xs=[1, 2])]", doc, {"f": {"xs": [[1.0, 2.0], ""]}}) == OK  # 1 == 1.0 by value


def test_bfcl_parallel_is_order_free_first_fit_with_exact_counts():
    docs = [
        {"name": "f", "parameters": {"properties": {"x": {"type": "integer"}}}},
        {"name": "g", "parameters": {"properties": {"y": {"type": "string"}}}},
    ]
    gt = [{"f": {"x": [1]}}, {"g": {"y": ["a"]}}, {"f": {"x": [2]}}]
    score = lambda s, cat="parallel_multiple": tu.bfcl_score(s, docs, gt, cat)  # noqa: E731
    assert score("[f(x=2), g(y='A'), f(x=1)]") == OK  # any order
    assert score("[f(x=2), g(y='a'), f(x=1), f(x=1)]") == "wrong_count"  # an extra call
    assert score("[f(x=1), g(y='a'), f(x=1)]") == "cannot_find_match"  # one call cannot cover two answers
    assert score("[f(x=1), g(y='a'), f(x=1)]", "parallel") == "cannot_find_match"


def test_bfcl_multiple_checks_the_first_call_against_the_gold_function():
    docs = [
        {"name": "f", "parameters": {"properties": {"x": {"type": "integer"}}}},
        {"name": "g", "parameters": {"properties": {"x": {"type": "integer"}}}},
    ]
    assert tu.bfcl_score("[g(x=1)]", docs, [{"g": {"x": [1]}}], "multiple") == OK
    assert tu.bfcl_score("[f(x=1)]", docs, [{"g": {"x": [1]}}], "multiple") == "wrong_func_name"


def test_decoder_reads_the_tree_as_bfcl_does():
    got = tu.decode_python_calls("[a.b.c(x=[1, (2, 3)], y={'k': -1.5}, z=None, w=..., v=g(1), u=h(t=1), s=l[0])]")
    assert got == [
        {
            "a.b.c": {
                "x": [1, (2, 3)],
                "y": {"k": -1.5},
                "z": None,
                "w": "...",
                "v": "g(1)",
                "u": {"h": {"t": 1}},
                "s": "l[0]",
            }
        }
    ]
    assert tu.bfcl_normalise("New York, NY") == tu.bfcl_normalise("new york ny") == "newyorkny"
    assert tu.bfcl_normalise("It's") == 'it"s'


# ------------------------------------------------------------------------------------------- API-Bank


def test_api_bank_is_a_soft_exact_match_as_toolrl_scores_it():
    gold = [{"name": "Search", "parameters": {"q": "34567890"}}]
    call = lambda name, params: json.dumps({"name": name, "parameters": params})  # noqa: E731
    block = lambda *lines: "<think> t </think>\n<tool_call>\n" + "\n".join(lines) + "\n</tool_call>"  # noqa: E731
    assert tu.api_bank_check(block(call("Other", {}), call("Search", {"q": "34567890"})), gold) == OK  # extras ok
    assert tu.api_bank_check(block(call("Search", {"q": 34567890})), gold) == "type_error"  # "3" is not 3
    assert tu.api_bank_check(block(call("Search", {"q": "1"})), gold) == "value_error"
    assert tu.api_bank_check(block(call("Search", {})), gold) == "missing_required"
    assert tu.api_bank_check(block(call("Search", {"q": "34567890", "n": "1"})), gold) == "unexpected_param"
    assert tu.api_bank_check(block(call("Find", {"q": "34567890"})), gold) == "wrong_func_name"
    assert tu.api_bank_check(block('{"q": "34567890"}'), gold) == OK  # parameters alone: a call to the gold tool
    assert tu.api_bank_check(block("not json", call("Search", {"q": "34567890"})), gold) == OK  # dropped line
    assert tu.api_bank_check(block("[1]", call("Search", {"q": "34567890"})), gold) == "decode_failed"  # stops
    # the last block is read; without any block, every line of the text
    two = block(call("Search", {"q": "34567890"})) + "\n" + block(call("Search", {"q": "0"}))
    assert tu.api_bank_check(two, gold) == "value_error"
    assert tu.api_bank_check("I will call\n" + call("Search", {"q": "34567890"}), gold) == OK
    assert tu.api_bank_check("no calls at all", gold) == "decode_failed"
    assert tu.api_bank_check(block(call("Search", {"q": "34567890"})), gold[0]) == OK  # level 2: a bare object


# --------------------------------------------------------------------------------------------- ToolRL

A = {"name": "A", "parameters": {"x": "1", "y": "2"}}
B = {"name": "B", "parameters": {"z": "3"}}
GOLD = "<think> plan </think>\n<tool_call>\n" + json.dumps(A) + "\n" + json.dumps(B) + "\n</tool_call>"


def _completion(*calls):
    return "<think> t </think>\n<tool_call>\n" + "\n".join(json.dumps(c) for c in calls) + "\n</tool_call>"


@pytest.mark.parametrize(
    "calls, correct",
    [
        # normaliser = 1 + (1 + 2) + (1 + 1) = 6; reward = 6 * score / 6 - 3 = score - 3
        ((A, B), 3.0),  # equal lists: the maximum
        ((B, A), 3.0),  # names Jaccard 1 + A (1 + 2) + B (1 + 1) = 6
        ((A,), 0.5),  # names 1/2 + A 3 = 3.5
        (({"name": "A", "parameters": {"x": "1", "y": "9"}}, B), 2.0),  # 1 + (1 + 1) + 2 = 5
        (({"name": "A", "parameters": {"x": 1, "y": "2"}}, B), 2.0),  # values are type-sensitive
        (({"name": "A", "parameters": {"x": "1"}}, B), 1.5),  # 1 + (1/2 + 1) + 2 = 4.5
        (({"name": "A", "parameters": {"x": "1", "y": "2", "w": "0"}}, B), 2 + 2 / 3),  # 1 + (2/3 + 2) + 2
        ((A, B, {"name": "C", "parameters": {}}), 2 + 2 / 3),  # names 2/3 + 3 + 2
        (({"name": "C", "parameters": {"x": "1"}}, {"name": "D", "parameters": {}}), -3.0),  # no name in common
    ],
)
def test_toolrl_partial_credit(calls, correct):
    c = _completion(*calls)
    assert tu.toolrl_correctness(c, GOLD) == pytest.approx(correct)
    assert tu.toolrl_reward(c, GOLD) == pytest.approx(1.0 + correct)  # the shape is right: format 1


def test_toolrl_format_follows_the_gold_shape():
    resp = "<think> t </think>\n<response> hi </response>"
    both = "<think> t </think>\n<tool_call>\n" + json.dumps(A) + "\n</tool_call>\n<response> hi </response>"
    calls = _completion(A)
    assert tu.toolrl_format(calls, GOLD) == 1.0 and tu.toolrl_format("  " + calls + "\n", GOLD) == 1.0  # stripped
    assert tu.toolrl_format(both, GOLD) == 0.0  # a response the gold does not have
    assert tu.toolrl_format(calls.replace("</think>\n", "</think>"), GOLD) == 0.0  # the newline is required
    assert tu.toolrl_format(calls.replace("<tool_call>\n", "<tool_call>"), GOLD) == 0.0
    assert tu.toolrl_format(calls + "\n" + calls, GOLD) == 0.0  # two blocks
    assert tu.toolrl_format(both, both) == 1.0 and tu.toolrl_format(calls, both) == 0.0
    assert tu.toolrl_format(resp, resp) == 1.0 and tu.toolrl_format(calls, resp) == 0.0
    assert tu.toolrl_format("<think> only </think>", "<think> x </think>") == 1.0
    assert tu.toolrl_correctness(calls, resp) == 0.0  # no gold call: correctness 0 whatever the completion does
    # unreadable calls: correctness at its floor, the format judged alone
    bad = "<think> t </think>\n<tool_call>\n{not json}\n</tool_call>"
    assert tu.toolrl_correctness(bad, GOLD) == -3.0 and tu.toolrl_format(bad, GOLD) == 1.0
    blank = "<think> t </think>\n<tool_call>\n" + json.dumps(A) + "\n\n" + json.dumps(B) + "\n</tool_call>"
    assert tu.toolrl_correctness(blank, GOLD) == -3.0  # a blank line inside the block is an unreadable call
    assert tu.toolrl_reward(resp, GOLD) == -3.0  # no call block: format 0, correctness -3


# ------------------------------------------------------------------------------------ our strict reader


def test_parse_completion_reads_our_format_and_says_what_is_wrong():
    p = tu.parse_completion(_completion(A, B) + "\n<response> done </response>")
    assert p.valid and p.calls == (A, B) and p.think == "t" and p.response == "done"
    cases = {
        "<think> t </think>": "no <tool_call> block",
        "<tool_call>\n" + json.dumps(A): "unclosed <tool_call>",
        _completion(A) + "\n" + _completion(B): "2 <tool_call> blocks",
        '<tool_call>\n{"name": "A", "parameters": {}, "name": "B"}\n</tool_call>': "duplicate key 'name'",
        '<tool_call>\n{"name": "A", "parameters": [1]}\n</tool_call>': "parameters must be a JSON object",
        '<tool_call>\n{"name": "A", "parameters": {"x": NaN}}\n</tool_call>': "NaN is not a JSON number",
    }
    for text, why in cases.items():
        assert why in tu.parse_completion(text).error, (text, tu.parse_completion(text).error)


# --------------------------------------------------------------------------------- garbage, bounded time

DEEP = "[" * 10_000 + "]" * 10_000
GARBAGE = [
    "x" * 1_000_000,
    "<tool_call>\n" + '{"name": "A", "parameters": ' + DEEP + "}\n</tool_call>",
    "<tool_call>\n" + '{"name": "A", "parameters": {"x": ' + "{" * 10_000 + "}" * 10_000 + "}}\n</tool_call>",
    '<tool_call>\n{"name": "A", "parameters": {"x": NaN, "y": Infinity}}\n</tool_call>',
    '<tool_call>\n{"name": "A", "parameters": {"x": ' + "9" * 50_000 + "}}\n</tool_call>",
    '<tool_call>\n{"name": "A", "parameters": "x=1"}\n</tool_call>',
    '<tool_call>\n{"name": "Unknown", "parameters": {}}\n</tool_call>',
    '<tool_call>\n{"name": "A", "param',  # truncated
    "<tool_call><tool_call></tool_call></tool_call>" * 1000,
    "<think>" + "</think>\n<response>" * 30_000,
    DEEP,
    "[f(a=" + "9" * 5000 + ")]",
    "[f(" + "a=1, " * 30_000 + ")]",
    "f(" * 5000 + ")" * 5000,
    None,
    12,
]


@pytest.mark.parametrize("text", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_scores_zero_or_the_floor_quickly_and_never_raises(text):
    doc = {"name": "A", "parameters": {"properties": {"x": {"type": "string"}}, "required": ["x"]}}
    t = time.perf_counter()
    assert tu.bfcl_score(text, [doc], [{"A": {"x": ["1"]}}], "simple_python") != OK
    assert tu.api_bank_reward(text, [{"name": "A", "parameters": {"x": "1"}}]) == 0.0
    assert tu.toolrl_reward(text, GOLD) == pytest.approx(-3.0)  # format 0 + correctness floor
    p = tu.parse_completion(text)
    assert p.valid == (isinstance(text, str) and "Unknown" in text)  # well-formed (its score is 0)
    assert time.perf_counter() - t < 1.0  # per completion, all four readers


# ------------------------------------------------------------------------------------ presets and eval


def _dm(data, path, char_tok, *extra):
    from hydra.utils import instantiate

    from tests.conftest import compose_cfg

    cfg = compose_cfg([f"data={data}", f"data.path={path}", "data.chat=false", *extra])
    dm = instantiate(cfg.data, tokenizer=char_tok)
    dm.max_prompt_length = 100_000  # the char tokenizer spends a token per character
    dm.setup("fit")
    return dm, instantiate(cfg.data.reward)


@pytest.mark.parametrize(
    "data, path, group",
    [
        ("api_bank", FIX / "api_bank_level2.json", "level2"),
        ("bfcl", FIX / "bfcl" / "BFCL_v4_parallel_multiple.json", "parallel_multiple"),
        ("toolrl", FIX / "toolrl_rlla_sft.json", "toolrl"),
    ],
)
def test_presets_read_their_files_and_their_solutions_score_the_maximum(data, path, group, char_tok):
    extra = ["data.level=2"] if data == "api_bank" else []
    dm, reward = _dm(data, path, char_tok, *extra)
    rows = [*dm.train_set.rows, *dm.val_set.rows]
    assert {r["group"] for r in rows} == {group}
    from src.datamodules.records import load_records

    for raw in load_records(str(path)):
        rec = dm.record_fn(raw)
        if data != "toolrl" or rec["solution"].count("<tool_call>") <= 1:  # 8 ToolRL references: see above
            top = (4.0 if "<tool_call>" in rec["answer"] else 1.0) if data == "toolrl" else 1.0
            assert reward(rec["solution"], rec["answer"]) == top
    for r in rows:  # the SFT target is the solution, cut to max_answer_length tokens
        target = dm.tokenizer.decode(r["target_ids"], skip_special_tokens=True)
        assert target and dm.record_fn  # non-empty
    if data == "bfcl":  # the system prompt carries the docs with BFCL's Python note; the answers were joined
        assert tu.PYTHON_NOTE.strip() in rows[0]["prompt"] and json.loads(rows[0]["answer"])["category"] == group


def test_bfcl_record_needs_its_answers_and_a_category(tmp_path):
    q = tmp_path / "questions.json"
    q.write_text((FIX / "bfcl" / "BFCL_v4_simple_python.json").read_text())
    with pytest.raises(ValueError, match="cannot tell the BFCL category"):
        tu.BFCLRecords(path=str(q))
    rec = tu.BFCLRecords(path=str(q), category="simple_python", answers_path=str(tmp_path / "none.json"))
    with pytest.raises(Exception, match="none.json"):
        rec(json.loads(q.read_text().splitlines()[0]))


class GoldOrNot:
    """A rollout backend that answers with the gold calls on even rows and with prose on odd ones."""

    solutions: list[str] = []
    pos = 0

    def __init__(self, tokenizer):
        self.tok = tokenizer

    def generate(self, model, ids, mask, *, n, max_new_tokens, do_sample, **kw):
        from src.rollout.hf import build_rollout

        rows = range(GoldOrNot.pos, GoldOrNot.pos + ids.shape[0])
        GoldOrNot.pos += ids.shape[0]
        comp = torch.full((len(rows), max_new_tokens), self.tok.eos_token_id)
        ro = build_rollout(self.tok, ids, mask, comp, n)
        ro.texts = [GoldOrNot.solutions[i] if i % 2 == 0 else "I cannot help with that." for i in rows]
        return ro


def _stub_eval(tmp_path, monkeypatch, solutions, overrides):
    """``evaluate_task`` with :class:`GoldOrNot` answering: the gold on even rows, prose on odd ones."""
    import src.rollout.hf as rollout
    from src.eval import evaluate_task
    from tests.conftest import compose_cfg

    GoldOrNot.solutions, GoldOrNot.pos = solutions, 0
    monkeypatch.setattr(rollout, "HFGenerateBackend", GoldOrNot)
    common = ["task.chat=false", "task.max_prompt_length=100000", "task.max_new_tokens=4", "task.batch_size=2"]
    return evaluate_task(compose_cfg([*overrides, *common], config_name="eval", tmp_path=tmp_path))


def test_eval_bfcl_reports_accuracy_reasons_and_parsed_calls(tmp_path, monkeypatch):
    path = FIX / "bfcl" / "BFCL_v4_simple_python.json"
    solutions = [tu.bfcl_render(tu.bfcl_gold_calls(gt, q["function"])) for q, gt in _bfcl("simple_python")[:5]]
    metrics, value = _stub_eval(tmp_path, monkeypatch, solutions, ["task=bfcl", f"task.path={path}", "task.limit=5"])
    g = "eval/bfcl"
    assert value == metrics[f"{g}/accuracy"] == metrics[f"{g}/simple_python/accuracy"] == 3 / 5  # rows 0, 2, 4
    assert metrics[f"{g}/format_valid"] == 3 / 5 and metrics[f"{g}/fail/decode_failed"] == 2
    written = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    assert [w["reason"] for w in written] == ["ok", "decode_failed", "ok", "decode_failed", "ok"]
    assert written[0]["calls"] == json.loads(json.dumps(tu.decode_python_calls(solutions[0])))
    assert written[1]["calls"] is None and all(w["group"] == "simple_python" and w["prompt"] for w in written)


def test_eval_api_bank_on_a_level_file(tmp_path, monkeypatch):
    path = FIX / "api_bank_level3.json"
    solutions = [tu.render_calls(tu.api_bank_gold(r["answer"])) for r in json.loads(path.read_text())[:4]]
    overrides = ["task=api_bank", f"task.path={path}", "task.level=3", "task.limit=4"]
    metrics, _ = _stub_eval(tmp_path, monkeypatch, solutions, overrides)
    assert metrics["eval/api_bank/level3/accuracy"] == metrics["eval/api_bank/accuracy"] == 0.5
    assert metrics["eval/api_bank/format_valid"] == 0.5 and metrics["eval/api_bank/fail/decode_failed"] == 2


def test_shorten_think_keeps_the_first_sentences_and_everything_after():
    text = (
        'pre <think> Okay, A. Then B? Then C!\nD. </think>\n<tool_call>\n{"name": "f", "parameters": {}}\n</tool_call>'
    )
    assert (
        tu.shorten_think(text, 1)
        == 'pre <think> Okay, A. </think>\n<tool_call>\n{"name": "f", "parameters": {}}\n</tool_call>'
    )
    assert (
        tu.shorten_think(text, 2)
        == 'pre <think> Okay, A. Then B? </think>\n<tool_call>\n{"name": "f", "parameters": {}}\n</tool_call>'
    )
    assert (
        tu.shorten_think(text, 9)
        == 'pre <think> Okay, A. Then B? Then C! D. </think>\n<tool_call>\n{"name": "f", "parameters": {}}\n</tool_call>'
    )
    assert tu.shorten_think("no think here", 1) == "no think here"
    assert tu.shorten_think("<think> open only", 1) == "<think> open only"
    with pytest.raises(ValueError, match="sentences"):
        tu.shorten_think(text, 0)


def test_toolrl_record_shortens_only_the_sft_target():
    rec = json.loads((FIX / "toolrl_rlla_sft.json").read_text())[0]
    full, short = tu.toolrl_record(rec), tu.toolrl_record(rec, think_sentences=2)
    assert full["solution"] == full["answer"] == short["answer"] == rec["output"]
    assert len(short["solution"]) < len(rec["output"])
    # the shortened target is still a well-formed ToolRL completion that earns the full reward against the gold
    assert tu.toolrl_reward(short["solution"], rec["output"]) == tu.toolrl_reward(rec["output"], rec["output"])
