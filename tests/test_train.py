"""End to end: fast_dev_run, the default run's metric improves, resume, eval, export, multirun, DDP."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from src.eval import evaluate
from src.train import run
from tests.conftest import ROOT, compose_cfg
from tests.helpers.run_if import RunIf

SHORT = ["trainer.enable_progress_bar=false", "data.generator.num_examples=400"]


def test_fast_dev_run(tmp_path):
    cfg = compose_cfg(["debug=fdr", *SHORT], tmp_path=tmp_path)
    metrics, value = run(cfg)
    assert value is None and "train/loss" in metrics


@pytest.mark.parametrize(
    "module, model",
    [("opd", "tiny_causal"), ("sft", "tiny_causal"), ("diffpo", "tiny_masked"), ("mdm_sft", "tiny_masked")],
)
def test_fast_dev_run_rollout_modules(module, model, tmp_path):
    cfg = compose_cfg(
        [
            "debug=fdr",
            f"module={module}",
            f"model={model}",
            "data=arithmetic",
            "data.generator.num_examples=40",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path=tmp_path,
    )
    metrics, _ = run(cfg)
    assert "train/loss" in metrics


def test_default_run_improves_heldout_accuracy(tmp_path):
    """The README's default job, shortened: held-out preference accuracy rises from chance (0.5)."""
    cfg = compose_cfg(["trainer.max_steps=80", "trainer.val_check_interval=40", *SHORT], tmp_path=tmp_path)
    metrics, value = run(cfg)
    assert metrics["init/val/rewards/accuracy"] == pytest.approx(0.5)  # policy == reference: all ties
    assert value == metrics["val/rewards/accuracy"] > 0.8
    assert metrics["val/loss"] < metrics["init/val/loss"]
    # CSV metrics, checkpoints, sample table and the exported HF folder are written
    assert (tmp_path / "csv" / "metrics.csv").exists()
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "samples.jsonl").read_text().count("\n") >= 4
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf_model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf_model")
    ids = tok("sort: 321 =", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(ids).logits).all()

    # eval.py on the checkpoint reproduces the held-out accuracy
    ecfg = compose_cfg(["logger=csv", *SHORT], config_name="eval", tmp_path=tmp_path / "eval")
    with open_dict(ecfg):
        ecfg.ckpt_path = str(tmp_path / "checkpoints" / "last.ckpt")
    emetrics, evalue = evaluate(ecfg)
    assert evalue == pytest.approx(metrics["val/rewards/accuracy"], abs=1e-6)
    # and says so: the metrics on stdout and in the eval folder's metrics.json (it wrote neither before)
    import json

    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"] == emetrics


def test_resume_from_last_checkpoint(tmp_path):
    ov = ["trainer.val_check_interval=2", "validate_before_fit=false", "export=false", *SHORT]
    first = compose_cfg(["trainer.max_steps=4", *ov], tmp_path=tmp_path)
    run(first)
    last = tmp_path / "checkpoints" / "last.ckpt"
    ck = torch.load(last, weights_only=False)
    assert ck["global_step"] == 4 and not any(k.startswith("ref.") for k in ck["state_dict"])
    second = compose_cfg(["trainer.max_steps=6", f"ckpt_path={last}", *ov], tmp_path=tmp_path)
    run(second)
    assert torch.load(last, weights_only=False)["global_step"] == 6


def test_bf16_mixed_on_cpu(tmp_path):
    cfg = compose_cfg(["debug=fdr", "trainer.precision=bf16-mixed", *SHORT], tmp_path=tmp_path)
    metrics, _ = run(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_wandb_offline_logger(tmp_path):
    cfg = compose_cfg(["debug=fdr", "logger=wandb", *SHORT], tmp_path=tmp_path)
    with open_dict(cfg):
        cfg.logger = compose_cfg(["logger=wandb"], tmp_path=tmp_path).logger
    run(cfg)
    from src.train import finish_loggers

    finish_loggers()
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def _cli(args, tmp_path, timeout=600):
    env = {**os.environ, "PROJECT_ROOT": str(tmp_path), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_cli_multirun_two_jobs(tmp_path):
    """``python train.py -m trainer.max_steps=2,3`` runs two jobs."""
    r = _cli(["-m", "trainer.max_steps=2,3", "trainer.val_check_interval=1", *SHORT], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = sorted((tmp_path / "logs" / "train" / "multiruns").glob("*/*/checkpoints/last.ckpt"))
    assert len(runs) == 2
    steps = sorted(torch.load(p, weights_only=False)["global_step"] for p in runs)
    assert steps == [2, 3]


@pytest.mark.slow
def test_crashed_sweep_job_does_not_stop_the_others(tmp_path):
    """``-m module.variant=bogus,dpo``: job 0 crashes (bad config), job 1 still trains; the crash is
    recorded in job 0's FAILED.txt and the sweep exits 1 with a summary naming it."""
    r = _cli(
        [
            "-m",
            "module.variant=bogus,dpo",
            "module.dispersion.source=none",
            "trainer.max_steps=2",
            "trainer.val_check_interval=1",
            *SHORT,
        ],
        tmp_path,
    )
    assert r.returncode == 1, r.stderr[-3000:]
    sweep = next((tmp_path / "logs" / "train" / "multiruns").iterdir())
    failed = (sweep / "0" / "FAILED.txt").read_text()
    assert "module.variant=bogus" in failed and "ValueError" in failed and "valid: dpo" in failed
    assert torch.load(sweep / "1" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    assert not (sweep / "1" / "FAILED.txt").exists()
    assert "1 sweep job(s) failed" in r.stderr and "module.variant=bogus" in r.stderr


@pytest.mark.slow
def test_submitit_launcher_sweep_isolates_a_crash(tmp_path):
    """The cluster-sweep path (``hydra/launcher=submitit_slurm`` on SLURM) through its local
    executor: each job is its own submitit process; a crashed job is recorded, the other trains."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    r = _cli(
        [
            "-m",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10",
            "module.variant=bogus,dpo",
            "module.dispersion.source=none",
            "trainer.max_steps=2",
            "trainer.val_check_interval=1",
            *SHORT,
        ],
        tmp_path,
    )
    assert r.returncode == 1, r.stderr[-3000:]
    sweep = next((tmp_path / "logs" / "train" / "multiruns").iterdir())
    assert "module.variant=bogus" in (sweep / "0" / "FAILED.txt").read_text()
    assert torch.load(sweep / "1" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    assert list(sweep.glob(".submitit/*"))  # really went through submitit


@pytest.mark.slow
def test_ddp_sim_two_cpu_processes(tmp_path):
    cfg = compose_cfg(
        [
            "trainer=ddp_sim",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "validate_before_fit=false",
            "export=false",
            "callbacks=none",
            *SHORT,
        ],
        tmp_path=tmp_path,
    )
    with open_dict(cfg):
        cfg.optimized_metric = "val/rewards/accuracy"
    metrics, value = run(cfg)
    assert 0.0 <= value <= 1.0


@RunIf(min_gpus=1)
def test_gpu_bf16(tmp_path):
    cfg = compose_cfg(["trainer=gpu", "debug=fdr", "trainer.accelerator=gpu", *SHORT], tmp_path=tmp_path)
    metrics, _ = run(cfg)
    assert "train/loss" in metrics


def test_readme_quickstart_commands_match_ci():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make train" in readme
    assert "make test" in ci
    assert Path(ROOT / "Makefile").exists()


@pytest.mark.parametrize("variant", ["dpo", "mallows_theta"])
def test_mallowspo_hh_experiment_on_real_rows(variant, tmp_path):
    """experiment=mallowspo_hh end to end on the committed HH-RLHF rows (tiny model stands in for
    SmolLM2): chat transcripts, LoRA, the fixed split, entropy dispersion for theta and none for dpo."""
    fixture = ROOT / "tests" / "fixtures" / "hh_rlhf_harmless_base_sample.jsonl"
    cfg = compose_cfg(
        [
            "experiment=mallowspo_hh",
            "model=tiny_causal",
            f"data.path={fixture}",
            f"module.variant={variant}",
            "data.val_fraction=0.25",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "trainer.enable_progress_bar=false",
            "callbacks.model_checkpoint=null",
            "data.max_length=400",
            "data.max_prompt_length=300",
        ],
        tmp_path=tmp_path,
    )
    assert cfg.module.dispersion.source == ("none" if variant == "dpo" else "entropy")
    metrics, value = run(cfg)
    assert value == metrics["val/rewards/accuracy"]
    assert (metrics.get("val/dispersion/w_mean") is not None) == (variant != "dpo")
