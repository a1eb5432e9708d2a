"""Dream through the model-family seam, on our own tiny remote-code fixture with Dream's interface and behaviours
(``tests/fixtures/tiny_dream``): it loads as a hub download does (adapted in memory to transformers 5), saves,
its logits are aligned by one (shift prediction) in every path that scores or decodes, and our sampler's
``mode=dream`` equals the fixture's ``diffusion_generate`` (Dream's, re-derived from the facts) token for token."""

import sys

import pytest
import torch
from transformers import AutoModel

from src.models.families import family_of, get_family
from src.models.hf import load_masked_lm
from src.models.tokenizer import load_tokenizer
from src.rollout.diffusion_sampler import DREAM_ALGS, MaskedDiffusionSampler
from src.utils.keyed_random import row_keys
from tests.helpers.remote_code import prompt_batch, tiny_dream_folder

PROMPTS = ["1+2=", "12+30=", "7=", "100+200+3=", "4*5="]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_dream_folder(tmp_path_factory.mktemp("tiny_dream") / "dream_model")


@pytest.fixture(scope="module")
def tok(folder):
    return load_tokenizer(str(folder), trust_remote_code=True)


@pytest.fixture(scope="module")
def model(folder, tok):
    return load_masked_lm(tok, name_or_path=str(folder), trust_remote_code=True).eval()


def _batch(tok, prompts=PROMPTS):
    return prompt_batch(tok, prompts)


# ---- loading ----------------------------------------------------------------------------------------------------
def test_the_fixture_fails_as_dreams_published_code_does(tmp_path):
    """Without our compat step: building fails on the rotary table, generating on validate's signature."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    folder = tiny_dream_folder(tmp_path / "raw_dream")
    cls = get_class_from_dynamic_module("modeling_dream.DreamModel", str(folder))
    module = sys.modules[cls.__module__]
    if module.DreamGenerationConfig.__dict__.get("_post_train_adapted"):
        pytest.skip("the classes were adapted earlier in this process (the adaptation is in memory, per class)")
    with pytest.raises(KeyError, match="default"):
        AutoModel.from_pretrained(folder, trust_remote_code=True)
    with pytest.raises(TypeError, match="user_set_attributes"):
        module.DreamGenerationConfig(steps=4).update(steps=3)


def test_loads_as_a_hub_download_with_its_weights(folder, model, tok):
    from safetensors.torch import load_file

    assert type(model).__name__ == "DreamModel" and type(model).__module__.startswith("transformers_modules")
    saved = load_file(folder / "model.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    fam = family_of(model)
    assert fam.name == "dream" and fam.shift == 1 and fam.mask_token_id(model, tok) == 3
    assert not fam.ignores_attention_mask(model)  # honoured through the 4-D mask the family builds


def test_saves_and_reloads(model, tok, tmp_path):
    model.save_pretrained(tmp_path / "saved")
    tok.save_pretrained(tmp_path / "saved")
    again = load_masked_lm(tok, name_or_path=str(tmp_path / "saved"), trust_remote_code=True).eval()
    assert again.config.model_family == "dream"
    ids = torch.tensor([[10, 11, 12, 3, 3]])
    torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


def test_family_is_detected_and_unknown_types_are_a_clear_error():
    from types import SimpleNamespace

    from src.models.families import detect_family

    assert detect_family(SimpleNamespace(model_type="Dream")).name == "dream"
    assert detect_family(SimpleNamespace(model_type="llada")).name == "llada"
    assert detect_family(SimpleNamespace(model_type="modernbert")).name == "llada"
    assert detect_family(SimpleNamespace(model_type="llama")).name == "causal"
    with pytest.raises(ValueError, match="set model.family"):
        detect_family(SimpleNamespace(model_type="mystery"))
    with pytest.raises(ValueError, match="valid: causal, llada, dream"):
        get_family("bert")


# ---- the shift, in every path -------------------------------------------------------------------------------------
@torch.no_grad()
def _shifted_logp(model, state, p, token):
    """Hand alignment: the log-prob of ``token`` at position ``p`` of ``state`` (one unpadded row) is read from the
    raw logits at ``p - 1`` (Dream's "shift prediction"), the mask token excluded as every path excludes it."""
    raw = model(input_ids=state).logits.float()[0, p - 1]
    raw[3] = float("-inf")
    return torch.log_softmax(raw, -1)[token]


def test_logits_for_is_the_column_before(model):
    x = torch.tensor([[10, 11, 12, 3, 3, 3]])
    raw = model(input_ids=x).logits
    got = family_of(model).logits_for(model, x, torch.ones_like(x), slice(3, 6)).logits
    torch.testing.assert_close(got, raw[:, 2:5], rtol=0, atol=0)
    whole = family_of(model).logits_for(model, x, torch.ones_like(x)).logits
    torch.testing.assert_close(whole, torch.cat([raw[:, :1], raw[:, :-1]], 1), rtol=0, atol=0)


def test_sampler_and_surrogate_logps_are_the_shifted_ones(model, tok):
    """The behaviour log-prob of each decoded token, and its one-stage surrogate log-prob (all completion
    masked), equal the hand-shifted values; off by one they would not (a random model's columns differ)."""
    from src.losses.diffusion import surrogate_assignment
    from src.modules.diffpo.surrogate import staged_logps

    _, b = _batch(tok, ["12+30="])
    s = MaskedDiffusionSampler(tok, gen_length=6, block_length=6, mode="dream", alg="maskgit_plus", steps=6)
    ro = s.generate(model, b["prompt_ids"], b["prompt_mask"])
    P, seq = ro.prompt_len, ro.sequences
    # the state each token was decoded in: tokens decoded at earlier steps revealed, the rest masked
    for j in range(6):
        state = seq.clone()
        state[0, P:][ro.decode_step[0] >= ro.decode_step[0, j]] = 3
        want = _shifted_logp(model, state, P + j, seq[0, P + j])
        torch.testing.assert_close(ro.behaviour_logps[0, j], want, rtol=0, atol=1e-5)
    assign = surrogate_assignment(ro.decode_step, ro.nfe, num_stages=1, cut="midpoint")
    got = staged_logps(model, ro, assign, mask_id=3)
    all_masked = torch.cat([seq[:, :P], torch.full((1, 6), 3)], 1)  # the one stage: the whole completion masked
    for j in range(6):
        torch.testing.assert_close(
            got[0, j], _shifted_logp(model, all_masked, P + j, seq[0, P + j]), rtol=0, atol=1e-5
        )


def test_mdm_sft_loss_reads_the_shifted_logits(model, tok):
    """Masked-diffusion SFT's cross-entropy on a Dream model equals the hand-shifted one."""
    from src.rollout.diffusion_sampler import masked_lm_logits

    x = torch.tensor([[10, 11, 12, 3, 14, 3]])
    got = torch.log_softmax(masked_lm_logits(model, x, torch.ones_like(x), positions=slice(3, 6)).float(), -1)
    raw = torch.log_softmax(model(input_ids=x).logits.float(), -1)
    torch.testing.assert_close(got, raw[:, 2:5], rtol=0, atol=0)


def test_next_token_scoring_refuses_an_in_place_model_and_accepts_dream(model, tmp_path, char_tok):
    from src.models.scoring import next_token_logps
    from src.models.tiny import tiny_masked_lm

    x = torch.tensor([[10, 11, 12, 13]])
    score = torch.ones(1, 3, dtype=torch.bool)
    lp, _, _ = next_token_logps(model, x, None, score, fused=True)
    raw = torch.log_softmax(model(input_ids=x).logits.float(), -1)
    torch.testing.assert_close(lp[0], raw[0, :-1].gather(-1, x[0, 1:, None]).squeeze(-1), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="in place"):
        next_token_logps(tiny_masked_lm(char_tok), x, None, score)


# ---- Dream's decoding ---------------------------------------------------------------------------------------------
def _steps_with_masks(history, prompt_len, mask_id=3):
    """Forwards that had a masked completion token to decode (the state before each step)."""
    before = [None, *history[:-1]]
    return sum(1 for h in before if h is None or bool((h[:, prompt_len:] == mask_id).any()))


@pytest.mark.parametrize("alg", DREAM_ALGS)
@pytest.mark.parametrize("padded", [False, True], ids=["same-length", "left-padded"])
def test_greedy_decoding_equals_diffusion_generate(model, tok, alg, padded):
    prompts = PROMPTS if padded else ["11+22=", "30+40=", "5*6=99"]
    _, b = _batch(tok, prompts)
    assert bool((b["prompt_mask"] == 0).any()) == padded
    L, steps = 8, 5
    s = MaskedDiffusionSampler(tok, gen_length=L, block_length=L, mode="dream", alg=alg, steps=steps)
    torch.manual_seed(0)  # origin's reveal draws come from the global generator in both
    ours = s.generate(model, b["prompt_ids"], b["prompt_mask"])
    torch.manual_seed(0)
    ref = model.diffusion_generate(
        b["prompt_ids"],
        attention_mask=b["prompt_mask"] if padded else None,
        max_new_tokens=L,
        steps=steps,
        alg=alg,
        temperature=0.0,
        return_dict_in_generate=True,
        output_history=True,
    )
    assert torch.equal(ours.sequences, ref.sequences), (alg, ours.sequences, ref.sequences)
    P = b["prompt_ids"].shape[1]
    for r in range(len(prompts)):
        want = _steps_with_masks([h[r : r + 1] for h in ref.history], P)
        assert int(ours.nfe[r]) == want, (alg, r)
    if alg != "origin":
        assert bool((ours.nfe == steps).all())  # a schedule with a confidence spends every step


def test_sampled_decoding_with_top_p_equals_diffusion_generate(model, tok):
    """One row (Dream counts the masks to reveal as the batch average, which equals the row's own count only while
    rows agree; a proposal of the mask token, likely at temperature 0.7 on a random model, makes them differ)."""
    _, b = _batch(tok, ["11+22="])
    s = MaskedDiffusionSampler(
        tok, gen_length=6, block_length=6, mode="dream", alg="entropy", steps=4, temperature=0.7, top_p=0.9
    )
    torch.manual_seed(3)
    ours = s.generate(model, b["prompt_ids"], b["prompt_mask"])
    torch.manual_seed(3)
    ref = model.diffusion_generate(
        b["prompt_ids"], max_new_tokens=6, steps=4, alg="entropy", temperature=0.7, top_p=0.9
    )
    assert torch.equal(ours.sequences, ref)


@pytest.mark.parametrize("alg", DREAM_ALGS)
def test_batched_equals_each_prompt_alone(model, tok, alg):
    rows, b = _batch(tok)
    s = MaskedDiffusionSampler(tok, gen_length=8, block_length=8, mode="dream", alg=alg, steps=6, temperature=0.8)
    keys = row_keys(0, 0, b["index"], 1)
    ro = s.generate(model, b["prompt_ids"], b["prompt_mask"], knob=0.6, keys=keys)
    for i, r in enumerate(rows):
        ids = torch.tensor([r["prompt_ids"]])
        alone = s.generate(model, ids, torch.ones_like(ids), knob=0.6, keys=keys[i : i + 1])
        assert torch.equal(alone.completion_ids[0], ro.completion_ids[i]), (alg, i)
        assert int(alone.nfe[0]) == int(ro.nfe[i])
        torch.testing.assert_close(alone.behaviour_logps[0], ro.behaviour_logps[i], atol=1e-5, rtol=0)


@pytest.mark.parametrize("alg", DREAM_ALGS)
def test_the_threshold_knob_trades_steps_for_parallel_tokens(model, tok, alg):
    """Threshold 0 reveals every masked position at the first step (NFE 1); threshold 1 adds nothing
    (Dream's schedule alone); in between NFE lies between, per row."""
    _, b = _batch(tok)
    s = MaskedDiffusionSampler(tok, gen_length=8, block_length=8, mode="dream", alg=alg, steps=8)
    keys = row_keys(0, 0, b["index"], 1)  # origin's reveal draws per row, whatever the other rows do

    def run(knob):
        return s.generate(model, b["prompt_ids"], b["prompt_mask"], knob=knob, keys=keys)

    plain, one, zero = run(None), run(1.0), run(0.0)
    assert torch.equal(one.sequences, plain.sequences) and torch.equal(one.nfe, plain.nfe)
    assert bool((zero.nfe == 1).all())
    mid = run(torch.tensor([0.0, 0.3, 0.5, 0.9, 1.0]))
    assert int(mid.nfe[0]) == 1 and int(mid.nfe[-1]) == int(plain.nfe[-1]) and bool((mid.nfe <= plain.nfe).all())


def test_dream_mode_config_errors(tok):
    with pytest.raises(ValueError, match="valid: origin, maskgit_plus, topk_margin, entropy"):
        MaskedDiffusionSampler(tok, gen_length=4, block_length=4, mode="dream", alg="greedy")
    with pytest.raises(ValueError, match="block_length = gen_length"):
        MaskedDiffusionSampler(tok, gen_length=8, block_length=4, mode="dream")
    with pytest.raises(ValueError, match="belong to mode=dream"):
        MaskedDiffusionSampler(tok, gen_length=4, block_length=4, mode="threshold", top_p=0.9)
