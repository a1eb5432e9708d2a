"""The reward belongs to the task: every prompt data preset names its verifier and every rollout module
scores with it; a module reward that is not the task's is an error (it used to train silently: Sudoku
and the any/distinct task against math_reward, which scores their correct answers 0)."""

import pytest
from hydra.utils import instantiate

from src.modules.base import check_task_reward
from src.train import build
from tests.conftest import compose_cfg

TASKS = {
    "arithmetic": "src.datamodules.tasks.math.math_reward",
    "gsm8k": "src.datamodules.tasks.math.math_reward",
    "gsm_symbolic": "src.datamodules.tasks.math.math_reward",
    "countdown": "src.datamodules.tasks.planning.countdown_task_reward",
    "sudoku4": "src.datamodules.tasks.planning.sudoku_task_reward",
    "sudoku9": "src.datamodules.tasks.planning.sudoku_task_reward",
    "parallel_mix": "src.datamodules.tasks.parallel.parallel_mix_reward",
}


@pytest.mark.parametrize("module", ["diffpo", "mdm_sft", "opd", "sft"])
@pytest.mark.parametrize("data", list(TASKS))
def test_modules_score_with_the_tasks_reward(module, data, tmp_path):
    cfg = compose_cfg([f"module={module}", f"data={data}"], tmp_path=tmp_path)
    assert cfg.data.reward._target_ == TASKS[data]
    assert cfg.module.reward._target_ == TASKS[data]


@pytest.mark.parametrize("data", ["sudoku4", "countdown", "parallel_mix"])
def test_a_correct_answer_scores_one_under_the_tasks_reward(data, tmp_path):
    """Generated problems carry their gold answer; the preset's reward gives it 1 (math_reward did not)."""
    cfg = compose_cfg([f"data={data}", "module=diffpo"], tmp_path=tmp_path)
    gen = instantiate(cfg.data.generator)
    rec = next(iter(gen(seed=0)))
    reward = instantiate(cfg.data.reward)
    gold = rec["solution"] if "solution" in rec else rec["answer"]
    assert reward(str(gold), rec["answer"]) == 1.0


def test_a_reward_that_is_not_the_tasks_is_an_error(tmp_path):
    over = "module.reward={_target_:src.datamodules.tasks.math.math_reward,_partial_:true}"
    cfg = compose_cfg(
        ["module=diffpo", "model=tiny_masked", "data=countdown", over, "trainer.max_steps=1"]
        + ["data.generator.num_examples=40"],
        tmp_path=tmp_path,
    )
    objs = build(cfg)
    with pytest.raises(ValueError, match="is not the task's reward data.reward.*countdown_task_reward"):
        objs["trainer"].fit(objs["module"], datamodule=objs["datamodule"])


def test_check_task_reward_compares_what_is_computed():
    import functools

    from src.datamodules.tasks.math import math_reward

    check_task_reward(functools.partial(math_reward), functools.partial(math_reward))  # equal partials
    check_task_reward(None, math_reward)  # a module without a reward
    with pytest.raises(ValueError, match="math_reward"):
        check_task_reward(functools.partial(math_reward, timeout_s=1), functools.partial(math_reward))
