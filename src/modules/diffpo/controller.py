"""DiFFPO's controller: a per-prompt distribution over the sampler's decoding knob.

The knob is a confidence threshold (``sampler.mode=threshold``, values in [0, 1]) or the EB sampler's
entropy budget gamma (``sampler.mode=entropy_bounded``, values >= 0); the ``grid`` holds its candidate
values either way. The head reads the policy's last hidden states over the prompt positions
of the sampler's *first decoding forward* (mean-pooled, detached: it is a separate head with its own
parameter group and pushes no gradient into the LM), and outputs a categorical distribution over the
grid. ``features`` picks the layers: ``embed_last`` (default) concatenates the input embeddings and
the last layer, ``last`` is the last layer only, ``layer_mean`` the mean over layers. The last layer
alone can be a poor feature: a masked LM's loss never trains the prompt positions' outputs, and on
our tiny models their final states barely separate prompts of different kinds (measured on the
training prompts of ``data=parallel_mix``: the any/distinct rule has a separation d' of 0.4 there,
5.1 in the embeddings). Trained by PPO-clipped policy gradient on a reward that trades accuracy against NFEs
(``src.modules.diffpo``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from src.utils.keyed_random import keyed_categorical

FEATURES = ("embed_last", "last", "layer_mean")
CONTROLLER_COUNTER = 0x7FFFFFFF  # keyed-draw stream of the controller (samplers count up from 0)


class KnobController(nn.Module):
    """Categorical policy over ``grid`` given a prompt's hidden states.

    Args:
        hidden_size: the policy's hidden size (given by the module at ``configure_model``).
        grid: candidate knob values (thresholds or gammas), each >= 0.
        mlp_hidden: width of the MLP head.
        init_knob: start peaked at the grid value nearest this one; ``None``: uniform.
        features: ``embed_last`` | ``last`` | ``layer_mean`` (see the module docstring).
    """

    def __init__(
        self,
        hidden_size: int,
        *,
        grid: list[float] | tuple[float, ...],
        mlp_hidden: int,
        init_knob: float | None,
        features: str,
    ) -> None:
        super().__init__()
        if features not in FEATURES:
            raise ValueError(f"controller features={features!r}; valid: {', '.join(FEATURES)}")
        self.features = features
        if not grid or any(not t >= 0.0 for t in grid):
            raise ValueError(f"controller grid must be a non-empty list of values >= 0, got {grid}")
        self.register_buffer("grid", torch.tensor(sorted(grid), dtype=torch.float32))
        in_dim = 2 * hidden_size if features == "embed_last" else hidden_size
        self.net = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, mlp_hidden), nn.Tanh(), nn.Linear(mlp_hidden, len(grid))
        )
        nn.init.normal_(self.net[-1].weight, std=0.01)  # near-uniform start, but every layer gets gradient
        with torch.no_grad():  # start uniform, or peaked at init_knob
            self.net[-1].bias.zero_()
            if init_knob is not None:
                self.net[-1].bias[(self.grid - init_knob).abs().argmin()] = 2.0

    def featurize(self, hidden_states: tuple[Tensor, ...]) -> Tensor:
        """``(B, P, F)`` features from every layer's hidden states at the prompt positions."""
        if self.features == "last":
            return hidden_states[-1]
        if self.features == "layer_mean":
            return torch.stack([h.float() for h in hidden_states]).mean(0)
        return torch.cat([hidden_states[0].float(), hidden_states[-1].float()], -1)

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        """Logits ``(B, K)`` from hidden states ``(B, T, H)`` pooled over ``mask`` ``(B, T)``."""
        m = mask.to(hidden.dtype)[..., None]
        pooled = (hidden.detach().float() * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.net(pooled)

    def sample(
        self, hidden: Tensor, mask: Tensor, *, greedy: bool = False, keys: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(knobs (B,), indices (B,), log_probs (B,))``; log-probs carry gradients.
        ``keys``: per-row keyed draws (``src.utils.keyed_random``) instead of the global RNG."""
        logits = self(hidden, mask)
        dist = torch.distributions.Categorical(logits=logits)
        if greedy:
            idx = logits.argmax(-1)
        elif keys is not None:
            idx = keyed_categorical(logits.detach(), keys, CONTROLLER_COUNTER)
        else:
            idx = dist.sample()
        return self.grid[idx], idx, dist.log_prob(idx)
