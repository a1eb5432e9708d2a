"""A resume typed as the README shows it (``hydra.run.dir=<dir> ckpt_path=last``) continues *that* run: its
stored config, its metrics history, its record of how it was made. Each of these used to fail: the CSV
logger deleted the earlier rows (37 became 1), ``.hydra/overrides.yaml`` and ``metrics.json`` held only the
resume's overrides, a ``module=dpo`` run resumed as the default ``mallowspo`` without a word, and a second run
into a folder that holds one mixed with it."""

import csv
import json

import pytest
import torch
import yaml

from tests.test_checkpoint_safety import _train

START = [
    "module=dpo",
    "module.beta=0.2",
    "data.generator.num_examples=40",
    "data.global_batch_size=8",
    "trainer.max_steps=6",
    "trainer.val_check_interval=1000",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "validate_before_fit=false",
    "export=false",
    "callbacks.sample_table=null",
    "logger=csv",
]


def _run(args, run_dir):
    p = _train(args, run_dir)
    out, _ = p.communicate(timeout=600)
    return p.returncode, out


def _steps(run_dir):
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """A 6-step DPO run, then the README's resume to step 9 typed with nothing but the run folder."""
    run = tmp_path_factory.mktemp("resume") / "run"
    rc, out = _run(START, run)
    assert rc == 0, out[-3000:]
    first_steps = _steps(run)
    rc, out = _run(["ckpt_path=last", "trainer.max_steps=9", "trainer.enable_progress_bar=false"], run)
    assert rc == 0, out[-3000:]
    return run, first_steps


@pytest.mark.slow
def test_resume_appends_to_the_metrics_history(resumed):
    run, first = resumed
    assert first == list(range(6))
    assert _steps(run) == [*range(6), 6, 7, 8]  # the first start's rows kept, the resume's appended


@pytest.mark.slow
def test_resume_trains_under_the_runs_own_config(resumed):
    run, _ = resumed
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 9
    assert ckpt["post_train"]["module_choice"] == "dpo"  # not the default module=mallowspo
    cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert cfg["module"]["beta"] == 0.2 and cfg["module"]["variant"] == "dpo"
    assert cfg["trainer"]["max_steps"] == 9 and cfg["ckpt_path"] == "last"


@pytest.mark.slow
def test_resume_records_both_starts(resumed):
    run, _ = resumed
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    assert "module=dpo" in overrides and "module.beta=0.2" in overrides and "trainer.max_steps=9" in overrides
    assert "trainer.max_steps=6" not in overrides and not any(o.startswith("ckpt_path") for o in overrides)
    rec = json.loads((run / "metrics.json").read_text())
    assert rec["overrides"]["module"] == "dpo" and rec["overrides"]["trainer.max_steps"] == "9"
    assert [s["kind"] for s in rec["starts"]] == ["start", "resume"]
    assert rec["starts"][0]["overrides"] == START
    assert rec["starts"][1]["overrides"][:2] == ["ckpt_path=last", "trainer.max_steps=9"]


@pytest.mark.slow
def test_a_resume_that_changes_training_is_an_error_naming_the_key(resumed):
    run, _ = resumed
    before = (run / "checkpoints" / "last.ckpt").read_bytes()
    rc, out = _run(["ckpt_path=last", "module.beta=0.5"], run)
    assert rc != 0 and "module.beta: 0.2 -> 0.5" in out and "force_resume=true" in out
    rc, out = _run(["ckpt_path=last", "module=mallowspo"], run)
    assert rc != 0 and "module (config group): 'dpo' -> 'mallowspo'" in out
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == before  # nothing trained, nothing written


@pytest.mark.slow
def test_a_fresh_run_into_a_folder_that_holds_a_run_is_refused(resumed):
    run, _ = resumed
    rows = len(_steps(run))
    rc, out = _run(START, run)
    assert rc != 0 and "already holds a run" in out and "ckpt_path=last" in out
    assert len(_steps(run)) == rows


@pytest.mark.slow
def test_force_resume_applies_a_changed_key(tmp_path):
    run = tmp_path / "run"
    assert _run(START, run)[0] == 0
    rc, out = _run(["ckpt_path=last", "module.beta=0.5", "force_resume=true", "trainer.max_steps=8"], run)
    assert rc == 0, out[-3000:]
    assert "force_resume=true: module.beta changes on resume" in out
    assert yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["module"]["beta"] == 0.5
    assert json.loads((run / "metrics.json").read_text())["overrides"]["module.beta"] == "0.5"


def test_evaluating_a_checkpoint_with_another_module_names_the_module(tmp_path):
    """An OPD checkpoint validated under the default module gave torch's ``Missing key(s) in state_dict:
    "disp_scale"``; the checkpoint says which module wrote it, checked before any weight is loaded."""
    from src.modules.base import PostTrainModule

    class Other(PostTrainModule):
        pass

    ckpt = {"post_train": {"module_class": "src.modules.opd.OPDModule", "module_choice": "opd"}}
    with pytest.raises(ValueError, match=r"written by module=opd \(src\.modules\.opd\.OPDModule\).*pass module=opd"):
        Other.on_load_checkpoint(Other.__new__(Other), ckpt)
