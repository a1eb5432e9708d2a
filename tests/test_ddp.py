"""2-process CPU DDP (``ddp_spawn``, gloo) equals one process with the same global batch, for every
module: the same training loss at every step, the same weights after a few optimizer steps and the
same (rank-synced) held-out metrics.

Why it can hold exactly: the ResumableSampler gives rank r of W the examples at positions
``r, r + W, ...`` of one seeded global order, so each global batch is the same set of examples;
losses normalise by global counts (``ddp_normaliser``); and the stochastic modules run with
``module.rng=keyed``, so a rollout is a function of (seed, step, example) and not of the rank.
"""

import csv

import pytest
import torch
from omegaconf import open_dict

from src.train import build, run
from tests.conftest import compose_cfg

ARITH = ["data=arithmetic", "data.generator.num_examples=40"]  # 32 train / 8 val
CASES = {
    "mallowspo": ["data.generator.num_examples=40"],  # 36 train / 4 val pairs
    "sft": ["module=sft", *ARITH, "module.rng=keyed"],
    "mdm_sft": ["module=mdm_sft", "model=tiny_masked", *ARITH, "module.rng=keyed"],
    "opd": ["module=opd", *ARITH, "module.rng=keyed"],
    # a dense reward: with math_reward a random model's completions all score 0 in 3 steps, so nothing moves
    "diffpo": [
        "module=diffpo",
        "model=tiny_masked",
        *ARITH,
        "module.rng=keyed",
        "module.inner_updates=1",
        "data.reward._target_=tests.helpers.rewards.digit_overlap",
    ],
}
# OPD whose rollouts call the calculator (first turn scripted, the rest sampled), on generated "a+b=" prompts
CASES["opd_tools"] = [
    "module=opd",
    "data=gsm8k_calculator",
    "data.path=null",
    "data.generator={_target_:src.datamodules.tasks.math.arithmetic_problems,_partial_:true,num_examples:40}",
    "data.question_key=prompt",
    "data.answer_format=raw",
    "data.chat=false",
    "module.rng=keyed",
    "data.rollout_engine._target_=tests.helpers.tools.FirstTurnCalls",
    "module.rollout.max_new_tokens=160",
    "module.eval.max_new_tokens=160",
]
COMMON = [
    "trainer.max_steps=3",
    "trainer.val_check_interval=3",
    "data.global_batch_size=8",
    "data.eval_batch_size=4",
    "validate_before_fit=false",
    "export=false",
    "callbacks=default",
    "callbacks.sample_table=null",
    "callbacks.model_checkpoint.monitor=null",
    "callbacks.model_checkpoint.save_top_k=0",
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    # Adam's first step is ~lr * g / (|g| + eps): with eps=1e-8, 1e-9-level float noise (summation
    # order) on near-zero gradients moves weights by ~1e-2 lr; eps=1e-6 keeps the comparison about DDP
    "+module.optimizer.eps=1e-6",
]


def _train_losses(out):
    with open(out / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def _run(overrides, out):
    cfg = compose_cfg([*COMMON, *overrides], tmp_path=out)
    with open_dict(cfg):
        cfg.optimized_metric = None
    metrics, _ = run(cfg)
    return metrics, torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_process_ddp_equals_single_process(case, tmp_path):
    m1, ck1 = _run(CASES[case], tmp_path / "single")
    m2, ck2 = _run([*CASES[case], "trainer=ddp_sim"], tmp_path / "ddp")
    assert ck1["global_step"] == ck2["global_step"] > 0
    assert ck1["state_dict"].keys() == ck2["state_dict"].keys()
    for k, v in ck1["state_dict"].items():
        torch.testing.assert_close(ck2["state_dict"][k], v, atol=2e-5, rtol=1e-4, msg=f"{case}: {k}")
    # and training really moved the weights (equal because nothing happened would prove nothing)
    fresh = build(compose_cfg([*CASES[case], *COMMON], tmp_path=tmp_path / "fresh"))["module"]
    fresh.configure_model()
    init = fresh.state_dict()
    assert any(not torch.allclose(init[k], v, atol=1e-4) for k, v in ck1["state_dict"].items() if k in init)
    # the per-step training loss (rank-averaged under DDP) is the single-process global-batch loss
    l1, l2 = _train_losses(tmp_path / "single"), _train_losses(tmp_path / "ddp")
    assert len(l1) == 3 and l1.keys() == l2.keys()
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], abs=1e-5, rel=1e-5), (case, step, l1[step], l2[step])
    if case == "opd_tools":  # the rollouts really called the tool: environment tokens in every step's batch
        with open(tmp_path / "single" / "csv" / "metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("train/rollout/tool_calls")]
        assert len(rows) == 3 and all(float(r["train/rollout/tool_calls"]) >= 1 for r in rows)
        assert all(float(r["train/rollout/env_tokens"]) > 0 for r in rows)
    val = sorted(k for k in m1 if k.startswith("val/"))
    assert val and val == sorted(k for k in m2 if k.startswith("val/"))
    for k in val:
        assert m2[k] == pytest.approx(m1[k], abs=1e-4, rel=1e-4), (case, k, m1[k], m2[k])
