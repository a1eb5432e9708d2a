"""Planning verifiers: Countdown whitelist grammar (never eval), Sudoku validity; generators."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from src.datamodules.tasks.planning import (
    countdown_problems,
    countdown_reward,
    countdown_task_reward,
    sudoku_problems,
    sudoku_reward,
    sudoku_task_reward,
    sudoku_valid,
)


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("94*4 - 61 - 6", 1.0),
        ("(94*4) - (61+6)", 1.0),
        ("94*4-61-6\nexplanation", 1.0),
        ("94*4 - 61", 0.0),
        ("94*4 - 61 - 6 - 6", 0.0),  # 6 used twice
        ("__import__('os').system('ls')", 0.0),
        ("exec('1')", 0.0),
        ("94**4", 0.0),
        ("1/0", 0.0),
        ("(" * 100 + "1" + ")" * 100, 0.0),
        ("", 0.0),
        ("９４*4-61-6", 0.0),  # full-width digits are not ASCII
    ],
)
def test_countdown_reward(expr, expected):
    assert countdown_reward(expr, [6, 61, 94, 4], 309) == expected


def test_countdown_use_all_and_fractions():
    assert countdown_reward("6/4*2", [6, 4, 2], 3) == 1.0  # exact fractions
    assert countdown_reward("3", [3, 4], 3, use_all=True) == 0.0
    assert countdown_reward("3*4", [3, 4], 12, use_all=True) == 1.0


def test_countdown_generator_is_solvable_and_seeded():
    rows = countdown_problems(seed=0, num_examples=50)
    assert rows == countdown_problems(seed=0, num_examples=50)
    assert all(countdown_reward(r["solution"], r["numbers"], r["target"], use_all=True) == 1.0 for r in rows)
    assert all(countdown_task_reward(r["solution"], r["answer"]) == 1.0 for r in rows)
    assert countdown_task_reward("1+1", "not json") == 0.0


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_countdown_reward_total_on_arbitrary_text(text):
    assert countdown_reward(text, [1, 2, 3], 6) in (0.0, 1.0)


@pytest.mark.parametrize("n, empty", [(4, 6), (9, 30)])
def test_sudoku_generator_and_reward(n, empty):
    rows = sudoku_problems(seed=1, num_examples=5, n=n, num_empty=empty)
    for r in rows:
        assert sudoku_task_reward(r["solution"], r["answer"]) == 1.0
        r = {**r, "answer": r["solution"]}
        sol = [int(c) for c in r["answer"]]
        assert sudoku_valid([sol[i * n : (i + 1) * n] for i in range(n)], n)
        assert r["puzzle"].count("_") == empty
        assert sudoku_reward(r["answer"], r["puzzle"], n=n) == 1.0
        spaced = "\n".join(" ".join(r["answer"][i * n : (i + 1) * n]) for i in range(n))
        assert sudoku_reward(spaced, r["puzzle"], n=n) == 1.0
        bad = r["answer"][1] + r["answer"][0] + r["answer"][2:]
        assert sudoku_reward(bad, r["puzzle"], n=n) == 0.0 or r["answer"][0] == r["answer"][1]
    assert sudoku_reward("__import__('os')", rows[0]["puzzle"], n=n) == 0.0
    with pytest.raises(ValueError):
        sudoku_problems(n=5)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_sudoku_reward_total_on_arbitrary_text(text):
    assert sudoku_reward(text, "1234341221434321", n=4) in (0.0, 1.0)
