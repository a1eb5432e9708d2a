"""Checkpoints a cluster can trust, tested the way they fail: SIGKILL in the middle of a save, a full disk,
SIGTERM mid-run, a corrupt last.ckpt, ``ckpt_path=last`` with nothing to resume, step saves between
validations."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from src.utils.checkpoint_io import AtomicCheckpointIO, atomic_torch_save, readable, resolve_ckpt_path
from tests.conftest import ROOT
from tests.helpers.cli import _default_signals, hold_run_lock

WRITER = """
import sys, torch
from src.utils.checkpoint_io import AtomicCheckpointIO
io, path = AtomicCheckpointIO(), sys.argv[1]
big = torch.randn(4_000_000)  # 16 MB: a save takes long enough to be killed in the middle
i = 0
while True:
    io.save_checkpoint({"state_dict": {"w": big}, "i": i}, path)
    i += 1
    print(i, flush=True)
"""


def test_sigkill_during_saves_never_leaves_a_corrupt_checkpoint(tmp_path):
    """Random SIGKILLs while a process rewrites last.ckpt in a loop: the file always loads (the previous
    or the new checkpoint), and nothing is left outside the checkpoint folder. Plain ``torch.save`` to the
    final name fails this (a truncated zip)."""
    path = tmp_path / "ckpts" / "last.ckpt"
    rng = random.Random(0)
    for trial in range(6):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path / "elsewhere")}
        (tmp_path / "elsewhere").mkdir(exist_ok=True)
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env, stdout=subprocess.PIPE, text=True)
        p.stdout.readline()  # at least one complete save
        time.sleep(rng.uniform(0.0, 0.4))
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert readable(path) is None, f"trial {trial}: {readable(path)}"
        assert list((tmp_path / "elsewhere").iterdir()) == []  # no orphans in $TMPDIR
    # what a killed save leaves is a temporary next to the checkpoints, which ckpt_path=last clears
    (path.parent / ".last.ckpt.tmp-1234").write_bytes(b"partial")
    assert resolve_ckpt_path("last", path.parent) == str(path)
    assert not (path.parent / ".last.ckpt.tmp-1234").exists()


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    """A full disk (ENOSPC in the middle of the write): the old checkpoint stays, no temporary remains."""
    path = tmp_path / "step_000050.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.ones(3)}}, path)

    def full(obj, f, *a, **k):
        f.write(b"x" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="No space left"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000050.ckpt"]
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=False)["state_dict"]["w"], torch.ones(3))


def test_ckpt_path_last_falls_back_and_errors_clearly(tmp_path, caplog):
    with pytest.raises(FileNotFoundError, match="ckpt_path=last: no checkpoint in"):
        resolve_ckpt_path("last", tmp_path)
    atomic_torch_save({"state_dict": {"w": torch.ones(1)}}, tmp_path / "step_000010.ckpt")
    (tmp_path / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")  # what a copy killed half-way leaves
    with caplog.at_level("WARNING"):
        assert resolve_ckpt_path("last", tmp_path) == str(tmp_path / "step_000010.ckpt")
    assert "last.ckpt is unreadable" in caplog.text and "step_000010.ckpt" in caplog.text
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        resolve_ckpt_path(str(tmp_path / "last.ckpt"), tmp_path)
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        resolve_ckpt_path(str(tmp_path / "nope.ckpt"), tmp_path)


def _train(args, run_dir, **kw):
    env = {**os.environ, "PROJECT_ROOT": str(run_dir.parent), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    kw.setdefault("preexec_fn", _default_signals)
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"],
        cwd=run_dir.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


COMMON = [
    "data.generator.num_examples=40",
    "data.global_batch_size=8",
    "trainer.max_steps=400",
    "trainer.val_check_interval=1000",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "validate_before_fit=false",
    "export=false",
    "callbacks.sample_table=null",
    "logger=csv",
]


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_exits_non_zero(tmp_path):
    """SIGTERM mid-run (the scheduler's warning before a kill): last.ckpt at the next step boundary, exit
    143, and ``ckpt_path=last`` continues from it. It used to exit 0 with the checkpoint 182 steps old."""
    run = tmp_path / "run"
    p = _train([*COMMON, "+callbacks.term._target_=tests.helpers.crash.SignalAtStep", "+callbacks.term.step=7"], run)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 143, out[-3000:]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] in (7, 8), ckpt["global_step"]
    # the first start's callbacks are part of the run; this one is switched off for the resume
    p = _train([*COMMON, "trainer.max_steps=10", "ckpt_path=last", "+callbacks.term=null"], run)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 10


@pytest.mark.slow
def test_step_saves_do_not_wait_for_the_monitored_metric(tmp_path):
    """every_n_train_steps=2 with validation at step 1000: last.ckpt is written at step 2, 4, ... (Lightning
    defers such saves until the monitored metric exists, so nothing was written before the first validation),
    and ckpt_path=last into a folder without checkpoints is an error."""
    run = tmp_path / "run"
    args = [*COMMON, "callbacks.model_checkpoint.every_n_train_steps=2"]
    p = _train([*args, "+callbacks.kill._target_=tests.helpers.crash.KillAtStep", "+callbacks.kill.step=7"], run)
    p.communicate(timeout=600)
    assert p.returncode == -9
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    empty = tmp_path / "typo"
    p = _train([*args, "ckpt_path=last"], empty)
    out, _ = p.communicate(timeout=600)
    assert p.returncode != 0 and "ckpt_path=last: no checkpoint in" in out


def test_a_second_run_into_the_same_folder_is_refused(tmp_path):
    """Two runs started into one hydra.run.dir used to mix last.ckpt/last-v1.ckpt, one CSV and two configs;
    while the first holds the folder, the second is an error. A lock held by a dead process is no lock."""
    from src.utils.run_lock import lock_run_dir

    holder = hold_run_lock(tmp_path, seconds=60)
    with pytest.raises(RuntimeError, match="another run is using"):
        lock_run_dir(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lock_run_dir(tmp_path) is not None  # released by the OS when the holder died


@pytest.mark.slow
def test_ctrl_c_writes_a_checkpoint_and_exits_non_zero(tmp_path):
    """The first SIGINT: last.ckpt at the next step boundary, then a non-zero exit (it used to write none)."""
    run = tmp_path / "run"
    over = [
        "+callbacks.term._target_=tests.helpers.crash.SignalAtStep",
        "+callbacks.term.step=5",
        "+callbacks.term.signum=2",
    ]
    p = _train([*COMMON, *over], run)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 1, out[-3000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] in (5, 6)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.slow
def test_a_run_started_with_sigint_ignored_says_so_and_honours_sigterm(tmp_path):
    """``cmd &`` / ``nohup cmd &`` start the run with SIGINT ignored (inherited): the log says Ctrl+C cannot stop
    it and how to, and SIGTERM still writes last.ckpt and stops."""
    run = tmp_path / "run"
    over = ["+callbacks.term._target_=tests.helpers.crash.SignalAtStep", "+callbacks.term.step=5"]
    p = _train([*COMMON, *over], run, preexec_fn=_ignore_sigint)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 143, out[-3000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] in (5, 6)
    assert "SIGINT is ignored in this process" in (run / "train.log").read_text()


def test_a_refused_run_leaves_the_first_runs_hydra_record_untouched(tmp_path):
    """The refusal comes before Hydra writes .hydra/ (it used to rewrite the live run's config.yaml and
    overrides.yaml with the refused command's, e.g. module=dpo module.beta=0.3)."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    record = {"config.yaml": "module:\n  variant: mallows_theta\n", "overrides.yaml": "- module=mallowspo\n"}
    for name, text in record.items():
        (run / ".hydra" / name).write_text(text)
    holder = hold_run_lock(run)
    try:
        p = _train(["module=dpo", "module.beta=0.3"], run)
        out, _ = p.communicate(timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert p.returncode == 2, out[-3000:]
    assert "another run is using" in out and "Traceback" not in out
    assert {n: (run / ".hydra" / n).read_text() for n in record} == record
    assert sorted(p.name for p in (run / ".hydra").iterdir()) == sorted(record)  # no hydra.yaml either


def test_a_start_that_fails_on_its_config_leaves_no_run_folder(tmp_path):
    p = _train(["data.global_batch_size=abc"], tmp_path / "run")
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 2 and "config error: data.global_batch_size='abc'" in out, out[-3000:]
    assert not (tmp_path / "run").exists()
    kept = tmp_path / "kept"  # a folder that was there before the start is never removed
    kept.mkdir()
    p = _train(["data.global_batch_size=abc"], kept)
    assert p.communicate(timeout=300) and p.returncode == 2 and kept.is_dir()


@pytest.mark.slow
@pytest.mark.parametrize("val_every, step_every, expect", [(5, None, 45), (1000, 10, 40)], ids=["val", "steps"])
def test_a_kill_after_the_metric_plateaued_loses_at_most_one_interval(tmp_path, val_every, step_every, expect):
    """The held-out accuracy reaches its best early and stays there; last.ckpt still follows every validation
    (and every ``every_n_train_steps``), so a SIGKILL at step 47 resumes at the last interval, not at the step
    the metric last improved (a second resume once went back 550 steps)."""
    run = tmp_path / "run"
    args = [
        *COMMON,
        "trainer.max_steps=60",
        f"trainer.val_check_interval={val_every}",
        f"callbacks.model_checkpoint.every_n_train_steps={step_every or 'null'}",
    ]
    p = _train([*args, "+callbacks.kill._target_=tests.helpers.crash.KillAtStep", "+callbacks.kill.step=47"], run)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == -9, out[-3000:]
    if val_every < 1000:  # the metric did plateau: the best file is older than last.ckpt
        best = [c for c in (run / "checkpoints").glob("step_*.ckpt")]
        assert best and all(torch.load(c, weights_only=False)["global_step"] < expect for c in best)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == expect
    p = _train([*args, "trainer.max_steps=48", "ckpt_path=last", "+callbacks.kill=null"], run)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    assert f"resuming at step {expect} (last.ckpt written at " in out
