"""``eval_tasks``: a training run scores its trained policy on benchmarks after fit, as ``eval.py task=...`` does.

The rollout backend is replaced by one that answers the gold calls on even rows and prose on odd ones, so the
expected scores are known exactly (API-Bank level 3 fixture: 4 rows -> accuracy 2/4; BFCL: 5 rows -> 3/5)."""

import json
from pathlib import Path

import pytest

from src.datamodules.tasks import tool_use as tu
from src.train import run
from tests.conftest import compose_cfg
from tests.datamodules.test_tool_use import FIX, GoldOrNot, _bfcl

TINY = [
    "module=sft",
    "trainer.max_steps=2",
    "+trainer.limit_val_batches=0",
    "validate_before_fit=false",
    "export=false",
]
TINY += ["optimized_metric=eval/api_bank/accuracy"]
TASK = ["chat=false", "max_prompt_length=100000", "max_new_tokens=4", "batch_size=2"]


def _tasks(api_bank: Path, bfcl: Path) -> list[str]:
    out = ["+task@eval_tasks.api_bank=api_bank", "+task@eval_tasks.bfcl=bfcl"]
    out += [f"eval_tasks.api_bank.path={api_bank}", "eval_tasks.api_bank.level=3", "eval_tasks.api_bank.limit=4"]
    out += [f"eval_tasks.bfcl.path={bfcl}", "eval_tasks.bfcl.limit=5"]
    return out + [f"eval_tasks.{t}.{kv}" for t in ("api_bank", "bfcl") for kv in TASK]


def test_trained_policy_is_scored_on_each_task(tmp_path, monkeypatch):
    import src.rollout.hf as rollout

    api_bank = FIX / "api_bank_level3.json"
    ab = [tu.render_calls(tu.api_bank_gold(r["answer"])) for r in json.loads(api_bank.read_text())[:4]]
    bf = [tu.bfcl_render(tu.bfcl_gold_calls(gt, q["function"])) for q, gt in _bfcl("simple_python")[:5]]
    GoldOrNot.solutions, GoldOrNot.pos = ab + bf, 0  # the tasks run in order: API-Bank's 4 rows, then BFCL's 5
    monkeypatch.setattr(rollout, "HFGenerateBackend", GoldOrNot)
    cfg = compose_cfg([*TINY, *_tasks(api_bank, FIX / "bfcl" / "BFCL_v4_simple_python.json")], tmp_path=tmp_path)
    metrics, _ = run(cfg)
    assert metrics["eval/api_bank/accuracy"] == metrics["eval/api_bank/level3/accuracy"] == 0.5
    assert metrics["eval/bfcl/accuracy"] == 3 / 5 and metrics["eval/bfcl/format_valid"] == 3 / 5
    assert "train/loss" in metrics
    # the run's summary holds them (a sweep's report reads it), and each task's completions are kept
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"]["eval/bfcl/accuracy"] == 3 / 5
    rows = [json.loads(x) for x in (tmp_path / "eval" / "bfcl" / "completions.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rows] == ["ok", "decode_failed", "ok", "decode_failed", "ok"]


def test_a_bad_task_path_fails_before_training(tmp_path):
    cfg = compose_cfg([*TINY, *_tasks(tmp_path / "missing.json", tmp_path / "missing.json")], tmp_path=tmp_path)
    with pytest.raises(Exception, match="missing.json"):
        run(cfg)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_sharded_strategies_are_refused(tmp_path):
    api_bank = FIX / "api_bank_level3.json"
    cfg = compose_cfg([*TINY, *_tasks(api_bank, api_bank), "trainer.strategy=fsdp"], tmp_path=tmp_path)
    with pytest.raises(ValueError, match="unsharded"):
        run(cfg)


def test_a_bad_task_setting_fails_before_training(tmp_path):
    api_bank = FIX / "api_bank_level3.json"
    cfg = compose_cfg([*TINY, *_tasks(api_bank, api_bank), "eval_tasks.bfcl.limit=0"], tmp_path=tmp_path)
    with pytest.raises(ValueError, match="task.limit must be >= 1"):
        run(cfg)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_compose_run_keeps_a_callers_logger_and_progress_bar():
    """compose_run's quiet defaults (CSV logger, no progress bar) give way to the caller's own setting (the last
    value of a key wins in Hydra, so the defaults must come before the caller's overrides)."""
    from src.experiments import compose_run

    quiet = compose_run([])
    assert quiet.trainer.enable_progress_bar is False and "csv" in str(quiet.logger)
    mine = compose_run(["logger=[]", "trainer.enable_progress_bar=true"])
    assert mine.get("logger") in (None, []) and mine.trainer.enable_progress_bar is True
