"""Math tasks: answer formats, safe rewards (never executes output), generators, prompt batches."""

import functools
import json

import pytest
import torch

from src.datamodules.preference import BadRecordError
from src.datamodules.prompt import PromptDataModule
from src.datamodules.tasks.math import arithmetic_problems, boxed_answer, gsm8k_answer, math_reward


def test_answer_formats():
    assert gsm8k_answer("so 3 + 4 = 7\n#### 1,234") == "1234"
    assert boxed_answer(r"thus \boxed{\frac{1}{2}} and then \boxed{x^{2}}") == "x^{2}"
    with pytest.raises(ValueError, match="####"):
        gsm8k_answer("no marker")
    with pytest.raises(ValueError, match="boxed"):
        boxed_answer("none")


@pytest.mark.parametrize(
    "completion, gold, expected",
    [
        ("19", "19", 1.0),
        ("The answer is 19.", "19", 1.0),
        ("18", "19", 0.0),
        ("0.5", "\\frac{1}{2}", 1.0),
        ("", "19", 0.0),
        ("garbage ][{", "19", 0.0),
        ("__import__('os').system('echo pwned')", "0", 0.0),
        ("9" * 5000, "9", 0.0),
        ("nineteen", "19", 0.0),
    ],
)
def test_math_reward(completion, gold, expected):
    assert math_reward(completion, gold) == expected


def test_reward_never_executes(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    evil = f"__import__('pathlib').Path({str(marker)!r}).write_text('x')"
    assert math_reward(evil, "1") == 0.0
    assert not marker.exists()
    assert math_reward(None, "1") == 0.0  # type: ignore[arg-type]


def test_arithmetic_unique_and_seeded():
    rows = arithmetic_problems(seed=0, num_examples=500, max_operand=19)
    assert len(rows) == 400 and len({r["prompt"] for r in rows}) == 400  # capped at the problem space
    assert rows == arithmetic_problems(seed=0, num_examples=500, max_operand=19)
    assert all(str(eval(r["prompt"][:-1], {"__builtins__": {}})) == r["answer"] for r in rows[:20])  # noqa: S307 - test data only
    with pytest.raises(ValueError, match="ops"):
        arithmetic_problems(ops="/")


def test_prompt_datamodule_left_pads_and_splits(char_tok):
    dm = PromptDataModule(
        tokenizer=char_tok,
        batch_size=4,
        val_fraction=0.25,
        generator=functools.partial(arithmetic_problems, num_examples=40, max_operand=19),
    )
    dm.setup()
    assert {r["prompt"] for r in dm.train_set.rows}.isdisjoint({r["prompt"] for r in dm.val_set.rows})
    b = next(iter(dm.train_dataloader()))
    assert (b["prompt_ids"][:, -1] != char_tok.pad_token_id).all()  # left padding: last column is real
    assert (
        b["prompt_mask"].sum(-1)
        == torch.tensor([len(dm.tokenizer(p, add_special_tokens=False)["input_ids"]) + 1 for p in b["prompt"]])
    ).all()
    assert (b["target_ids"][torch.arange(4), b["target_mask"].sum(-1) - 1] == char_tok.eos_token_id).all()


def test_prompt_file_bad_rows_named(tmp_path, char_tok):
    rows = [{"question": "1+1=", "answer": "#### 2"}, {"question": "2+2=", "answer": "four"}]
    p = tmp_path / "g.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    dm = PromptDataModule(tokenizer=char_tok, batch_size=1, path=str(p), val_path=str(p), answer_format="gsm8k")
    with pytest.raises(BadRecordError, match="g.jsonl line 2: GSM8K answer without"):
        dm.setup()
    dm = PromptDataModule(
        tokenizer=char_tok, batch_size=1, path=str(p), val_path=str(p), answer_format="gsm8k", on_bad_record="skip"
    )
    dm.setup()
    assert dm.num_skipped == 2 and dm.train_set[0]["answer"] == "2"
    with pytest.raises(ValueError, match="valid: raw, gsm8k, boxed"):
        PromptDataModule(tokenizer=char_tok, batch_size=1, path="x", answer_format="latex")
