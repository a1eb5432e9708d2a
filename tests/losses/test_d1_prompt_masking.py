"""d1's estimator: the one-step surrogate with random prompt masking, checked against a hand-computed case,
and its draws (padding never masked, keyed draws independent of the batch, a fresh draw per inner update)."""

import math
from types import SimpleNamespace

import pytest
import torch

from src.losses.diffusion import prompt_mask_draw, surrogate_assignment
from src.modules.diffpo.surrogate import staged_logps, surrogate_draws
from src.rollout.diffusion_sampler import DiffusionRollout
from src.utils.keyed_random import row_keys

MASK = 2  # the third logit: set to -inf by the scorer, so two tokens remain


class MaskCounter(torch.nn.Module):
    """A bidirectional 'LM' whose logits everywhere are ``[0, f, 0]`` (the last is the mask token's) with ``f`` the fraction of mask tokens among
    the row's real tokens, so every log-prob is a number a hand can work out."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(1, 3, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[0.0], [1.0], [0.0]]))
        self.config = SimpleNamespace(model_family="llada")  # predicts in place

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, attention_mask):
        m = attention_mask.float()
        f = ((input_ids == MASK).float() * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True)
        hidden = f[:, :, None].expand(-1, input_ids.shape[1], 1)
        return SimpleNamespace(logits=self.head(hidden))


def _rollout(prompt, prompt_mask, completion):
    P, L = prompt.shape[1], completion.shape[1]
    seq = torch.cat([prompt, completion], 1)
    attn = torch.cat([prompt_mask, torch.ones_like(completion)], 1)
    n = completion.shape[0]
    return DiffusionRollout(
        seq,
        attn,
        prompt_len=P,
        decode_step=torch.arange(L).expand(n, L).clone(),
        behaviour_logps=torch.zeros(n, L),
        nfe=torch.full((n,), L),
        action_mask=torch.ones(n, L, dtype=torch.long),
        texts=[""] * n,
    )


def test_one_step_with_prompt_masking_matches_the_hand_computed_log_probs():
    """Row 0: 4 real prompt tokens, 2 of them masked, 3 completion tokens (all masked in the one-step state):
    f = (2 + 3) / 7, so log p(1) = f - log(1 + e^f) and log p(0) = -log(1 + e^f). Row 1 has one pad, 1 of its 3
    prompt tokens masked: f = (1 + 3) / 6 (the pad is not counted: it is not attended to)."""
    prompt = torch.tensor([[5, 6, 7, 8], [0, 5, 6, 7]])
    pmask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    completion = torch.tensor([[1, 0, 1], [0, 0, 1]])
    ro = _rollout(prompt, pmask, completion)
    masked = torch.tensor([[True, False, True, False], [False, False, True, False]])
    assign = surrogate_assignment(ro.decode_step, ro.nfe, num_stages=1, cut="midpoint")
    got = staged_logps(MaskCounter(), ro, assign, mask_id=MASK, prompt_masked=masked)

    def lp(f, y):
        return (f if y == 1 else 0.0) - math.log(1 + math.exp(f))

    want = [[lp(5 / 7, y) for y in (1, 0, 1)], [lp(4 / 6, y) for y in (0, 0, 1)]]
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-6, rtol=0)
    intact = staged_logps(MaskCounter(), ro, assign, mask_id=MASK)  # the prompt-intact one-step: f = 3/7, 3/6
    torch.testing.assert_close(
        intact, torch.tensor([[lp(3 / 7, y) for y in (1, 0, 1)], [lp(3 / 6, y) for y in (0, 0, 1)]])
    )


def test_prompt_mask_draws():
    pmask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]] * 500)
    keys = row_keys(7, 0, torch.arange(1000), 1)
    d = prompt_mask_draw(pmask, prob=0.3, keys=keys)
    assert not d[::2, :2].any()  # padding never
    assert abs(d[pmask.bool()].float().mean().item() - 0.3) < 0.02
    assert torch.equal(d, prompt_mask_draw(pmask, prob=0.3, keys=keys))  # keyed: reproducible
    assert not torch.equal(d, prompt_mask_draw(pmask, prob=0.3, keys=keys, counter=1))  # fresh per update
    # the same prompt with less padding: the same draw on its tokens
    narrow = prompt_mask_draw(pmask[:2, 2:], prob=0.3, keys=keys[:2])
    assert torch.equal(narrow[0], d[0, 2:])
    assert not prompt_mask_draw(pmask, prob=0.0).any()
    with pytest.raises(ValueError, match="prompt_mask_prob"):
        prompt_mask_draw(pmask, prob=1.0)


def test_d1_draws_a_fresh_prompt_mask_per_update_and_no_importance_weights():
    prompt = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]] * 2)
    ro = _rollout(prompt, torch.ones_like(prompt), torch.tensor([[1, 0], [0, 1]]))
    ro.behaviour_logps.fill_(-5.0)  # far from the surrogate: IS weights would not be 1
    kw = dict(num_stages=1, cut="midpoint", inner_updates=3, keys=row_keys(0, 0, torch.arange(2), 1), mask_id=MASK)
    draws = surrogate_draws(
        MaskCounter(), None, ro, max_rows=None, is_truncate=None, importance_weights=False, prompt_mask_prob=0.5, **kw
    )
    assert len(draws) == 3 and len({tuple(d.prompt_masked.flatten().tolist()) for d in draws}) == 3
    for d in draws:
        assert torch.equal(d.is_w.loss, torch.ones(2, 2))
        torch.testing.assert_close(
            d.old, staged_logps(MaskCounter(), ro, d.assign, mask_id=MASK, prompt_masked=d.prompt_masked)
        )
    one = surrogate_draws(MaskCounter(), None, ro, max_rows=None, is_truncate=None, **kw)
    assert len(one) == 1 and one[0].prompt_masked is None and not torch.equal(one[0].is_w.loss, torch.ones(2, 2))
