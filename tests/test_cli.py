"""The commands users type, as typed: every ``module=<m>`` alone picks its own model/data defaults,
a run that never reached a validation validates once at the end, ``trainer.devices=N`` on CPU runs N
processes without un-synced epoch metrics, and the progress bar has no ``Epoch 3/-2``."""

import csv
import os
import subprocess
import sys

import pytest

from src.callbacks.progress import ProgressBar
from src.train import run
from src.utils.instantiate import config_choices
from tests.conftest import ROOT, compose_cfg
from tests.helpers.cli import run_script

QUICK = [
    "trainer.max_steps=2",
    "data.generator.num_examples=60",
    "trainer.enable_progress_bar=false",
    "export=false",
    "callbacks.sample_table=null",
]


#: modules whose default models are cached SFT stages (tests/test_default_runs.py builds and runs those); here the
#: same defaults with the untrained tiny models, so each module's own data choice runs in seconds
UNTRAINED = {
    "diffpo": ["model=tiny_masked"],
    "diffpo_eb": ["model=tiny_masked"],
    "d1": ["model=tiny_masked"],
}


@pytest.mark.parametrize("module", config_choices("module"))
def test_every_module_runs_alone_and_ends_cleanly(module, tmp_path):
    """``python train.py module=<m>`` with no data=: the module config chooses it. max_steps=2 never reaches
    val_check_interval (50), so the run validates once at the end instead of raising."""
    cfg = compose_cfg([f"module={module}", *UNTRAINED.get(module, []), *QUICK], tmp_path=tmp_path)
    metrics, value = run(cfg)
    assert cfg.trainer.val_check_interval > 2
    assert value == metrics[cfg.optimized_metric] and value == value  # logged, not NaN
    assert (tmp_path / "metrics.json").exists()


def test_module_defaults_and_explicit_overrides():
    # DiFFPO starts from an SFT'd tiny model (a cached stage shared with experiment=diffpo_arith) on the stage's
    # own held-out split, so its first run shows the method working
    cfg = compose_cfg(["module=diffpo"])
    assert cfg.model.name_or_path == compose_cfg(["experiment=diffpo_arith"]).model.name_or_path
    assert "stages/diffpo_arith_sft-" in cfg.model.name_or_path and cfg.data.seed == 1234
    sft = compose_cfg(["experiment=diffpo_arith_sft"]).data
    assert (cfg.data.seed, cfg.data.val_fraction, cfg.data.generator) == (sft.seed, sft.val_fraction, sft.generator)
    cfg = compose_cfg(["module=opd"])  # OPD alone: untrained tiny student and teacher (the log says what can move)
    assert cfg.model.policy._target_ == "src.models.tiny.tiny_causal_lm" and cfg.data._target_.endswith(
        "PromptDataModule"
    )
    assert cfg.teacher.policy._target_ == "src.models.tiny.tiny_causal_lm"
    # an explicit choice still wins, on the command line or in an experiment
    cfg = compose_cfg(["module=diffpo", "data=countdown", "model=hf_masked", "model.name_or_path=x"])
    assert "countdown" in cfg.data.generator._target_ and cfg.model.name_or_path == "x"
    cfg = compose_cfg(["experiment=diffpo_arith"])
    assert "stages/diffpo_arith_sft-" in cfg.model.name_or_path
    assert compose_cfg(["module=mallowspo"]).data._target_.endswith("PreferenceDataModule")


def test_unknown_metric_still_raises_after_the_final_validation(tmp_path):
    cfg = compose_cfg(["module=sft", *QUICK, "optimized_metric=val/typo"], tmp_path=tmp_path)
    with pytest.raises(KeyError, match="val/typo.*was not logged"):
        run(cfg)


def test_gpu_devices_without_gpus_is_a_clear_error(tmp_path):
    import torch

    if torch.cuda.device_count() >= 8:
        pytest.skip("this machine has 8 GPUs")
    cfg = compose_cfg(["trainer=gpu", "trainer.devices=8", *QUICK], tmp_path=tmp_path)
    with pytest.raises(RuntimeError, match="asks for 8 GPUs.*trainer.accelerator=cpu"):
        run(cfg)


def test_progress_bar_label_without_epoch_bound():
    class T:
        max_epochs, max_steps, global_step = -1, 300, 120

    bar = ProgressBar()
    bar._trainer = T()
    assert bar._get_train_description(3).strip() == "step 120/300"  # the global step, not the epoch's batches
    T.max_epochs = 5
    assert bar._get_train_description(3).strip() == "Epoch 3/4"


@pytest.mark.slow
def test_design_card_command_on_cpu_runs_n_processes(tmp_path):
    """``python train.py module=diffpo trainer.devices=N`` (N=2 here; the card says 8): N CPU processes,
    said so in the log, the run finishes, and no epoch-level metric is logged without rank sync."""
    env = {**os.environ, "PROJECT_ROOT": str(tmp_path), "PYTHONPATH": str(ROOT)}
    args = [
        "module=diffpo",
        "model=tiny_masked",  # the untrained tiny model: this test is about the processes, not the warm start
        "trainer.devices=2",
        "trainer.max_steps=2",
        "data.generator.num_examples=80",
        "trainer.enable_progress_bar=false",
    ]
    r = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "running 2 CPU processes" in out and "Starting with 2 processes" in out
    assert "sync_dist=True" not in out, [line for line in out.splitlines() if "sync_dist" in line]
    assert "validating the final model once" in out
    assert list((tmp_path / "logs" / "train" / "runs").glob("*/metrics.json"))
    # one job, one voice: the summary and the warnings once, and no false "earlier start" on the other rank
    assert "earlier start" not in out
    assert len([ln for ln in out.splitlines() if "[src.train][INFO] - val/accuracy " in ln]) == 1
    assert out.count("running 2 CPU processes") == 1


def test_repository_is_self_contained():
    """README, docs, code, configs and tests never point outside the repository (users' clones have no
    sibling research folder); every docs/ link in the README exists."""
    import re

    outside = "../" + "shared"
    for d in ("src", "docs", "tests", "scripts", "configs", "benchmarks"):
        for p in (ROOT / d).rglob("*"):
            if p.is_file() and p.suffix in (".py", ".md", ".yaml", ".txt"):
                assert outside not in p.read_text(), p
    readme = (ROOT / "README.md").read_text()
    assert outside not in readme
    links = re.findall(r"\((docs/[^)#]+)", readme)
    assert {"docs/opd_plus.md", "docs/diffpo.md", "docs/mallowspo.md"} <= set(links)
    assert all((ROOT / link).exists() for link in links), links


@pytest.mark.parametrize("variant, source", [("dpo", "none"), ("mallows_theta", "given"), ("mallows_phi", "given")])
def test_bandit_sweep_arms_are_what_they_say(variant, source):
    """``-m experiment=mallowspo_bandit module.variant=dpo,...``: the dpo arm gets no dispersion weight
    (given to dpo it would act as the theta plug-in and the two arms would be identical runs)."""
    cfg = compose_cfg(["experiment=mallowspo_bandit", f"module.variant={variant}"])
    assert cfg.module.dispersion.source == source


def test_a_run_says_what_it_runs_and_keeps_its_csv_beside_wandb(tmp_path):
    """The start-up header, a metrics line in train.log every log_every_n_steps steps (a background job has no
    bar to read), and csv/metrics.csv with logger=wandb (it used to write none)."""
    run_dir = tmp_path / "run"
    args = ["trainer.max_steps=20", "trainer.val_check_interval=10", "trainer.log_every_n_steps=10", "logger=wandb"]
    args += ["data.generator.num_examples=200", "export=false", "trainer.enable_progress_bar=false"]
    r = run_script("train.py", [*args, f"hydra.run.dir={run_dir}"], tmp_path, WANDB_MODE="offline")
    assert r.returncode == 0, r.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    header = log[log.index("run settings") :]
    for line in (
        "module     mallowspo",
        "model      tiny_causal",
        "data       sorting",
        "steps      20",
        "batch      ",
    ):
        assert line in header, line
    assert f"run folder {run_dir}" in header and "precision  32-true" in header
    lines = [ln.split(" - ", 1)[1] for ln in log.splitlines() if "[src.callbacks.progress]" in ln]
    assert [ln.split(" | ")[0] for ln in lines] == ["step 10/20", "step 20/20"], lines
    assert "train/loss " in lines[0] and "val/rewards/accuracy " in lines[1] and "steps/s" in lines[1]
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(row.get("train/loss") for row in rows) and any(row.get("val/rewards/accuracy") for row in rows)
    assert list(run_dir.glob("wandb/offline-run-*"))


def test_opd_alone_says_why_pass_at_1_cannot_move(tmp_path, caplog):
    """``module=opd`` alone distils an untrained teacher: its held-out pass@1 is logged (computed once) and the
    run warns that the student has no room to rise on the task, naming the metric that does move."""
    over = ["trainer.max_steps=40", "trainer.val_check_interval=40", "data.generator.num_examples=200"]
    cfg = compose_cfg(["module=opd", *QUICK, *over], tmp_path=tmp_path)
    with caplog.at_level("WARNING", logger="src.modules.opd"):
        metrics, _ = run(cfg)
    assert metrics["init/val/teacher/pass@1"] == metrics["val/teacher/pass@1"] == 0.0  # frozen: one value
    # the divergence to the teacher is what moves here
    assert metrics["val/distill/reverse_kl"] < metrics["init/val/distill/reverse_kl"]
    said = [r.getMessage() for r in caplog.records if "the teacher's held-out pass@1 is 0.00" in r.getMessage()]
    assert len(said) == 1 and "val/distill/reverse_kl" in said[0] and "experiment=opd_arith" in said[0]
