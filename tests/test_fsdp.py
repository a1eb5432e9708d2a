"""FSDP2 on two CPU processes (gloo; ``trainer=fsdp2_cpu``) trains like one process: the same
per-step training loss and the same final weights, a distributed (sharded) checkpoint that resumes
to the uninterrupted result, and a plain HF export gathered from the shards.

Each run is ``python train.py`` in a subprocess: Lightning's ModelParallelStrategy launches its
workers by re-running the script, which must not be pytest.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from src.train import build
from tests.conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "mallowspo": ["module=mallowspo", "data.generator.num_examples=40"],
    "sft": ["module=sft", "data=arithmetic", "data.generator.num_examples=40", "module.rng=keyed"],
}
COMMON = [
    "data.global_batch_size=8",
    "data.eval_batch_size=4",
    "validate_before_fit=false",
    "callbacks.sample_table=null",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "trainer.val_check_interval=2",
    "logger=csv",
    "+module.optimizer.eps=1e-6",
]


def _train(out: Path, overrides: list[str]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        *COMMON,
        *overrides,
        f"paths.output_dir={out}",
        f"paths.log_dir={out / 'logs'}",
        f"paths.cache_dir={out / 'cache'}",
    ]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


def _losses(out: Path) -> dict[int, float]:
    with open(out / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "hf_model" / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_fsdp2_two_cpu_processes_equal_one(case, tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "fsdp2"
    _train(single, [*CASES[case], "trainer.max_steps=4"])
    _train(sharded, [*CASES[case], "trainer.max_steps=4", "trainer=fsdp2_cpu"])
    assert (sharded / "checkpoints" / "last.ckpt").is_dir()  # a distributed checkpoint: one shard file per rank
    assert len(list((sharded / "checkpoints" / "last.ckpt").glob("*.distcp"))) == 2
    l1, l2 = _losses(single), _losses(sharded)
    assert len(l1) == 4 and l1.keys() == l2.keys()
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], abs=1e-5, rel=1e-5), (case, step, l1[step], l2[step])
    w1, w2 = _weights(single), _weights(sharded)
    assert w1.keys() == w2.keys()
    # and training moved the weights (equal because nothing happened would prove nothing)
    fresh = build(compose_cfg([*COMMON, *CASES[case]], tmp_path=tmp_path / "fresh"))["module"]
    fresh.configure_model()
    init = fresh.policy.state_dict()
    assert any(not torch.allclose(init[k], w1[k], atol=1e-4) for k in w1 if k in init)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=2e-5, rtol=1e-4, msg=k)
    if case != "mallowspo":
        return
    # the sharded checkpoint resumes: 2 steps, then 2 more from last.ckpt == 4 uninterrupted steps
    resumed = tmp_path / "resumed"
    _train(resumed, [*CASES[case], "trainer.max_steps=2", "trainer=fsdp2_cpu", "export=false"])
    _train(
        resumed,
        [
            *CASES[case],
            "trainer.max_steps=4",
            "trainer=fsdp2_cpu",
            "export=true",  # the first start said export=false, and a resume keeps the run's settings
            f"ckpt_path={resumed / 'checkpoints' / 'last.ckpt'}",
        ],
    )
    w3 = _weights(resumed)
    for k in w1:
        torch.testing.assert_close(w3[k], w2[k], atol=2e-5, rtol=1e-4, msg=f"resume: {k}")
