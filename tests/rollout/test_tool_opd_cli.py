"""``python train.py module=opd data=gsm8k_calculator`` on the tiny models: multi-turn tool rollouts in training
and evaluation, the tool metrics logged, samples written."""

import csv
import json

import pytest

from tests.helpers.cli import run_script


def _gsm8k_like(path, n=12):
    rows = [
        {"question": f"Tom has {a} apples and buys {b}. How many?", "answer": f"{a}+{b}\n#### {a + b}"}
        for a, b in zip(range(3, 3 + n), range(5, 5 + n))
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.mark.slow
def test_opd_with_the_calculator_runs_on_the_tiny_models(tmp_path):
    data = _gsm8k_like(tmp_path / "gsm8k.jsonl")
    run = tmp_path / "run"
    args = [
        "module=opd",
        "data=gsm8k_calculator",
        f"data.path={data}",
        f"data.val_path={data}",
        "data.chat=false",
        "data.global_batch_size=2",
        "data.eval_batch_size=4",
        "data.val_limit=4",
        "model.policy.max_position_embeddings=1024",
        "+teacher.policy.max_position_embeddings=1024",
        "module.rollout.n=2",
        "module.rollout.max_new_tokens=24",
        "module.eval.max_new_tokens=24",
        "module.eval.n=2",
        "module.eval.k=2",
        "callbacks.sample_table.max_new_tokens=24",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
        "validate_before_fit=false",
        "export=false",
        "logger=csv",
        f"hydra.run.dir={run}",
    ]
    r = run_script("train.py", args, tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    rows = list(csv.DictReader(open(next(run.glob("csv/**/metrics.csv")))))
    logged = {k for row in rows for k, v in row.items() if v}
    assert {"train/rollout/turns", "train/rollout/tool_calls", "train/rollout/tool_error_rate"} <= logged
    assert all(1.0 <= float(row["train/rollout/turns"]) <= 4.0 for row in rows if row.get("train/rollout/turns"))
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert (
        samples
        and "You can call these tools" in samples[0]["prompt"]
        and '"name": "calculator"' in samples[0]["prompt"]
    )
