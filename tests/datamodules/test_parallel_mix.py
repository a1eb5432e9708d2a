"""The any/distinct digit task (DiFFPO's heterogeneous experiment): generator, verifier, and the
prompt-grouped split (a held-out prompt is never seen in training, and is evaluated once)."""

import functools
import json

import pytest

from src.datamodules.errors import DataError
from src.datamodules.prompt import PromptDataModule
from src.datamodules.tasks.parallel import parallel_mix_problems, parallel_mix_reward


def spec(rule, digits="02468"):
    return json.dumps({"rule": rule, "digits": digits, "length": 4})


@pytest.mark.parametrize(
    "completion, rule, want",
    [
        ("2468", "distinct", 1.0),
        ("8642", "distinct", 1.0),
        (" 0246\n", "distinct", 1.0),
        ("2268", "distinct", 0.0),
        ("2222", "distinct", 0.0),
        ("1468", "distinct", 0.0),
        ("246", "distinct", 0.0),
        ("2222", "any", 1.0),
        ("0808", "any", 1.0),
        ("0809", "any", 0.0),
        ("08080", "any", 0.0),
        ("", "any", 0.0),
        ("__import__('os')", "any", 0.0),
        ("٢٤٦٨", "any", 0.0),
    ],
)
def test_reward_by_rule(completion, rule, want):
    assert parallel_mix_reward(completion, spec(rule)) == want


def test_reward_on_garbage_spec():
    assert parallel_mix_reward("0246", "not json") == 0.0
    assert parallel_mix_reward("0246", json.dumps({"rule": "other", "digits": "02468", "length": 4})) == 0.0
    assert parallel_mix_reward(None, spec("any")) == 0.0


def test_generator_solutions_are_valid_and_varied():
    rows = parallel_mix_problems(seed=3, num_examples=800)
    assert len(rows) == 800 and {r["rule"] for r in rows} == {"any", "distinct"}
    assert all(parallel_mix_reward(r["solution"], r["answer"]) == 1.0 for r in rows)
    by_prompt = {}
    for r in rows:
        by_prompt.setdefault(r["prompt"], set()).add(r["solution"])
    assert len(by_prompt) == 100 and sum(len(v) > 1 for v in by_prompt.values()) > 90  # several targets per prompt
    with pytest.raises(ValueError):
        parallel_mix_problems(length=6, set_size=5)


def test_split_by_prompt_keeps_prompts_on_one_side(char_tok):
    dm = PromptDataModule(
        tokenizer=char_tok,
        batch_size=8,
        val_fraction=0.25,
        split_key="prompt",
        generator=functools.partial(parallel_mix_problems, num_examples=400),
    )
    dm.setup()
    train = {r["prompt"] for r in dm.train_set}
    val = [r["prompt"] for r in dm.val_set]
    assert len(val) == len(set(val)) == round(0.25 * 50)  # each held-out prompt once
    assert not train & set(val) and len(dm.train_set) == 8 * (50 - len(val))
    bad = PromptDataModule(
        tokenizer=char_tok,
        batch_size=8,
        split_key="nope",
        generator=functools.partial(parallel_mix_problems, num_examples=80),
    )
    with pytest.raises(DataError, match="split_key=.nope."):
        bad.setup()
