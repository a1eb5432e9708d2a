"""Multi-turn rollouts with tool calls: the action mask is exactly the policy's tokens, tool responses are context
with zero weight in OPD's terms, the KV cache is kept across turns, and rows do not depend on their batch."""

import json

import pytest
import torch

from src.losses import distillation_advantages, opd_loss
from src.models.tiny import tiny_causal_lm
from src.rollout.hf import completion_logps
from src.rollout.multiturn import ToolRolloutEngine, read_calls
from src.rollout.tools import Tool
from src.rollout.types import RolloutEngine, ToolRollout
from src.utils.keyed_random import row_keys
from tests.helpers.remote_code import prompt_batch

CALC = Tool(fn="src.rollout.tools.calculator")
CALL = '<tool_call>\n{{"name": "calculator", "parameters": {{"expression": "{}"}}}}\n</tool_call>'
TURNS = [CALL.format("2+3"), CALL.format("5*4"), "#### 20"]


class Scripted(ToolRolloutEngine):
    """The policy's turns come from a script (the loop, the tools and the masks are the engine's)."""

    def __init__(self, tok, script, **kw):
        super().__init__(tok, tools=[CALC], use_chat_template=False, **kw)
        self.script, self.sampled = script, []

    def _turn_hf(self, model, cur, cache, budget, prompt_width, sampling, key):
        turn = len([s for s in self.sampled if s[0] == self._row_id])
        text = self.script[turn] + (self.tokenizer.eos_token if turn == len(self.script) - 1 else "")
        ids = torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        self.sampled.append((self._row_id, ids))
        return ids, None

    def _row(self, model, prompt, budget, sampling, key):
        self._row_id = len({s[0] for s in self.sampled})
        return super()._row(model, prompt, budget, sampling, key)


@pytest.fixture()
def student(char_tok):
    return tiny_causal_lm(char_tok, hidden_size=32, num_layers=1, num_heads=2, seed=1)


@pytest.fixture()
def teacher(char_tok):
    return tiny_causal_lm(char_tok, hidden_size=32, num_layers=1, num_heads=2, seed=2)


def test_read_calls():
    assert read_calls(TURNS[0]) == ([{"name": "calculator", "parameters": {"expression": "2+3"}}], None)
    assert read_calls("no call")[1] == "no <tool_call> ... </tool_call> block"
    calls, err = read_calls('<tool_call>\n{"name": 1}\n</tool_call>')
    assert calls == [] and err.startswith("tool call line 1 could not be read")


def test_a_three_turn_rollout(char_tok, student, teacher):
    """Three policy turns around two tool responses: the action mask is 1 exactly on the scripted turns' tokens,
    the responses hold the calculator's results, and OPD's divergence estimate and per-token terms see only the
    policy's tokens (hand-computed from full forwards)."""
    _, b = prompt_batch(char_tok, ["What is (2+3)*4? "])
    eng = Scripted(char_tok, TURNS)
    assert isinstance(eng, RolloutEngine)
    ro = eng.generate(student, b["prompt_ids"], b["prompt_mask"], n=1, max_new_tokens=400, do_sample=False)
    assert isinstance(ro, ToolRollout)
    assert (ro.turns.tolist(), ro.tool_calls.tolist(), ro.tool_errors.tolist()) == ([3], [2], [0])
    assert [m["role"] for m in ro.transcripts[0]] == ["assistant", "tool", "assistant", "tool", "assistant"]
    assert [json.loads(m["content"]) for m in ro.transcripts[0][1::2]] == [5, 20]
    comp, act = ro.completion_ids[0], ro.action_mask[0]
    # the action mask is exactly where the script's tokens went, in order
    pieces, pos = [], 0
    for _, ids in eng.sampled:
        while not torch.equal(comp[pos : pos + len(ids)], ids):
            pos += 1
        pieces.append(range(pos, pos + len(ids)))
        pos += len(ids)
    want = torch.zeros_like(act)
    for r in pieces:
        want[list(r)] = 1
    assert torch.equal(act, want) and int(act.sum()) == sum(len(ids) for _, ids in eng.sampled)
    env = (act == 0) & (ro.attention_mask[0, ro.prompt_len :] == 1)
    assert "<tool_response>\n5\n</tool_response>" in char_tok.decode(comp[env])
    assert ro.texts[0].endswith("#### 20") and "tool_response" not in ro.texts[0]  # rewards read the policy's text
    assert "<tool_response>\n20\n</tool_response>" in ro.full_texts[0]  # the sample table shows everything
    # log-probs: the fused path scores action tokens only, equal to a full forward's, 0 on tool tokens
    s_lp, t_lp = completion_logps(student, ro), completion_logps(teacher, ro)
    P = ro.prompt_len
    for model, lp in ((student, s_lp), (teacher, t_lp)):
        full = torch.log_softmax(model(input_ids=ro.sequences).logits.float(), -1)[0]
        hand = full[P - 1 : -1].gather(-1, comp[:, None]).squeeze(-1)
        torch.testing.assert_close(lp[0][act.bool()], hand[act.bool()], rtol=0, atol=1e-5)
        assert bool((lp[0][~act.bool()] == 0).all())
    _, est = distillation_advantages(s_lp, t_lp, ro.action_mask, divergence="reverse_kl")
    hand_kl = float((s_lp - t_lp)[0][act.bool()].sum())
    torch.testing.assert_close(est[0].double(), torch.tensor(hand_kl).double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("estimator", ["opd", "opd_plus"])
def test_tool_tokens_get_exactly_zero_gradient(char_tok, student, teacher, estimator):
    _, b = prompt_batch(char_tok, ["What is (2+3)*4? "])
    ro = Scripted(char_tok, TURNS).generate(student, b["prompt_ids"], b["prompt_mask"], max_new_tokens=400)
    s_lp = completion_logps(student, ro, fused=False).detach().requires_grad_(True)  # every position scored
    t_lp = completion_logps(teacher, ro, fused=False).detach()
    out = opd_loss(s_lp, t_lp, ro.action_mask, estimator=estimator, divergence="forward_kl")
    (g,) = torch.autograd.grad(out.loss, s_lp)
    act = ro.action_mask.bool()
    assert bool((g[~act] == 0).all()) and bool((g[act] != 0).any())


def test_tool_budget_and_turn_limits(char_tok, student):
    _, b = prompt_batch(char_tok, ["q "])
    ro = Scripted(char_tok, TURNS, max_turns=2).generate(
        student, b["prompt_ids"], b["prompt_mask"], max_new_tokens=400
    )
    assert ro.turns.tolist() == [2] and ro.tool_calls.tolist() == [1]  # no tool response after the last turn
    assert ro.transcripts[0][-1]["role"] == "assistant"
    first = len(char_tok(TURNS[0], add_special_tokens=False)["input_ids"])
    ro = Scripted(char_tok, TURNS).generate(student, b["prompt_ids"], b["prompt_mask"], max_new_tokens=first + 5)
    assert ro.turns.tolist() == [1] and ro.tool_calls.tolist() == [0]  # the result would not fit: not appended
    assert int(ro.action_mask.sum()) == first and int(ro.attention_mask[0, ro.prompt_len :].sum()) == first


def test_a_bad_call_becomes_an_error_message_the_policy_reads(char_tok, student):
    _, b = prompt_batch(char_tok, ["q "])
    script = ['<tool_call>\n{"name": "calculator", "parameters": {"expression": "2**999"}}\n</tool_call>', "#### ?"]
    ro = Scripted(char_tok, script).generate(student, b["prompt_ids"], b["prompt_mask"], max_new_tokens=300)
    assert ro.tool_errors.tolist() == [1] and "exponent 999 exceeds 64" in ro.transcripts[0][1]["content"]


def test_the_kv_cache_is_kept_across_turns(char_tok, student):
    """The second turn's generate feeds only the last sampled token and the tool response to the model (the
    cache covers the prefix) and decodes exactly what a fresh, uncached call on the whole prefix decodes."""
    eng = ToolRolloutEngine(char_tok, tools=[CALC], use_chat_template=False)
    prompt = torch.tensor([char_tok("1+2=", add_special_tokens=False)["input_ids"]])
    sampling = {"do_sample": False, "temperature": 1.0, "top_p": 1.0}
    new, cache = eng._turn_hf(student, prompt, None, 6, prompt.shape[1], sampling, None)
    env = torch.tensor([char_tok("\n<tool_response>\n3\n</tool_response>\n", add_special_tokens=False)["input_ids"]])
    cur = torch.cat([prompt, new[None], env], 1)
    widths = []
    hook = student.register_forward_pre_hook(
        lambda m, a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        cached, _ = eng._turn_hf(student, cur, cache, 6, prompt.shape[1], sampling, None)
    finally:
        hook.remove()
    fresh, _ = eng._turn_hf(student, cur, None, 6, prompt.shape[1], sampling, None)
    assert widths[0] == 1 + env.shape[1] < cur.shape[1]
    assert torch.equal(cached, fresh)


def test_keyed_rows_do_not_depend_on_their_batch(char_tok, student):
    """Keyed sampling at temperature 1: each row of a batch of prompts (n = 2 each) equals the row run alone."""
    rows, b = prompt_batch(char_tok, ["1+2=", "10+20=", "7="])
    eng = ToolRolloutEngine(char_tok, tools=[CALC], use_chat_template=False)
    keys = row_keys(0, 3, b["index"], 2)
    ro = eng.generate(student, b["prompt_ids"], b["prompt_mask"], n=2, max_new_tokens=12, keys=keys)
    for i, r in enumerate(rows):
        ids = torch.tensor([r["prompt_ids"]])
        alone = eng.generate(student, ids, torch.ones_like(ids), n=2, max_new_tokens=12, keys=keys[2 * i : 2 * i + 2])
        assert torch.equal(alone.completion_ids, ro.completion_ids[2 * i : 2 * i + 2])
        assert torch.equal(alone.action_mask, ro.action_mask[2 * i : 2 * i + 2])


def test_only_the_policys_marked_answer_is_rewarded():
    """A tool's number (or a call's arguments) is not the policy's answer: with ``require_marked`` only a
    ``####`` / ``\\boxed`` answer counts."""
    from src.datamodules.tasks.math import math_reward

    unmarked = CALL.format("37*48") + "\n<tool_response>\n1776\n</tool_response>\n"
    assert math_reward(unmarked, "1776", require_marked=True) == 0.0
    assert math_reward(unmarked + "#### 1776", "1776", require_marked=True) == 1.0
    assert math_reward("#### 1775", "1776", require_marked=True) == 0.0
