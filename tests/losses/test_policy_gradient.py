"""GRPO advantages, PPO clipped surrogate, KL estimators: golden values and exact expectations."""

import math

import pytest
import torch

from src.losses.policy_gradient import clipped_surrogate, group_advantages, kl_penalty


def test_group_advantages_golden():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    a = group_advantages(r, eps=0.0 + 1e-12)
    s = math.sqrt(1 / 3)  # unbiased std of (1, 0, 0, 1)
    torch.testing.assert_close(a[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / s)
    torch.testing.assert_close(a[1], torch.zeros(4))  # constant group: no signal, no NaN
    torch.testing.assert_close(group_advantages(r, normalize_std=False)[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    with pytest.raises(ValueError, match="num_groups, group_size"):
        group_advantages(torch.ones(4))


def test_clipped_surrogate_golden():
    """ratio e^{0.5}=1.6487 > 1.2 with A=+1 -> clipped to 1.2; ratio e^{-0.5}=0.6065 < 0.8 with A=-1 -> 0.8*(-1)."""
    logp = torch.tensor([[0.5, -0.5, 0.0]], requires_grad=True)
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    out = clipped_surrogate(logp, old, adv, torch.ones(1, 3), clip_eps_low=0.2)
    # per-token: -min(1.6487, 1.2) = -1.2 ; -min(-0.6065, -0.8) = 0.8 ; -(1 * 2) = -2
    assert out.loss.item() == pytest.approx((-1.2 + 0.8 - 2.0) / 3, abs=1e-5)
    assert out.metrics["clip_frac"].item() == pytest.approx(2 / 3)
    out.loss.backward()
    # clipped tokens get zero gradient; the unclipped one gets -A * ratio / 3
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0, -2.0 / 3]]))


def test_ratio_one_is_policy_gradient():
    logp = torch.randn(2, 4, requires_grad=True)
    adv = torch.tensor([1.0, -2.0])
    out = clipped_surrogate(logp, logp.detach(), adv, torch.ones(2, 4))
    out.loss.backward()
    torch.testing.assert_close(logp.grad, -adv[:, None].expand(2, 4) / 8)


def test_kl_estimators_exact_expectation():
    """E_pi[k1] = E_pi[k3] = KL(pi || ref) exactly; k2 is biased but non-negative."""
    pi = torch.softmax(torch.tensor([0.3, -1.0, 2.0, 0.1]), -1)
    ref = torch.softmax(torch.tensor([1.0, 0.0, 0.5, -0.5]), -1)
    kl = (pi * (pi.log() - ref.log())).sum()
    for kind in ("k1", "k3"):
        e = (pi * kl_penalty(pi.log(), ref.log(), kind=kind)).sum()
        assert e.item() == pytest.approx(kl.item(), abs=1e-6), kind
    assert (kl_penalty(pi.log(), ref.log(), kind="k2") >= 0).all()
    assert (kl_penalty(pi.log(), ref.log(), kind="k3") >= 0).all()
    with pytest.raises(ValueError, match="valid: k1, k2, k3"):
        kl_penalty(pi, ref, kind="k4")
