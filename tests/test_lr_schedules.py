"""Learning-rate schedules (``scheduler=constant|cosine``): hand-derived factors, errors, wiring."""

import math

import pytest
import torch

from src.utils.lr_schedules import warmup_constant, warmup_cosine
from tests.conftest import compose_cfg


def _factors(sched_fn, steps, **kw):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = sched_fn(opt, **kw)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"] / 2.0)
        opt.step()
        sched.step()
    return out


def test_warmup_cosine_by_hand():
    # warm-up 2: 1/2, 2/2; then cos over 4 steps from 1 to 0.1: 0.1 + 0.45 (1 + cos(pi k / 4)), held after
    want = [0.5, 1.0] + [0.1 + 0.45 * (1 + math.cos(math.pi * k / 4)) for k in range(5)] + [0.1]
    got = _factors(warmup_cosine, 8, warmup_steps=2, total_steps=6, min_ratio=0.1)
    assert got == pytest.approx(want, abs=1e-12)


def test_warmup_constant_by_hand():
    assert _factors(warmup_constant, 5, warmup_steps=4) == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert _factors(warmup_constant, 3, warmup_steps=0) == [1.0, 1.0, 1.0]  # the default: the plain lr


def test_bad_schedules():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="warmup_steps < total_steps"):
        warmup_cosine(opt, warmup_steps=10, total_steps=10, min_ratio=0.1)
    with pytest.raises(ValueError, match="min_ratio"):
        warmup_cosine(opt, warmup_steps=0, total_steps=10, min_ratio=2.0)
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        warmup_constant(opt, warmup_steps=-1)


@pytest.mark.parametrize("module", ["mallowspo", "dpo", "opd", "sft", "diffpo", "diffpo_eb", "mdm_sft"])
def test_every_module_takes_the_schedule(module, tmp_path):
    """Every module's YAML wires ``scheduler=...`` in; total_steps follows trainer.max_steps."""
    from hydra.utils import instantiate

    cfg = compose_cfg([f"module={module}", "scheduler=cosine", "trainer.max_steps=7"], tmp_path=tmp_path)
    assert cfg.module.scheduler.total_steps == 7
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert isinstance(instantiate(cfg.module.scheduler)(optimizer=opt), torch.optim.lr_scheduler.LambdaLR)
