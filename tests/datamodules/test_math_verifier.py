"""The math verifier on real answer keys (GSM8K / MATH-500 fixture rows) and a hand-built pair list."""

import json
import threading
from pathlib import Path

import pytest

from src.datamodules.tasks.math import (
    boxed_answer,
    final_answer,
    gold_string,
    gsm8k_answer,
    math_reward,
    normalize_answer,
)

FIX = Path(__file__).resolve().parents[1] / "fixtures"
PAIRS = [json.loads(line) for line in (FIX / "math_answer_pairs.jsonl").read_text().splitlines()]
MATH = [json.loads(line) for line in (FIX / "math500_sample.jsonl").read_text().splitlines()]
GSM = [json.loads(line) for line in (FIX / "gsm8k_test_sample.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("pair", PAIRS, ids=[p["note"] for p in PAIRS])
def test_answer_pairs(pair):
    assert math_reward(pair["completion"], pair["gold"]) == float(pair["equivalent"])


def test_pair_list_covers_both_verdicts():
    assert sum(p["equivalent"] for p in PAIRS) >= 25 and sum(not p["equivalent"] for p in PAIRS) >= 20


@pytest.mark.parametrize("fast_path", [True, False])
def test_math500_gold_solutions_score_one(fast_path):
    """Includes the LaTeX keys the old verifier failed on: matrices, intervals, \\text, tuples, surds."""
    kinds = {"pmatrix", "\\text", "\\sqrt", "\\pi", "\\infty", "\\pm"}
    assert all(any(k in r["answer"] for r in MATH) for k in kinds)
    bad = [r["answer"] for r in MATH if math_reward(r["solution"], r["answer"], fast_path=fast_path) != 1.0]
    assert bad == []


@pytest.mark.parametrize("fast_path", [True, False])
def test_math500_wrong_keys_score_zero(fast_path):
    rows = [(r["solution"], MATH[(i + 1) % len(MATH)]["answer"]) for i, r in enumerate(MATH)]
    rows = [(s, g) for (s, g), r in zip(rows, MATH) if normalize_answer(g) != normalize_answer(r["answer"])]
    assert len(rows) >= 30
    assert [g for s, g in rows if math_reward(s, g, fast_path=fast_path) == 1.0] == []


def test_gsm8k_gold_solutions():
    for r in GSM:
        gold = gsm8k_answer(r["answer"])
        assert math_reward(r["answer"], gold) == 1.0
        assert math_reward(r["answer"], float(gold)) == 1.0  # numeric keys stored as floats
        assert math_reward(r["answer"], str(int(gold) + 1)) == 0.0


def test_boxed_key_matches_math500_answer_field():
    assert all(boxed_answer(r["solution"]) == r["answer"] for r in MATH if r["answer"] in r["solution"])


def test_final_answer_order():
    assert final_answer(r"so \boxed{4}. Then 2.") == ("4", "boxed")
    assert final_answer("x\n#### 1,234\nextra") == ("1,234", "####")
    assert final_answer("the answer is 7") == (None, "text")


def test_gold_string():
    assert gold_string(18.0) == "18" and gold_string(2.5) == "2.5" and gold_string(" 7 ") == "7"
    with pytest.raises(TypeError):
        gold_string(None)
    assert math_reward("1", None) == 0.0 and math_reward("1", True) == 0.0 and math_reward("1", "") == 0.0


def test_symbolic_path_off_main_thread_raises():
    """SIGALRM time limits only work in the main thread: raise, never score everything 0 silently."""
    out = {}

    def run():
        try:
            math_reward(r"\boxed{0.5}", r"\frac12")
        except RuntimeError as e:
            out["err"] = str(e)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert "main thread" in out["err"]
    assert math_reward(r"\boxed{\frac12}", r"\frac12") == 1.0  # exact matches need no alarm


def test_check_answer_keys_script(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cak", FIX.parents[1] / "scripts" / "check_answer_keys.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (
        mod.main(["--gsm8k", str(FIX / "gsm8k_test_sample.jsonl"), "--math500", str(FIX / "math500_sample.jsonl")])
        == 0
    )
    out = capsys.readouterr().out
    assert f"GSM8K: {len(GSM)}/{len(GSM)}" in out and f"MATH-500: {len(MATH)}/{len(MATH)}" in out


def test_math_file_template_keeps_latex_braces(char_tok, tmp_path):
    """data=math_file's template ends in '\\boxed{}': the braces stay literal (str.format raised
    IndexError on every MATH record)."""
    from src.datamodules.prompt import PromptDataModule
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["data=math_file", f"data.path={FIX / 'math500_sample.jsonl'}"], tmp_path=tmp_path)
    dm = PromptDataModule(
        tokenizer=char_tok,
        batch_size=2,
        path=cfg.data.path,
        question_key=cfg.data.question_key,
        answer_key=cfg.data.answer_key,
        answer_format=cfg.data.answer_format,
        prompt_template=cfg.data.prompt_template,
        max_prompt_length=4096,
    )
    dm.setup()
    row = dm.train_set[0]
    assert row["prompt"].endswith("Put the final answer in \\boxed{}.")
    assert row["answer"] in {r["answer"] for r in MATH}  # boxed key of the solution = the answer field
