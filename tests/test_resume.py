"""Exact resume: a run SIGKILLed mid-training and restarted from its last checkpoint ends with the
same weights and logs the same per-step losses as an uninterrupted run (same seed): RNG streams,
data position (mid-epoch and across epochs), optimizer/scheduler and controller state all resume."""

import csv
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT

# 36 training pairs / batch 8 -> 4 batches per epoch: 8 steps span two epochs
# MallowsPO runs with a fixed dispersion scale: `scale=auto` is calibrated afresh by each process from the
# reference's entropies, and c = 1 / mean(-log Hbar) with Hbar ~ 0.997 turns a last-bit difference in one
# entropy (seen on some CPUs' BLAS between two processes) into a 1e-6 change of c, so two independent runs
# need not agree bit for bit. That the calibrated c itself resumes is test_calibrated_scale_resumes.
CASES = {
    "mallowspo": [
        "data.generator.num_examples=40",
        "data.global_batch_size=8",
        "data.eval_batch_size=8",
        "module.dispersion.scale=374.75",
    ],
    "opd": ["module=opd", "data=arithmetic", "data.generator.num_examples=40", "data.global_batch_size=8"],
    "diffpo": [
        "module=diffpo",
        "model=tiny_masked",
        "data=arithmetic",
        "data.generator.num_examples=40",
        "data.global_batch_size=8",
        "module.inner_updates=1",
    ],
}
# the learning-rate schedule resumes too (its step count is in the checkpoint): warm-up and cosine decay
# over the 8 steps, in automatic (MallowsPO) and manual (DiFFPO: one schedule step per optimizer step)
# optimisation
COSINE = ["scheduler=cosine", "scheduler.warmup_steps=2"]
CASES["mallowspo_cosine"] = [*CASES["mallowspo"], *COSINE]
CASES["diffpo_cosine"] = [*CASES["diffpo"], *COSINE]
MONITOR = {"mallowspo": "val/rewards/accuracy", "opd": "val/distill/reverse_kl", "diffpo": "val/accuracy"}
MONITOR.update(mallowspo_cosine=MONITOR["mallowspo"], diffpo_cosine=MONITOR["diffpo"])
COMMON = [
    "trainer.max_steps=8",
    # validation (which also writes last.ckpt) only at the end, so the kill at step 6 resumes from the step
    # checkpoint under test: mid-epoch (every 3) or at an epoch end (every 4)
    "trainer.val_check_interval=8",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "validate_before_fit=false",
    "export=false",
    "callbacks=default",
    "callbacks.sample_table=null",
    "callbacks.model_checkpoint.monitor=null",
    "callbacks.model_checkpoint.save_top_k=0",
    "logger=csv",
]


def _train(args, run_dir):
    env = {**os.environ, "PROJECT_ROOT": str(run_dir.parent), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"],
        cwd=run_dir.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _logged(run_dir, key):
    out = {}
    for path in sorted(run_dir.glob("csv/**/metrics.csv")):
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get(key):
                    out[int(row["step"])] = float(row[key])  # later versions (the resume) win
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, every",
    [("mallowspo", 3), ("mallowspo", 4), ("opd", 3), ("diffpo", 3), ("mallowspo_cosine", 3), ("diffpo_cosine", 3)],
    ids=["mallowspo-mid-epoch-ckpt", "mallowspo-epoch-end-ckpt", "opd", "diffpo", "mallowspo-cosine", "diffpo-cosine"],
)
def test_killed_run_resumes_exactly(case, every, tmp_path):
    """Checkpoints every ``every`` steps (4 batches per epoch: 3 is mid-epoch, 4 an epoch end); the
    process is SIGKILLed after step 6 and resumed from ``last``."""
    args = [*CASES[case], *COMMON, f"callbacks.model_checkpoint.every_n_train_steps={every}"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    r = _train(args, whole)
    assert r.returncode == 0, r.stderr[-3000:]
    kill = ["+callbacks.kill._target_=tests.helpers.crash.KillAtStep", "+callbacks.kill.step=6"]
    r = _train([*args, *kill], killed)
    assert r.returncode == -9, (r.returncode, r.stderr[-3000:])  # really killed, not a clean exit
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == every
    r = _train([*args, "ckpt_path=last", "+callbacks.kill=null"], killed)  # the kill switch is not part of the run
    assert r.returncode == 0, r.stderr[-3000:]
    assert "not resumable" not in r.stderr  # Lightning knows the loader resumes (no false alarm mid-epoch)

    a = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 8
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), f"{case}: {k} differs after resume"
    # metrics.csv keeps what the killed process flushed and appends the resumed one's rows (every step after
    # the checkpoint; a re-run step's later row wins): each step's loss equals the uninterrupted run's
    la, lb = _logged(whole, "train/loss"), _logged(killed, "train/loss")
    assert len(la) == 8 and set(range(every, 8)) <= set(lb) <= set(la)
    for step in lb:
        assert la[step] == lb[step], f"{case}: train/loss at step {step}: {la[step]} vs {lb[step]}"
    if "scheduler=cosine" in args:  # the schedule really ran: the resumed run ends at the cosine's floor
        lr = [g["lr"] for g in b["optimizer_states"][0]["param_groups"]]
        assert b["lr_schedulers"][0]["last_epoch"] == 8 and lr == [
            g["lr"] for g in a["optimizer_states"][0]["param_groups"]
        ]
        assert all(
            abs(x - 0.1 * g["initial_lr"]) < 1e-12 for x, g in zip(lr, b["optimizer_states"][0]["param_groups"])
        )
    metric = MONITOR[case]  # the final held-out metric
    va, vb = _logged(whole, metric), _logged(killed, metric)
    assert va and max(va) == max(vb) and va[max(va)] == vb[max(vb)], (metric, va, vb)


@pytest.mark.slow
def test_calibrated_scale_resumes(tmp_path):
    """``module.dispersion.scale=auto``: the scale calibrated at the first start is in the checkpoint and
    a resumed run keeps it bit for bit (it is not calibrated again)."""
    args = [
        *CASES["mallowspo"][:-1],
        *COMMON,
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "callbacks.model_checkpoint.every_n_train_steps=2",
    ]
    run = tmp_path / "run"
    kill = ["+callbacks.kill._target_=tests.helpers.crash.KillAtStep", "+callbacks.kill.step=3"]
    r = _train([*args, *kill], run)
    assert r.returncode == -9, (r.returncode, r.stderr[-3000:])
    before = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert before["global_step"] == 2 and float(before["state_dict"]["disp_scale"]) > 0  # calibrated
    r = _train([*args, "ckpt_path=last", "+callbacks.kill=null"], run)
    assert r.returncode == 0, r.stderr[-3000:]
    after = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert after["global_step"] == 4
    assert torch.equal(after["state_dict"]["disp_scale"], before["state_dict"]["disp_scale"])
