"""The f-divergence family used by on-policy distillation (OPD / OPD+).

Convention (``docs/opd_plus.md``): student ``pi``, teacher ``q``, ratio ``r = pi / q``,

    D_f(pi || q) = E_q[ f(r) ] = E_pi[ h(r) ],   h(r) := f(r) / r,   f convex, f(1) = 0.

Everything is evaluated from ``log r`` for numerical range. Each divergence provides

* ``f(r)``      - the generator,
* ``f'(r)``     - its derivative: the *unbiased* per-sample advantage of OPD+ (``h + r h' = f'``),
* ``h(r)``      - ``f(r) / r``: the per-sample "reward" the stop-gradient OPD baseline uses.

| name        | f(r)                                             | D_f(pi||q)             |
|-------------|--------------------------------------------------|------------------------|
| reverse_kl  | r log r                                          | KL(pi || q)            |
| forward_kl  | -log r                                           | KL(q || pi)            |
| js          | l r log r - (l r + 1 - l) log(l r + 1 - l)        | l KL(pi||m)+(1-l)KL(q||m), m = l pi + (1-l) q |
| tv          | |r - 1| / 2                                      | total variation        |
| alpha       | (r^a - a r - (1 - a)) / (a (a - 1))              | Amari alpha (a -> 1: reverse KL, a -> 0: forward KL) |
| chi2        | (r - 1)^2                                        | Pearson chi^2(pi || q) |
| hellinger   | (sqrt(r) - 1)^2                                  | 2 x squared Hellinger  |

``l`` is ``js_weight`` (0.5: the symmetric Jensen-Shannon divergence), ``a`` is ``alpha``.
Unknown names raise ``ValueError`` listing the valid ones.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, get_args

import torch
from torch import Tensor

Divergence = Literal["reverse_kl", "forward_kl", "js", "tv", "alpha", "chi2", "hellinger"]
DIVERGENCES: tuple[str, ...] = get_args(Divergence)


class FTerms(NamedTuple):
    """``f(r)``, ``f'(r)`` and ``h(r) = f(r) / r`` at the same ratios."""

    f: Tensor
    f_prime: Tensor
    h: Tensor


def check_divergence(name: str, *, alpha: float = 0.5, js_weight: float = 0.5) -> None:
    """Raise a clear ``ValueError`` for an unknown name or an invalid hyperparameter."""
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; valid: {', '.join(DIVERGENCES)}")
    if name == "alpha" and (alpha in (0.0, 1.0) or not math.isfinite(alpha)):
        raise ValueError(
            f"alpha-divergence needs alpha not in {{0, 1}} (got {alpha}); use forward_kl (alpha=0) "
            "or reverse_kl (alpha=1) for the limits"
        )
    if name == "js" and not 0.0 < js_weight < 1.0:
        raise ValueError(f"js_weight must lie in (0, 1), got {js_weight}")


def f_terms(log_ratio: Tensor, name: Divergence, *, alpha: float = 0.5, js_weight: float = 0.5) -> FTerms:
    """``f``, ``f'`` and ``h`` of the named divergence at ``r = exp(log_ratio)`` (fp32).

    Args:
        log_ratio: ``log pi - log q``, any shape.
        name: one of :data:`DIVERGENCES`.
        alpha: order of the alpha-divergence.
        js_weight: student weight ``l`` of the generalised Jensen-Shannon divergence.
    """
    check_divergence(name, alpha=alpha, js_weight=js_weight)
    lr = log_ratio.float()
    r = lr.exp()
    inv_r = (-lr).exp()
    match name:
        case "reverse_kl":
            f, fp, h = r * lr, lr + 1.0, lr
        case "forward_kl":
            f, fp, h = -lr, -inv_r, -lr * inv_r
        case "js":
            lam = js_weight
            # log(l r + 1 - l) computed as logaddexp for large |log r|
            log_mix = torch.logaddexp(lr + math.log(lam), torch.full_like(lr, math.log1p(-lam)))
            mix = log_mix.exp()
            f = lam * r * lr - mix * log_mix
            fp = lam * (lr - log_mix)
            h = lam * lr - (lam + (1.0 - lam) * inv_r) * log_mix
        case "tv":
            f, fp, h = 0.5 * (r - 1.0).abs(), 0.5 * torch.sign(lr), 0.5 * (1.0 - inv_r).abs()
        case "alpha":
            a = alpha
            c = 1.0 / (a * (a - 1.0))
            f = c * ((a * lr).exp() - a * r - (1.0 - a))
            fp = (((a - 1.0) * lr).exp() - 1.0) / (a - 1.0)
            h = c * (((a - 1.0) * lr).exp() - a - (1.0 - a) * inv_r)
        case "chi2":
            f, fp, h = (r - 1.0) ** 2, 2.0 * (r - 1.0), r - 2.0 + inv_r
        case "hellinger":
            sr, isr = (0.5 * lr).exp(), (-0.5 * lr).exp()
            f, fp, h = (sr - 1.0) ** 2, 1.0 - isr, 1.0 - 2.0 * isr + inv_r
        case _:  # pragma: no cover - check_divergence already raised
            raise AssertionError(name)
    return FTerms(f, fp, h)


def f_divergence_full(
    student_logps: Tensor,
    teacher_logps: Tensor,
    name: Divergence,
    *,
    alpha: float = 0.5,
    js_weight: float = 0.5,
) -> Tensor:
    """Exact per-position ``D_f(pi || q) = sum_v q_v f(pi_v / q_v)`` from full-vocab log-probs.

    Args:
        student_logps, teacher_logps: ``(..., V)`` normalised log-probs (fp32 recommended).

    Returns:
        ``(...)`` divergences, differentiable w.r.t. both inputs.
    """
    terms = f_terms(student_logps - teacher_logps, name, alpha=alpha, js_weight=js_weight)
    return (teacher_logps.float().exp() * terms.f).sum(-1)
