"""``experiment=diffpo_llada_gsm8k`` (the paper's setting) and ``diffpo_dream_gsm8k`` train and evaluate end to
end on remote-code model folders with LLaDA's (and Dream's) behaviours (``tests/fixtures/tiny_llada``), with CPU-sized overrides: loaded through
``trust_remote_code`` and adapted, gradient checkpointing through the model's own switch, LoRA on its block
projections, rows batched without attending to padding, then ``eval.py`` on the checkpoint."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from tests.helpers.remote_code import tiny_llada_folder

GSM8K = ROOT / "tests" / "fixtures" / "gsm8k_test_sample.jsonl"


# CPU-sized settings both experiments share: 8 completion tokens, groups of 2, 2 inner updates, 4 held-out rows
CPU_SIZED = [
    "trainer=default",  # CPU
    "model.policy.dtype=float32",
    "model.policy.lora.r=4",
    "module.group_size=2",
    "module.inner_updates=2",
    "module.pareto_eval.knobs=[0.5,1.0]",
    f"data.path={GSM8K}",
    f"data.val_path={GSM8K}",
    "data.val_limit=4",
    "data.max_prompt_length=640",
    "data.global_batch_size=2",
    "trainer.enable_progress_bar=false",
]


def _overrides(model):
    return [
        "experiment=diffpo_llada_gsm8k",
        f"model.name_or_path={model}",
        *CPU_SIZED,
        "model.mask_token_id=3",
        "module.sampler.gen_length=8",
        "module.sampler.block_length=4",
        "module.eval_sampler.gen_length=8",
        "module.eval_sampler.block_length=4",
        "module.eval_sampler.steps_per_block=2",
    ]


def _run(script, args, cwd):
    env = {**os.environ, "PROJECT_ROOT": str(cwd), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow
def test_diffpo_llada_gsm8k_trains_and_evaluates_on_remote_code(tmp_path):
    model = tiny_llada_folder(tmp_path / "tiny_llada")
    run = tmp_path / "run"
    args = [
        *_overrides(model),
        "data.reward._target_=tests.helpers.rewards.digit_fraction",  # a dense signal for a random model
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "validate_before_fit=false",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        "callbacks.model_checkpoint.monitor=null",
        "callbacks.model_checkpoint.save_top_k=-1",  # every step kept: the first one is compared with the last
        f"hydra.run.dir={run}",
    ]
    r = _run("train.py", args, tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    log = r.stdout + r.stderr
    assert "adapted legacy remote code" in log and "ignores attention_mask" in log
    assert "activation checkpointing on TinyLLaDAModelLM (set_activation_checkpointing)" in log
    steps = sorted((run / "checkpoints").glob("step_*.ckpt"))  # 2 optimizer steps per batch (inner_updates=2)
    first = torch.load(steps[0], weights_only=False)["state_dict"]
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    lora_b = [k for k in last if "policy." in k and "lora_B" in k]
    assert len(lora_b) == 12  # 2 blocks x q/k/v/attn_out/ff_proj/up_proj
    assert any(last[k].abs().sum() > 0 for k in lora_b)  # LoRA B starts at 0: the model was trained
    ctrl = [k for k in last if k.startswith("controller.")]
    assert ctrl and any(not torch.equal(first[k], last[k]) for k in ctrl)  # so was the controller
    assert (run / "hf_model" / "modeling_tiny_llada.py").exists()  # the export keeps the model's own code
    ev = tmp_path / "eval"
    r = _run(
        "eval.py",
        [*_overrides(model), f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={ev}"],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    metrics = json.loads((ev / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["val/accuracy"] <= 1.0 and metrics["val/nfe"] == 4.0  # 2 blocks x 2 steps


def _dream_overrides(model):
    return [
        "experiment=diffpo_dream_gsm8k",
        f"model.name_or_path={model}",
        *CPU_SIZED,
        *[
            f"module.{s}.{k}={v}"
            for s in ("sampler", "eval_sampler")
            for k, v in ((("gen_length", 8), ("block_length", 8), ("steps", 4)))
        ],
    ]


@pytest.mark.slow
def test_diffpo_dream_gsm8k_trains_and_evaluates_on_remote_code(tmp_path):
    """experiment=diffpo_dream_gsm8k on our Dream-like remote-code folder: Dream's code adapted at load, rollouts
    with Dream's schedule and the controller's threshold, 2 optimizer steps, then eval.py on the checkpoint."""
    from tests.helpers.remote_code import tiny_dream_folder

    model = tiny_dream_folder(tmp_path / "tiny_dream")
    run = tmp_path / "run"
    args = [
        *_dream_overrides(model),
        "data.reward._target_=tests.helpers.rewards.digit_fraction",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "validate_before_fit=false",
        "callbacks.model_checkpoint.monitor=null",
        f"hydra.run.dir={run}",
    ]
    r = _run("train.py", args, tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "adapted Dream's remote code" in r.stdout + r.stderr
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 2
    lora_b = [k for k in last["state_dict"] if "policy." in k and "lora_B" in k]
    assert len(lora_b) == 14 and any(last["state_dict"][k].abs().sum() > 0 for k in lora_b)  # 2 layers x 7
    assert (run / "hf_model" / "modeling_dream.py").exists() and (run / "hf_model" / "generation_utils.py").exists()
    ev = tmp_path / "eval"
    r = _run(
        "eval.py",
        [*_dream_overrides(model), f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={ev}"],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    metrics = json.loads((ev / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["val/accuracy"] <= 1.0
    # Dream's schedule spends at most its 4 steps; the controller's threshold can only reveal tokens earlier
    assert 1.0 <= metrics["val/nfe"] <= 4.0 and 0.0 < metrics["val/controller/knob_mean"] <= 1.0
