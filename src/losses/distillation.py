"""On-policy distillation: the stop-gradient OPD baseline and the unbiased OPD+ estimator.

Paper: "Rethinking the Advantage Design for On-Policy Distillation" (OPD+, arXiv 2606.01039); the
derivation we implement is in ``docs/opd_plus.md`` and is *proven* by exact
enumeration in ``tests/losses/test_distillation.py`` (V=3, T=2..3, every f in the family).

Objective (token level, the default): the student ``pi`` samples ``y ~ pi(.|x)``; with per-token
ratios ``r_t = pi(y_t | x, y_<t) / q(y_t | x, y_<t)``

    J(theta) = E_{y ~ pi} [ sum_t D_f( pi(.|y_<t) || q(.|y_<t) ) ] = E_{y ~ pi} [ sum_t h(r_t) ].

Its exact gradient (score function + pathwise through ``r_t``; ``h + r h' = f'``) is

    grad J = E_pi[ sum_t A_t grad log pi(y_t | y_<t) ],   A_t = f'(r_t) - f'(1) + sum_{s>t} h(r_s).   (OPD+)

(``- f'(1)`` is a constant baseline: unbiased, zero advantage at student == teacher.)

Plain OPD puts a stop-gradient on ``pi`` inside the reward and uses the reward-to-go
``A_t = sum_{s>=t} h(r_s)``. The two differ by ``-r_t h'(r_t)``, whose expectation against
``grad log pi_t`` vanishes only when ``r h'(r)`` is constant: reverse KL. For every other f the
OPD gradient is biased (tested). The sequence level (``level="sequence"``) uses the sequence ratio
``rho = prod_t r_t`` and ``A = f'(rho)`` (OPD+) vs ``A = h(rho)`` (OPD).

What we changed / chose: the paper's token vs sequence formulation could not be checked against
the PDF; both are offered and both are exact for their objective. Advantages may be clipped
(``max_abs_advantage``) for stability, which trades bias for variance; off by default.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from src.losses.divergences import Divergence, f_divergence_full, f_terms
from src.losses.reduce import ReduceMode, aggregate, masked_mean, masked_sum
from src.losses.types import LossOutput

Estimator = Literal["opd", "opd_plus"]
ESTIMATORS: tuple[str, ...] = ("opd", "opd_plus")
Level = Literal["token", "sequence"]
LEVELS: tuple[str, ...] = ("token", "sequence")


def reverse_cumsum(x: Tensor) -> Tensor:
    """``out[..., t] = sum_{s >= t} x[..., s]`` along the last dimension."""
    return x.flip(-1).cumsum(-1).flip(-1)


def distillation_advantages(
    student_logps: Tensor,
    teacher_logps: Tensor,
    mask: Tensor,
    *,
    estimator: Estimator = "opd_plus",
    divergence: Divergence = "reverse_kl",
    level: Level = "token",
    alpha: float = 0.5,
    js_weight: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Per-token advantages (``(B, T)``, zero off-mask) and the per-sequence divergence estimate.

    The divergence estimate is ``sum_t h(r_t)`` (token) or ``h(rho)`` (sequence): an unbiased
    Monte-Carlo estimate of the objective for each sampled sequence.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; valid: {', '.join(LEVELS)}")
    if student_logps.shape != teacher_logps.shape or student_logps.shape != mask.shape:
        raise ValueError(
            "student_logps, teacher_logps and mask must share a shape; got "
            f"{tuple(student_logps.shape)}, {tuple(teacher_logps.shape)}, {tuple(mask.shape)}"
        )
    m = mask.to(torch.bool)
    log_ratio = torch.where(m, student_logps.detach().float() - teacher_logps.detach().float(), 0.0)
    # f'(1): subtracting this constant from the f' term keeps the estimator unbiased (E[c grad log
    # pi_t | y_<t] = 0) and makes every advantage 0 when student == teacher; for reverse KL it removes
    # the "+1" that otherwise only adds variance, so OPD and OPD+ then coincide sample by sample.
    f_prime_1 = f_terms(torch.zeros(()), divergence, alpha=alpha, js_weight=js_weight).f_prime
    if level == "token":
        t = f_terms(log_ratio, divergence, alpha=alpha, js_weight=js_weight)
        h = torch.where(m, t.h, 0.0)
        to_go = reverse_cumsum(h)  # sum_{s >= t} h(r_s)
        adv = to_go if estimator == "opd" else to_go - h + (t.f_prime - f_prime_1)
        est = h.sum(-1)
    else:
        seq_lr = log_ratio.sum(-1)
        t = f_terms(seq_lr, divergence, alpha=alpha, js_weight=js_weight)
        seq_adv = t.h if estimator == "opd" else t.f_prime - f_prime_1
        adv = seq_adv[:, None].expand_as(log_ratio)
        est = t.h
    return torch.where(m, adv, 0.0), est


def opd_loss(
    student_logps: Tensor,
    teacher_logps: Tensor,
    mask: Tensor,
    *,
    estimator: Estimator = "opd_plus",
    divergence: Divergence = "reverse_kl",
    level: Level = "token",
    alpha: float = 0.5,
    js_weight: float = 0.5,
    extra_advantages: Tensor | None = None,
    max_abs_advantage: float | None = None,
    reduce: ReduceMode = "seq_mean_token_sum",
    num_items: Tensor | float | None = None,
    loss_scale: float = 1.0,
) -> LossOutput:
    """Surrogate loss whose gradient is the (OPD or OPD+) estimate of ``grad J``.

    Args:
        student_logps: ``(B, T)`` log-probs of the sampled tokens under the student (with grad).
        teacher_logps: ``(B, T)`` teacher log-probs of the same tokens (no grad needed).
        mask: ``(B, T)`` 1 on completion tokens.
        estimator: ``opd`` (stop-gradient baseline) or ``opd_plus`` (unbiased).
        divergence: any name in :data:`src.losses.divergences.DIVERGENCES`.
        level: ``token`` (sum of per-position divergences) or ``sequence``.
        extra_advantages: ``(B, T)`` added to the distillation advantage, e.g. ``-coef * task
            reward`` broadcast over tokens (we *minimise*, so a reward enters with a minus sign).
        max_abs_advantage: clip advantages to ``[-c, c]`` (biased; for stability).
        reduce, num_items, loss_scale: see :func:`src.losses.reduce.aggregate`. The default
            ``seq_mean_token_sum`` makes the surrogate gradient equal ``grad J`` per sequence.

    Returns:
        ``LossOutput``; metrics ``divergence`` (MC estimate of J per sequence), ``log_ratio``,
        ``advantage_mean``, ``advantage_std``.
    """
    adv, est = distillation_advantages(
        student_logps, teacher_logps, mask,
        estimator=estimator, divergence=divergence, level=level, alpha=alpha, js_weight=js_weight,
    )  # fmt: skip
    if extra_advantages is not None:
        adv = adv + extra_advantages.float() * mask
    if max_abs_advantage is not None:
        adv = adv.clamp(-max_abs_advantage, max_abs_advantage)
    # Score-function surrogate (Eq. grad J above): gradient = A_t * grad log pi_t.
    per_token = adv.detach() * student_logps.float()
    loss = aggregate(per_token, mask, mode=reduce, num_items=num_items, loss_scale=loss_scale)
    m = mask.to(torch.bool)
    seq_valid = m.any(-1)
    log_ratio = (student_logps.detach().float() - teacher_logps.detach().float())
    metrics = {
        "divergence": masked_mean(est.detach(), seq_valid),
        "log_ratio": masked_mean(log_ratio, m),
        "advantage_mean": masked_mean(adv.detach(), m),
        "advantage_std": masked_mean((adv.detach() - masked_mean(adv.detach(), m)) ** 2, m).sqrt(),
    }
    return LossOutput(loss, metrics)


def opd_full_vocab_loss(
    student_logps_full: Tensor,
    teacher_logps_full: Tensor,
    tokens: Tensor,
    mask: Tensor,
    *,
    divergence: Divergence = "reverse_kl",
    alpha: float = 0.5,
    js_weight: float = 0.5,
    teacher_topk_ids: Tensor | None = None,
    reduce: ReduceMode = "seq_mean_token_sum",
    num_items: Tensor | float | None = None,
    loss_scale: float = 1.0,
) -> LossOutput:
    """Token-level objective with the per-position divergence computed exactly over the vocab.

    ``grad J = E[ sum_t grad D_t ] + E[ sum_t (sum_{s>t} D_s) grad log pi(y_t) ]``: the first term
    is pathwise (exact per position), the second is the score-function term for the effect of
    token ``t`` on later positions. Unbiased for every f (GKD-style full-vocab distillation).

    With ``teacher_topk_ids`` ``(B, T, K)`` the vocabulary is coarsened to the teacher's top-k
    tokens plus one tail bucket (TRL ``add_tail_bucket``); ``D_t`` is then the divergence between the
    bucketed distributions (a lower bound of the full one, by data processing).

    Args:
        student_logps_full: ``(B, T, V)`` normalised student log-probs (with grad).
        teacher_logps_full: ``(B, T, V)`` teacher log-probs, or ``(B, T, K)`` top-k log-probs when
            ``teacher_topk_ids`` is given.
        tokens: ``(B, T)`` the sampled tokens.
        mask: ``(B, T)``.
    """
    s_full = student_logps_full.float()
    q = teacher_logps_full.float()
    if teacher_topk_ids is not None:
        s_top = s_full.gather(-1, teacher_topk_ids)
        s = _with_tail(s_top)
        q = _with_tail(q)
    else:
        s = s_full
    d = f_divergence_full(s, q, divergence, alpha=alpha, js_weight=js_weight)  # (B, T)
    m = mask.to(torch.bool)
    d = torch.where(m, d, 0.0)
    later = reverse_cumsum(d.detach()) - d.detach()  # sum_{s > t} D_s
    tok_logp = s_full.gather(-1, tokens.long().clamp_min(0)[..., None]).squeeze(-1)
    per_token = d + later * tok_logp
    loss = aggregate(per_token, mask, mode=reduce, num_items=num_items, loss_scale=loss_scale)
    return LossOutput(loss, {"divergence": masked_mean(masked_sum(d.detach(), m, -1), m.any(-1))})


def _with_tail(top_logps: Tensor) -> Tensor:
    """Append ``log(1 - sum exp(top))`` as a tail bucket (clamped so it stays finite)."""
    top_mass = top_logps.exp().sum(-1, keepdim=True).clamp_max(1.0 - 1e-6)
    return torch.cat([top_logps, torch.log1p(-top_mass)], dim=-1)
