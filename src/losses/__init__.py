"""Pure loss functions: tensors in, ``LossOutput(loss, metrics)`` out. No modules, configs or dist."""

from src.losses.diffusion import (
    CUT_MODES,
    SURROGATES,
    cut_assignment,
    draw_cut,
    importance_ratio,
    stage_assignment,
    staged_token_logps,
    surrogate_assignment,
    surrogate_sequence_logp,
    trajectory_assignment,
)
from src.losses.distillation import ESTIMATORS, LEVELS, distillation_advantages, opd_full_vocab_loss, opd_loss
from src.losses.divergences import DIVERGENCES, check_divergence, f_divergence_full, f_terms
from src.losses.logprobs import entropy_from_logits, selective_log_softmax, sequence_logprob
from src.losses.policy_gradient import KL_KINDS, clipped_surrogate, group_advantages, kl_penalty
from src.losses.preference import PREFERENCE_LOSSES, dispersion_from_entropy, mallows_phi_log_link, preference_loss
from src.losses.reduce import REDUCE_MODES, aggregate, count_items, masked_mean, masked_sum
from src.losses.types import LossOutput

__all__ = [
    "CUT_MODES",
    "DIVERGENCES",
    "ESTIMATORS",
    "KL_KINDS",
    "LEVELS",
    "PREFERENCE_LOSSES",
    "REDUCE_MODES",
    "SURROGATES",
    "LossOutput",
    "aggregate",
    "check_divergence",
    "clipped_surrogate",
    "count_items",
    "cut_assignment",
    "draw_cut",
    "dispersion_from_entropy",
    "distillation_advantages",
    "entropy_from_logits",
    "f_divergence_full",
    "f_terms",
    "group_advantages",
    "importance_ratio",
    "kl_penalty",
    "mallows_phi_log_link",
    "masked_mean",
    "masked_sum",
    "opd_full_vocab_loss",
    "opd_loss",
    "preference_loss",
    "selective_log_softmax",
    "sequence_logprob",
    "stage_assignment",
    "staged_token_logps",
    "surrogate_assignment",
    "surrogate_sequence_logp",
    "trajectory_assignment",
]
