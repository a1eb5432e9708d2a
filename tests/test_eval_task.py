"""eval.py task=gsm8k|math500: metrics agree with the written completions, errors are clear."""

import json
from pathlib import Path

import pytest
import torch

from src.eval import evaluate_task, load_policy_weights
from src.rollout.hf import build_rollout
from tests.conftest import compose_cfg

FIX = Path(__file__).resolve().parent / "fixtures"


def task_cfg(tmp_path, *extra):
    return compose_cfg(
        [
            "task=gsm8k",
            f"task.path={FIX / 'gsm8k_test_sample.jsonl'}",
            "task.limit=4",
            "task.max_new_tokens=6",
            "task.batch_size=3",
            *extra,
        ],
        config_name="eval",
        tmp_path=tmp_path,
    )


def read(tmp_path):
    return [json.loads(line) for line in (Path(tmp_path) / "completions.jsonl").read_text().splitlines()]


def test_tiny_model_end_to_end(tmp_path):
    metrics, value = evaluate_task(task_cfg(tmp_path, "task.n=3", "task.k=[1,3]"))
    rows = read(tmp_path)
    assert len(rows) == 4 * (1 + 3)
    greedy = [r for r in rows if r["kind"] == "greedy"]
    assert [r["index"] for r in greedy] == [0, 1, 2, 3]
    assert [r["answer"] for r in greedy] == ["18", "3", "70000", "540"]  # gold parsed from '#### n'
    assert value == metrics["eval/gsm8k/pass@1"] == sum(r["score"] for r in greedy) / 4
    assert metrics["eval/gsm8k/num_problems"] == 4
    assert 1 <= metrics["eval/gsm8k/mean_tokens"] <= 6
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"]["eval/gsm8k/pass@3_sampled"] is not None


class FakeBackend:
    """Answers right on even problems (greedy) and in the first of every ``n`` samples; texts are
    set directly, so only the scoring and aggregation are under test."""

    golds: list[str] = []
    pos = 0  # first problem of the current batch

    def __init__(self, tokenizer):
        self.tok = tokenizer

    def generate(self, model, ids, mask, *, n, max_new_tokens, do_sample, **kw):
        batch = range(FakeBackend.pos, FakeBackend.pos + ids.shape[0])
        right = [(j == 0) if do_sample else (i % 2 == 0) for i in batch for j in range(n)]
        golds = [FakeBackend.golds[i] for i in batch for _ in range(n)]
        if do_sample:  # the sampled call comes second for each batch
            FakeBackend.pos += ids.shape[0]
        comp = torch.full((len(golds), max_new_tokens), self.tok.eos_token_id)
        ro = build_rollout(self.tok, ids, mask, comp, n)
        ro.texts = [f"so #### {g if ok else int(g) + 1}" for g, ok in zip(golds, right)]
        return ro


def test_pass_at_k_aggregation(tmp_path, monkeypatch):
    """Greedy right on problems 0 and 2 -> pass@1 = 0.5; 1 of 4 samples right everywhere ->
    pass@1_sampled = 0.25, pass@2_sampled = 1 - C(3,2)/C(4,2) = 0.5, pass@4_sampled = 1."""
    import src.rollout.hf as rollout

    FakeBackend.golds, FakeBackend.pos = ["18", "3", "70000", "540"], 0
    monkeypatch.setattr(rollout, "HFGenerateBackend", FakeBackend)
    metrics, _ = evaluate_task(
        task_cfg(tmp_path, "task.n=4", "task.k=[1,2,4]", "task.batch_size=4", "task.max_new_tokens=16")
    )
    assert metrics["eval/gsm8k/pass@1"] == 0.5
    assert metrics["eval/gsm8k/pass@1_sampled"] == pytest.approx(0.25)
    assert metrics["eval/gsm8k/pass@2_sampled"] == pytest.approx(0.5)
    assert metrics["eval/gsm8k/pass@4_sampled"] == pytest.approx(1.0)
    assert sum(r["score"] for r in read(tmp_path)) == 2 + 4


@pytest.mark.parametrize(
    "override, match",
    [
        (["task.n=2", "task.k=[3]"], "task.k"),
        (["task.n=2", "task.temperature=0"], "temperature"),
        (["task.limit=0"], "task.limit"),
        (["model=tiny_masked"], "causal"),
    ],
)
def test_bad_config(tmp_path, override, match):
    with pytest.raises((ValueError, TypeError), match=match):
        evaluate_task(task_cfg(tmp_path, *override))


def test_policy_weights_from_checkpoint(tmp_path, char_tok):
    from src.models.tiny import tiny_causal_lm

    trained = tiny_causal_lm(char_tok, hidden_size=32, num_layers=1, num_heads=2, seed=1)
    ckpt = tmp_path / "run.ckpt"
    torch.save({"state_dict": {f"policy.{k}": v for k, v in trained.state_dict().items()}}, ckpt)
    fresh = tiny_causal_lm(char_tok, hidden_size=32, num_layers=1, num_heads=2, seed=2)
    assert not torch.equal(fresh.model.embed_tokens.weight, trained.model.embed_tokens.weight)
    loaded = load_policy_weights(fresh, str(ckpt))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), trained.state_dict().values()))
    with pytest.raises(KeyError, match="does not match"):
        load_policy_weights(tiny_causal_lm(char_tok, hidden_size=32, num_layers=2, num_heads=2), str(ckpt))
    torch.save({"state_dict": {"ref.x": torch.zeros(1)}}, ckpt)
    with pytest.raises(KeyError, match="no 'policy"):
        load_policy_weights(fresh, str(ckpt))


def test_math500_task_reads_answer_keys(tmp_path):
    cfg = compose_cfg(
        ["task=math500", f"task.path={FIX / 'math500_sample.jsonl'}", "task.limit=3", "task.max_new_tokens=4"],
        config_name="eval",
        tmp_path=tmp_path,
    )
    metrics, _ = evaluate_task(cfg)
    gold = [json.loads(line)["answer"] for line in (FIX / "math500_sample.jsonl").read_text().splitlines()[:3]]
    assert [r["answer"] for r in read(tmp_path)] == gold
    assert metrics["eval/math500/num_problems"] == 3
