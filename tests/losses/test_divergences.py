"""f-divergence family: generator identities and the full-vocab divergence vs closed forms."""

import math

import pytest
import torch

from src.losses.divergences import DIVERGENCES, f_divergence_full, f_terms

KW = {"alpha": 0.3, "js_weight": 0.3}


@pytest.mark.parametrize("name", DIVERGENCES)
def test_generator_identities(name):
    lr = torch.linspace(-3, 3, 41, dtype=torch.float64)
    t = f_terms(lr, name, **KW)
    r = lr.exp().float()
    # f(1) = 0
    assert f_terms(torch.zeros(1), name, **KW).f.abs().item() < 1e-7
    # h = f / r
    torch.testing.assert_close(t.h, t.f / r, atol=1e-4, rtol=1e-4)
    # f' = d f / d r (autograd), away from TV's kink
    rr = r.clone().double().requires_grad_()
    f_of_r = f_terms(rr.log(), name, **KW).f
    (df,) = torch.autograd.grad(f_of_r.sum(), rr)
    keep = (lr.abs() > 1e-3).float()
    torch.testing.assert_close(t.f_prime.double() * keep, df * keep, atol=1e-3, rtol=1e-3)
    # convexity: f(r) >= f(1) + f'(1)(r - 1)
    fp1 = f_terms(torch.zeros(1), name, **KW).f_prime
    assert (t.f >= fp1 * (r - 1) - 1e-5).all()


def _kl(p, q):
    return (p * (p.log() - q.log())).sum(-1)


def test_full_vocab_matches_closed_forms():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(3, 5, generator=g), -1)
    q = torch.softmax(torch.randn(3, 5, generator=g), -1)
    lp, lq = p.log(), q.log()
    lam, a = 0.3, 0.3
    m = lam * p + (1 - lam) * q
    expected = {
        "reverse_kl": _kl(p, q),
        "forward_kl": _kl(q, p),
        "js": lam * _kl(p, m) + (1 - lam) * _kl(q, m),
        "tv": 0.5 * (p - q).abs().sum(-1),
        "alpha": (1 - (p**a * q ** (1 - a)).sum(-1)) / (a * (1 - a)),
        "chi2": ((p - q) ** 2 / q).sum(-1),
        "hellinger": ((p.sqrt() - q.sqrt()) ** 2).sum(-1),
    }
    assert set(expected) == set(DIVERGENCES)
    for name, exp in expected.items():
        got = f_divergence_full(lp, lq, name, alpha=a, js_weight=lam)
        torch.testing.assert_close(got, exp, atol=1e-5, rtol=1e-5, msg=name)
        assert torch.allclose(f_divergence_full(lp, lp, name, alpha=a, js_weight=lam), torch.zeros(3), atol=1e-6)


def test_alpha_limits_approach_kls():
    g = torch.Generator().manual_seed(3)
    lp = torch.log_softmax(torch.randn(4, 6, generator=g), -1).double()
    lq = torch.log_softmax(torch.randn(4, 6, generator=g), -1).double()
    rev = f_divergence_full(lp, lq, "reverse_kl")
    fwd = f_divergence_full(lp, lq, "forward_kl")
    torch.testing.assert_close(f_divergence_full(lp, lq, "alpha", alpha=1 - 1e-4), rev.float(), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(f_divergence_full(lp, lq, "alpha", alpha=1e-4), fwd.float(), atol=1e-3, rtol=1e-3)


def test_js_symmetric_at_half():
    g = torch.Generator().manual_seed(4)
    lp = torch.log_softmax(torch.randn(6, generator=g), -1)
    lq = torch.log_softmax(torch.randn(6, generator=g), -1)
    a = f_divergence_full(lp, lq, "js", js_weight=0.5)
    b = f_divergence_full(lq, lp, "js", js_weight=0.5)
    torch.testing.assert_close(a, b)
    assert a.item() <= math.log(2) + 1e-6


def test_unknown_and_invalid():
    with pytest.raises(ValueError, match="valid: reverse_kl, forward_kl, js, tv, alpha, chi2, hellinger"):
        f_terms(torch.zeros(1), "kl")
    with pytest.raises(ValueError, match="alpha not in"):
        f_terms(torch.zeros(1), "alpha", alpha=1.0)
    with pytest.raises(ValueError, match="js_weight"):
        f_terms(torch.zeros(1), "js", js_weight=1.0)


def test_extreme_log_ratios_finite():
    lr = torch.tensor([-60.0, -20.0, 0.0, 20.0, 60.0])
    for name in ("reverse_kl", "forward_kl", "js", "tv", "hellinger"):
        t = f_terms(lr[1:-1], name)
        assert all(torch.isfinite(x).all() for x in t), name
    t = f_terms(lr, "js")
    assert torch.isfinite(t.f_prime).all()
