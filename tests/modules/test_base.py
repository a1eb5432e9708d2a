"""Base module helpers: the non-finite-loss policy and frozen-model checkpoint handling."""

import functools

import pytest
import torch

from src.modules.base import PostTrainModule


def mod(policy):
    m = PostTrainModule(optimizer=functools.partial(torch.optim.SGD, lr=0.1), on_non_finite=policy)
    m.lin = torch.nn.Linear(2, 1)
    m.log = lambda *a, **k: None  # no trainer attached
    return m


def test_skip_non_finite_gives_zero_loss_with_graph():
    m = mod("skip")
    bad = m.lin(torch.ones(1, 2)).sum() * float("nan")
    out = m.guard_loss(bad)
    assert out.item() == 0.0 and out.requires_grad and m.non_finite_steps == 1
    out.backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in m.lin.parameters())
    ok = m.lin(torch.ones(1, 2)).sum()
    assert m.guard_loss(ok) is ok


def test_raise_non_finite_is_clear():
    m = mod("raise")
    with pytest.raises(FloatingPointError, match="non-finite loss .* module.on_non_finite=skip"):
        m.guard_loss(torch.tensor(float("inf")))
    with pytest.raises(ValueError, match="valid: skip, raise, ignore"):
        mod("warn")


def test_non_finite_step_is_skipped_in_a_real_fit(tmp_path):
    """A NaN batch on one process: the optimizer step is skipped, so the weights do not move."""

    class M(PostTrainModule):
        def __init__(self):
            super().__init__(optimizer=functools.partial(torch.optim.AdamW, lr=0.1))
            self.lin = torch.nn.Linear(2, 1)
            self.seen = []

        def training_step(self, batch, i):
            loss = self.lin(batch).pow(2).mean()
            if i == 1:
                loss = loss * float("nan")
            self.seen.append({k: v.clone() for k, v in self.lin.state_dict().items()})
            return self.skip_or_loss(loss)

    m = M()
    _fit(m, torch.utils.data.DataLoader(torch.ones(3, 2), batch_size=1), max_steps=3)
    final = m.lin.state_dict()
    # step 0 updated; step 1 (NaN) did not; step 2 updated again
    assert not torch.equal(m.seen[0]["weight"], m.seen[1]["weight"])
    assert torch.equal(m.seen[1]["weight"], m.seen[2]["weight"])
    assert torch.isfinite(final["weight"]).all() and m.non_finite_steps == 1


def _fit(module, data, **trainer_kw) -> None:
    """``module`` fitted on ``data`` by a quiet CPU trainer (no logger, checkpoints, progress bar or summary)."""
    import lightning as L

    L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kw,
    ).fit(module, data)


def _nan_fit(tmp_path, bad_steps, max_steps=30, **kw):
    """A fit whose loss is NaN at the steps in ``bad_steps``; returns the module."""

    class M(PostTrainModule):
        def __init__(self):
            super().__init__(optimizer=functools.partial(torch.optim.SGD, lr=0.1), **kw)
            self.lin = torch.nn.Linear(2, 1)

        def training_step(self, batch, i):
            loss = self.lin(batch).pow(2).mean()
            return self.skip_or_loss(loss * float("nan") if i in bad_steps else loss)

    m = M()
    data = torch.utils.data.DataLoader(torch.ones(max_steps, 2), batch_size=1)
    _fit(m, data, max_steps=max_steps, default_root_dir=str(tmp_path))
    return m


def test_mostly_skipped_training_stops_loudly(tmp_path, caplog):
    """29 of 30 steps non-finite under skip used to end with exit 0 and a garbage model; now every skip is
    a warning and the run stops once more than half of the recent steps were skipped."""
    with caplog.at_level("WARNING", logger="src.modules.base"):
        with pytest.raises(FloatingPointError, match="of the last 10 steps had a non-finite loss"):
            _nan_fit(tmp_path, bad_steps=set(range(1, 30)))
    warned = [r for r in caplog.records if "step skipped" in r.getMessage()]
    assert len(warned) == 9  # steps 1..9 skipped, each said; the 10th step's check stops the run
    m = _nan_fit(tmp_path, bad_steps={3, 17})  # an occasional bad batch is skipped and training goes on
    assert m.non_finite_steps == 2


def test_a_non_finite_policy_is_never_exported(tmp_path, char_tok):
    from src.models.tiny import tiny_causal_lm
    from src.train import export_policy

    m = torch.nn.Module()
    m.policy = tiny_causal_lm(char_tok, hidden_size=16, num_layers=1, num_heads=2)
    m.device_mesh = None
    with torch.no_grad():
        next(m.policy.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="not exporting a non-finite policy"):
        export_policy(m, char_tok, tmp_path / "hf_model")
    assert not (tmp_path / "hf_model").exists()


def test_an_export_that_fails_half_way_leaves_nothing_half_written(tmp_path, char_tok, monkeypatch):
    """A full disk while the weights are written: no hf_model/ with configs and no weights; an earlier
    export stays as it was."""
    from pathlib import Path

    from src.models.tiny import tiny_causal_lm
    from src.train import export_policy

    m = torch.nn.Module()
    m.policy = tiny_causal_lm(char_tok, hidden_size=16, num_layers=1, num_heads=2)
    m.device_mesh = None
    export_policy(m, char_tok, tmp_path / "hf_model")
    before = sorted(p.name for p in (tmp_path / "hf_model").iterdir())
    assert "config.json" in before and any(n.endswith(".safetensors") for n in before)

    def full(self, folder, **kw):
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(folder)  # the config lands, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(m.policy), "save_pretrained", full)
    with pytest.raises(OSError, match="No space left"):
        export_policy(m, char_tok, tmp_path / "hf_model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf_model"]  # no temporary left behind
    assert sorted(p.name for p in (tmp_path / "hf_model").iterdir()) == before


def test_gradients_are_freed_right_after_each_optimizer_step_not_at_the_next_backward():
    """With automatic optimisation Lightning zeroes gradients inside the next step's closure, after its forward;
    PostTrainModule frees them as soon as the optimizer has stepped. With accumulation (2 micro-batches per step)
    the first micro-batch's gradients must still be there when the second starts, and gone after the step."""

    class M(PostTrainModule):
        def __init__(self):
            super().__init__(optimizer=functools.partial(torch.optim.SGD, lr=0.1))
            self.lin = torch.nn.Linear(2, 1)
            self.seen = []

        def training_step(self, batch, i):
            self.seen.append((i, any(p.grad is not None for p in self.lin.parameters())))
            return self.lin(batch).pow(2).mean()

    m = M()
    _fit(m, torch.utils.data.DataLoader(torch.ones(4, 2), batch_size=1), max_steps=2, accumulate_grad_batches=2)
    # micro-batches 0, 1 make step 1; 2, 3 step 2: gradients exist only inside an accumulation window
    assert m.seen == [(0, False), (1, True), (2, False), (3, True)]
    assert all(p.grad is None for p in m.lin.parameters())
