"""Masked-diffusion sampler: NFE accounting at the threshold extremes, modes, trajectories."""

import pytest
import torch

from src.losses.diffusion import importance_ratio, staged_token_logps, trajectory_assignment
from src.models.tiny import tiny_masked_lm
from src.modules.diffpo.controller import KnobController
from src.rollout.diffusion_sampler import MaskedDiffusionSampler, masked_lm_logits


@pytest.fixture
def setup(char_tok):
    model = tiny_masked_lm(char_tok, hidden_size=32, num_layers=1, num_heads=2)
    ids = torch.tensor([[char_tok.pad_token_id, 1, 20, 21], [1, 22, 23, 24]])
    return model, ids, (ids != char_tok.pad_token_id).long()


def test_threshold_above_every_confidence_is_one_token_per_step(char_tok, setup):
    model, ids, mask = setup
    s = MaskedDiffusionSampler(char_tok, gen_length=8, block_length=4, mode="threshold")
    ro = s.generate(model, ids, mask, knob=1.0)
    assert ro.nfe.tolist() == [8, 8]  # NFE == generated length
    assert sorted(ro.decode_step[0].tolist()) == list(range(8))
    assert (ro.completion_ids != char_tok.mask_token_id).all()


def test_threshold_zero_decodes_a_block_per_step(char_tok, setup):
    model, ids, mask = setup
    s = MaskedDiffusionSampler(char_tok, gen_length=8, block_length=4, mode="threshold")
    ro = s.generate(model, ids, mask, knob=0.0)
    assert ro.nfe.tolist() == [2, 2]
    assert ro.decode_step[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_per_row_thresholds_and_low_confidence(char_tok, setup):
    model, ids, mask = setup
    s = MaskedDiffusionSampler(char_tok, gen_length=8, block_length=8, mode="threshold")
    ro = s.generate(model, ids, mask, knob=torch.tensor([0.0, 1.0]))
    assert ro.nfe.tolist() == [1, 8]
    lc = MaskedDiffusionSampler(char_tok, gen_length=8, block_length=4, mode="low_confidence", steps_per_block=2)
    ro = lc.generate(model, ids, mask)
    assert ro.nfe.tolist() == [4, 4]
    assert torch.bincount(ro.decode_step[0], minlength=4).tolist() == [2, 2, 2, 2]


def test_behaviour_logps_match_a_rescoring_of_the_trajectory(char_tok, setup):
    """Rebuild each step's state from decode_step; the model's log-prob of every token at its
    step equals the recorded behaviour log-prob (so the exact staged likelihood has IS ratio 1).
    The rows have different NFEs: stage = the row's own decoding step, no rescaling."""
    model, ids, mask = setup
    s = MaskedDiffusionSampler(char_tok, gen_length=6, block_length=6, mode="threshold")
    ro = s.generate(model, ids, mask, knob=torch.tensor([0.0, 1.0]))
    assert ro.nfe.tolist() == [1, 6]
    P, comp = ro.prompt_len, ro.completion_ids
    steps = int(ro.nfe.max())
    stage_lp = []
    for k in range(steps):
        state = torch.where(ro.decode_step < k, comp, torch.full_like(comp, char_tok.mask_token_id))
        x = torch.cat([ids, state], 1)
        logits = masked_lm_logits(model, x, ro.attention_mask)[:, P:].float()
        logits[..., char_tok.mask_token_id] = float("-inf")
        stage_lp.append(torch.log_softmax(logits, -1).gather(-1, comp[..., None]).squeeze(-1))
    got = staged_token_logps(torch.stack(stage_lp), trajectory_assignment(ro.decode_step, torch.ones_like(comp)))
    torch.testing.assert_close(got, ro.behaviour_logps, atol=1e-5, rtol=1e-5)
    r = importance_ratio(got, ro.behaviour_logps, torch.ones_like(comp)).loss
    torch.testing.assert_close(r, torch.ones_like(r), atol=1e-4, rtol=1e-4)


def test_sampling_with_temperature_is_seeded(char_tok, setup):
    model, ids, mask = setup
    s = MaskedDiffusionSampler(char_tok, gen_length=8, block_length=4, mode="threshold", temperature=1.0)
    a = s.generate(model, ids, mask, knob=0.5, generator=torch.Generator().manual_seed(0))
    b = s.generate(model, ids, mask, knob=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.sequences, b.sequences)


def test_bad_sampler_config(char_tok):
    with pytest.raises(ValueError, match="valid: threshold, low_confidence"):
        MaskedDiffusionSampler(char_tok, gen_length=4, block_length=4, mode="greedy")
    with pytest.raises(ValueError, match="multiple of block_length"):
        MaskedDiffusionSampler(char_tok, gen_length=10, block_length=4, mode="threshold")


CTRL = {"mlp_hidden": 64, "init_knob": None}


def test_controller_gets_gradients():
    c = KnobController(hidden_size=8, **CTRL, grid=[0.5, 0.9, 1.0], features="last")
    h = torch.randn(3, 5, 8)
    thr, idx, logp = c.sample(h, torch.ones(3, 5))
    assert all(any(abs(t - g) < 1e-6 for g in (0.5, 0.9, 1.0)) for t in thr.tolist())
    (-(logp * torch.tensor([1.0, -1.0, 0.5])).sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in c.parameters())
    with pytest.raises(ValueError):
        KnobController(hidden_size=8, **CTRL, grid=[-0.5], features="last")
    with pytest.raises(ValueError, match="valid: embed_last"):
        KnobController(hidden_size=8, **CTRL, grid=[0.5], features="first")
    hs = (torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.randn(2, 3, 8))
    assert KnobController(hidden_size=8, **CTRL, grid=[0.5], features="embed_last").featurize(hs).shape == (2, 3, 16)
    torch.testing.assert_close(
        KnobController(hidden_size=8, **CTRL, grid=[0.5], features="layer_mean").featurize(hs), torch.stack(hs).mean(0)
    )


@pytest.mark.parametrize("mode", ["threshold", "entropy_bounded", "low_confidence"])
def test_block_only_lm_head_gives_the_same_rollout(char_tok, setup, mode):
    """The LM head applied to the current block only (the default) decodes exactly what the
    full-sequence head decodes: same tokens, steps, behaviour log-probs and NFE."""
    model, ids, mask = setup
    assert torch.equal(
        masked_lm_logits(model, torch.cat([ids, ids], 1), torch.cat([mask, mask], 1), positions=slice(2, 6)),
        masked_lm_logits(model, torch.cat([ids, ids], 1), torch.cat([mask, mask], 1))[:, 2:6],
    )
    knob = {"threshold": 0.3, "entropy_bounded": 0.5, "low_confidence": None}[mode]
    out = []
    for only in (True, False):
        s = MaskedDiffusionSampler(
            char_tok,
            gen_length=8,
            block_length=4,
            mode=mode,
            temperature=0.7,
            steps_per_block=2,
            block_logits_only=only,
        )
        out.append(s.generate(model, ids, mask, knob=knob, generator=torch.Generator().manual_seed(3)))
    a, b = out
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.decode_step, b.decode_step)
    assert torch.equal(a.nfe, b.nfe)
    torch.testing.assert_close(a.behaviour_logps, b.behaviour_logps, atol=1e-6, rtol=1e-6)
    assert "forward" not in vars(model.get_output_embeddings())  # the head is restored
