"""On-policy distillation: the stop-gradient OPD baseline and the corrected OPD+ estimator.

Paper: "OPD+: Rethinking the Advantage Design for On-Policy Distillation" (Zhao, Chen, Lin, Winata,
Yao, Tang; arXiv 2606.01039). ``docs/opd_plus.md`` has the derivation, the paper's Table 1 in our
notation and what is second-hand; ``tests/losses/test_distillation.py`` checks every estimator by
exact enumeration (V=3, T=2..3, every f in the family).

Notation: the student ``pi`` samples ``y ~ pi(.|x)``; per token ``r_t = pi(y_t|.)/q(y_t|.)``
(the paper writes ``u = q/pi = 1/r`` and its generator in ``u``; ``src.losses.divergences`` holds
the dual generators, so the names mean the same divergence). Per position
``D_f(pi_t||q_t) = E_{pi_t} h(r)`` with ``h = f/r`` and ``h + r h' = f'``.

The paper's estimator (our default: ``discount=0, center=False``), per token, immediate:

    OPD+:  A_t = f'(r_t)   (= -w_f(u_t), the paper's w_f(u) = -f(u) + u f'(u) in u-space)
    OPD:   A_t = h(r_t)    (the stop-gradient reward; = -(-f(u_t)) in u-space)

and we minimise ``sum_t A_t log pi_t``. OPD+ is the exact gradient of the frozen-prefix objective
``sum_t E_{y<t ~ sg(pi)} D_f(pi_t || q_t)``; OPD differs from it by ``E[r h'(r) grad log pi]``, which
vanishes only when ``r h'(r)`` is constant: reverse KL (tested for both).

Our extension (``discount=1``): ``A_t += sum_{s>t} h(r_s)`` makes OPD+ the exact gradient of the
full objective ``J = E_{y~pi} sum_t h(r_t)``, including a token's effect on which later positions
are visited (tested). ``0 < discount < 1`` interpolates geometrically. ``center=True`` subtracts
the constant ``f'(1)`` (unbiased; every advantage is 0 when student == teacher; for reverse KL it
makes OPD and OPD+ identical sample by sample). ``max_abs_log_ratio`` clips ``log r`` and
``max_abs_advantage`` clips ``A``: both are biased (the enumeration test shows it) and off by default.
The sequence level (``level="sequence"``, beyond the paper) uses ``rho = prod_t r_t`` and
``A = f'(rho)`` (OPD+) vs ``A = h(rho)`` (OPD).
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


def discounted_future(h: Tensor, discount: float) -> Tensor:
    """``out[..., t] = sum_{s > t} discount^(s - t) h[..., s]`` (0 for ``discount=0``)."""
    if discount == 0.0:
        return torch.zeros_like(h)
    if discount == 1.0:
        return reverse_cumsum(h) - h
    out = torch.zeros_like(h)
    acc = torch.zeros_like(h[..., 0])
    for t in range(h.shape[-1] - 2, -1, -1):  # F_t = discount * (h_{t+1} + F_{t+1})
        acc = discount * (h[..., t + 1] + acc)
        out[..., t] = acc
    return out


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
    discount: float = 0.0,
    center: bool = False,
    max_abs_log_ratio: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-token advantages (``(B, T)``, zero off-mask) and the per-sequence divergence estimate.

    Token level (loss sign: we minimise ``A_t log pi_t``)::

        OPD+:  A_t = f'(r_t) - [center] f'(1) + F_t        OPD:  A_t = h(r_t) + F_t
        F_t  = sum_{s>t} discount^(s-t) h(r_s)               (the discounted divergence-to-go)

    ``discount=0, center=False`` is the paper's estimator (its Table 1: ``f'(r) = -w_f(u)``,
    ``u = 1/r``); it is exact for the frozen-prefix objective ``sum_t E_{y<t ~ sg(pi)} D_f(pi_t||q_t)``.
    ``discount=1`` is exact for the full objective ``J = E_pi sum_t h(r_t)`` (the pathwise effect
    of a token on later positions included). ``center`` subtracts the constant ``f'(1)`` (unbiased;
    zero advantage at student == teacher). ``max_abs_log_ratio`` clips ``log r`` first (biased).
    The sequence level ignores ``discount``.

    The divergence estimate is ``sum_t h(r_t)`` (token) or ``h(rho)`` (sequence): an unbiased
    Monte-Carlo estimate of the objective for each sampled sequence (of the unclipped ratios).
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
    if not 0.0 <= discount <= 1.0:
        raise ValueError(f"discount must lie in [0, 1], got {discount}")
    if max_abs_log_ratio is not None and not max_abs_log_ratio > 0:
        raise ValueError(f"max_abs_log_ratio must be > 0 or None, got {max_abs_log_ratio}")
    m = mask.to(torch.bool)
    raw = torch.where(m, student_logps.detach().float() - teacher_logps.detach().float(), 0.0)
    log_ratio = raw if max_abs_log_ratio is None else raw.clamp(-max_abs_log_ratio, max_abs_log_ratio)
    # center: subtracting f'(1) from the f' term keeps the estimator unbiased (E[c grad log pi_t |
    # y_<t] = 0) and makes every advantage 0 when student == teacher; for reverse KL it removes the
    # "+1", so OPD and OPD+ then coincide sample by sample. Off for the paper's estimator.
    f_prime_1 = f_terms(torch.zeros(()), divergence, alpha=alpha, js_weight=js_weight).f_prime if center else 0.0
    if level == "token":
        t = f_terms(log_ratio, divergence, alpha=alpha, js_weight=js_weight)
        h = torch.where(m, t.h, 0.0)
        future = discounted_future(h, discount)  # sum_{s > t} discount^(s-t) h(r_s)
        adv = (h if estimator == "opd" else t.f_prime - f_prime_1) + future
        if max_abs_log_ratio is not None:  # the estimate is of the unclipped ratios
            h = torch.where(m, f_terms(raw, divergence, alpha=alpha, js_weight=js_weight).h, 0.0)
        est = h.sum(-1)
    else:
        t = f_terms(log_ratio.sum(-1), divergence, alpha=alpha, js_weight=js_weight)
        seq_adv = t.h if estimator == "opd" else t.f_prime - f_prime_1
        adv = seq_adv[:, None].expand_as(log_ratio)
        if max_abs_log_ratio is not None:  # the estimate is of the unclipped ratios
            t = f_terms(raw.sum(-1), divergence, alpha=alpha, js_weight=js_weight)
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
    discount: float = 0.0,
    center: bool = False,
    max_abs_log_ratio: float | None = None,
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
        mask: ``(B, T)`` the rollout's action mask: 1 on tokens the policy sampled (0 on padding and tool output).
        estimator: ``opd`` (stop-gradient baseline) or ``opd_plus`` (unbiased).
        divergence: any name in :data:`src.losses.divergences.DIVERGENCES`.
        level: ``token`` (sum of per-position divergences) or ``sequence``.
        discount, center, max_abs_log_ratio: see :func:`distillation_advantages`; the defaults
            (0, False, None) are the paper's estimator.
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
        student_logps,
        teacher_logps,
        mask,
        estimator=estimator,
        divergence=divergence,
        level=level,
        alpha=alpha,
        js_weight=js_weight,
        discount=discount,
        center=center,
        max_abs_log_ratio=max_abs_log_ratio,
    )
    if extra_advantages is not None:
        adv = adv + extra_advantages.float() * mask
    if max_abs_advantage is not None:
        adv = adv.clamp(-max_abs_advantage, max_abs_advantage)
    # Score-function surrogate (Eq. grad J above): gradient = A_t * grad log pi_t.
    per_token = adv.detach() * student_logps.float()
    loss = aggregate(per_token, mask, mode=reduce, num_items=num_items, loss_scale=loss_scale)
    m = mask.to(torch.bool)
    seq_valid = m.any(-1)
    log_ratio = student_logps.detach().float() - teacher_logps.detach().float()
    metrics = {
        "divergence": masked_mean(est.detach(), seq_valid),
        "log_ratio": masked_mean(log_ratio, m),
        "advantage_mean": masked_mean(adv.detach(), m),
        "advantage_std": masked_mean((adv.detach() - masked_mean(adv.detach(), m)) ** 2, m).sqrt(),
        "advantage_abs_max": torch.where(m, adv.detach().abs(), 0.0).amax() if m.any() else adv.new_zeros(()),
    }
    if max_abs_log_ratio is not None:
        metrics["log_ratio_clip_frac"] = masked_mean((log_ratio.abs() > max_abs_log_ratio).float(), m)
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
