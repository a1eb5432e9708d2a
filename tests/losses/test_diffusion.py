"""Masked-diffusion likelihood pieces: stages, staged log-probs, importance ratios."""

import pytest
import torch

from src.losses.diffusion import importance_ratio, stage_assignment, staged_token_logps, surrogate_sequence_logp


def test_stage_assignment_two_stage():
    step = torch.tensor([[0, 1, 2, 3, 0], [0, 0, 1, 1, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    n = torch.tensor([4, 2])
    a = stage_assignment(step, mask, num_stages=2, num_steps=n)
    assert a.tolist() == [[0, 0, 1, 1, 0], [0, 0, 1, 1, 0]]
    assert (stage_assignment(step, mask, num_stages=1, num_steps=n) == 0).all()
    # S = number of steps: every step its own stage (the exact trajectory likelihood)
    assert stage_assignment(step, mask, num_stages=4, num_steps=torch.tensor([4, 4]))[0].tolist() == [0, 1, 2, 3, 0]
    with pytest.raises(ValueError):
        stage_assignment(step, mask, num_stages=0, num_steps=n)


def test_staged_logps_and_one_step_special_case():
    stage_logps = torch.tensor([[[-1.0, -2.0, -3.0]], [[-0.1, -0.2, -0.3]]])  # (S=2, B=1, T=3)
    a = torch.tensor([[0, 1, 1]])
    torch.testing.assert_close(staged_token_logps(stage_logps, a), torch.tensor([[-1.0, -0.2, -0.3]]))
    m = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(surrogate_sequence_logp(stage_logps, a, m), torch.tensor([-1.2]))
    # one stage: the one-step surrogate sum log p(y_i | all masked)
    torch.testing.assert_close(surrogate_sequence_logp(stage_logps[:1], torch.zeros_like(a), m), torch.tensor([-3.0]))
    with pytest.raises(ValueError):
        staged_token_logps(stage_logps[0], a)


def test_importance_ratio_one_when_equal_and_values():
    lp = torch.randn(3, 5)
    m = torch.ones(3, 5)
    r = importance_ratio(lp, lp, m).loss
    assert torch.equal(r, torch.ones(3, 5))
    rs = importance_ratio(lp, lp, m, level="sequence").loss
    assert torch.equal(rs, torch.ones(3))
    r2 = importance_ratio(torch.zeros(1, 2), torch.tensor([[-0.5, -0.25]]), torch.ones(1, 2), level="sequence")
    assert r2.loss.item() == pytest.approx(torch.exp(torch.tensor(0.75)).item())
    r3 = importance_ratio(torch.zeros(1, 2), torch.tensor([[-5.0, -5.0]]), torch.ones(1, 2), truncate=2.0)
    assert r3.loss.max().item() == 2.0
