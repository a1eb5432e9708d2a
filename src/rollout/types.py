"""The rollout contract every engine returns and every module reads.

A :class:`Rollout` is a batch of sequences ``[prompt (left-padded) | completion region]`` with two masks over
them, which say different things and must not be confused:

* ``attention_mask`` ``(N, P + T)``: which tokens are *context* (1) and which are padding (0). A tool's
  response inside a multi-turn completion is context: the policy and the teacher both see it.
* ``action_mask`` ``(N, T)`` over the completion region: 1 exactly on the tokens the *policy sampled* and
  that count (up to and including the first EOS); 0 on padding and on environment tokens (tool responses
  and the chat-template glue around them). Every loss, estimator, advantage, KL and divergence term weights
  tokens by it, so environment tokens get exactly zero weight and zero gradient.

Engines (:class:`RolloutEngine`): ``src.rollout.hf`` (HF generate, vLLM), ``src.rollout.diffusion_sampler``
(masked-diffusion decoding, :class:`src.rollout.diffusion_sampler.DiffusionRollout` adds its trajectory), and
``src.rollout.multiturn`` (the turn loop with tool calls, :class:`ToolRollout` adds per-row counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@dataclass
class Rollout:
    """Attributes: ``sequences`` ``(N, P + T)``; ``attention_mask`` ``(N, P + T)`` (context); ``action_mask``
    ``(N, T)`` (policy-sampled tokens that count); ``prompt_len`` ``P``; ``texts``: the decoded completions
    (for a multi-turn rollout, the whole interleaved completion: what the reward reads)."""

    sequences: Tensor
    attention_mask: Tensor
    action_mask: Tensor
    prompt_len: int
    texts: list[str]

    @property
    def completion_ids(self) -> Tensor:
        return self.sequences[:, self.prompt_len :]


@dataclass
class ToolRollout(Rollout):
    """A multi-turn rollout. ``texts`` holds what the *policy* wrote (its turns, joined; what rewards read, so a
    tool's output can never be taken for the policy's answer); ``full_texts`` the whole interleaved completion,
    tool responses included (sample tables). ``turns`` (policy turns per row), ``tool_calls`` (calls executed),
    ``tool_errors`` (calls that returned an error message), each ``(N,)``; ``transcripts``: per row, the turns as
    ``{"role": "assistant" | "tool", "content": str}``."""

    full_texts: list[str] | None = None
    turns: Tensor | None = None
    tool_calls: Tensor | None = None
    tool_errors: Tensor | None = None
    transcripts: list[list[dict[str, str]]] | None = None


@runtime_checkable
class RolloutEngine(Protocol):
    """What modules and :class:`src.modules.rl_common.RolloutEval` call: ``generate(model, prompt_ids,
    prompt_mask, *, keys=None, **options) -> Rollout``. ``keys`` (``src.utils.keyed_random.row_keys``, one per
    output row) make the draws independent of the batch and the world size; ``options`` are the engine's own
    (``n``, ``max_new_tokens``, ``temperature``, ``top_p``, ``do_sample`` for AR engines; ``knob`` for the
    diffusion sampler)."""

    def generate(self, model: Any, prompt_ids: Tensor, prompt_mask: Tensor, **options: Any) -> Rollout: ...


def tool_metrics(ro: ToolRollout) -> dict[str, Tensor]:
    """Per-rollout means of a tool rollout (logged as ``<stage>/rollout/...``): policy turns, tool calls, the
    share of calls that returned an error (0 when no call was made), and environment tokens."""
    calls = ro.tool_calls.float()
    env = (ro.attention_mask[:, ro.prompt_len :].bool() & ~ro.action_mask.bool()).sum(-1).float()
    return {
        "rollout/turns": ro.turns.float().mean(),
        "rollout/tool_calls": calls.mean(),
        "rollout/tool_error_rate": ro.tool_errors.float().sum() / calls.sum().clamp_min(1.0),
        "rollout/env_tokens": env.mean(),
    }
