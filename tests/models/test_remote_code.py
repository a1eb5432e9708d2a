"""Remote-code dLLMs loaded as users get them, through ``trust_remote_code``, on our own tiny model with
LLaDA's behaviours (``tests/fixtures/tiny_llada``): no ``post_init``, the old ``tie_weights()``, a
``use_cache`` the config drops, an attention that ignores ``attention_mask``, its own checkpointing switch."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from src.models.families.padding import ignores_attention_mask, probe_attention_mask
from src.models.hf import load_masked_lm
from src.models.tokenizer import load_tokenizer
from src.modules.diffpo.surrogate import staged_logps
from src.rollout.diffusion_sampler import MaskedDiffusionSampler
from src.utils.keyed_random import row_keys
from tests.helpers.remote_code import prompt_batch, tiny_llada_folder

PROMPTS = ["1+2=", "12+30=", "7=", "100+200+3=", "4*5="]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_llada_folder(tmp_path_factory.mktemp("tiny_llada") / "model")


@pytest.fixture(scope="module")
def tok(folder):
    return load_tokenizer(str(folder), trust_remote_code=True)


@pytest.fixture(scope="module")
def model(folder, tok):
    return load_masked_lm(tok, name_or_path=str(folder), trust_remote_code=True)


def test_the_fixture_fails_to_load_as_llada_does(tmp_path):
    """Without our adaptation the fixture fails where LLaDA's published code fails under transformers 5."""
    folder = tiny_llada_folder(tmp_path / "raw")
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    cls = get_class_from_dynamic_module("modeling_tiny_llada.TinyLLaDAModelLM", str(folder))
    if cls.__dict__.get("_post_train_adapted"):
        pytest.skip("the class was adapted earlier in this process (the adaptation is in memory, per class)")
    with pytest.raises(AttributeError, match="all_tied_weights_keys"):
        AutoModel.from_pretrained(folder, trust_remote_code=True)


def test_loads_through_trust_remote_code_with_its_weights(folder, model):
    assert type(model).__name__ == "TinyLLaDAModelLM" and type(model).__module__.startswith("transformers_modules")
    saved = load_file(folder / "model.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k  # the file's weights, not a re-initialisation
    ids = torch.tensor([[10, 11, 12]])
    assert model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.shape == (1, 3, 104)  # reads use_cache


def test_the_tokenizer_loads_without_asking(folder, capfd):
    load_tokenizer(str(folder), trust_remote_code=True)
    assert "Do you wish to run the custom code" not in capfd.readouterr().out


def test_activation_checkpointing_uses_the_models_own_switch(folder, tok):
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj"]}
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)  # the same LoRA initialisation both times
        m = load_masked_lm(
            tok, name_or_path=str(folder), trust_remote_code=True, gradient_checkpointing=ckpt, lora=lora
        )
        assert m.get_base_model().model.activation_checkpointing_strategy == ("whole_layer" if ckpt else None)
        for n, p in m.named_parameters():  # LoRA B starts at 0: give it values so every LoRA weight gets a gradient
            if "lora_B" in n:
                p.data.normal_(0, 0.1)
        m.train()
        ids = torch.tensor([[10, 11, 12, 3, 3]])
        m(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad})
    assert len(grads[0]) == 2 * 6 * 2  # 2 blocks x 6 projections x (A, B)
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n])


def test_a_model_without_any_checkpointing_says_which_key(folder, tok, monkeypatch):
    from src.models import hf

    class Plain(torch.nn.Module):
        supports_gradient_checkpointing = False

    with pytest.raises(ValueError, match="model.policy.gradient_checkpointing=false"):
        hf.enable_activation_checkpointing(Plain())


def test_the_probe_finds_that_the_mask_is_ignored(model, char_tok):
    from src.models.tiny import tiny_masked_lm

    assert ignores_attention_mask(model)
    bert = tiny_masked_lm(char_tok, hidden_size=32, num_layers=1, num_heads=2)
    assert not probe_attention_mask(bert, pad_id=char_tok.pad_token_id)  # ModernBERT honours the mask


def _batch(tok):
    return prompt_batch(tok, PROMPTS)


@pytest.mark.parametrize(
    "mode, knob, temperature", [("threshold", 0.2, 0.0), ("low_confidence", None, 0.0), ("threshold", 0.5, 1.0)]
)
def test_a_batched_rollout_equals_each_prompt_alone(model, tok, mode, knob, temperature):
    """Left-padded prompts of different lengths: tokens, NFE and behaviour log-probs equal those of each prompt
    decoded alone (they did not: all padded rows differed, and NFE with them)."""
    rows, b = _batch(tok)
    s = MaskedDiffusionSampler(
        tok, gen_length=8, block_length=4, mode=mode, steps_per_block=2, temperature=temperature
    )
    keys = row_keys(0, 0, b["index"], 1)
    ro = s.generate(model, b["prompt_ids"], b["prompt_mask"], knob=knob, keys=keys)
    assert b["prompt_mask"].float().mean() < 1  # the batch really is padded
    for i, r in enumerate(rows):
        ids = torch.tensor([r["prompt_ids"]])
        alone = s.generate(model, ids, torch.ones_like(ids), knob=knob, keys=keys[i : i + 1])
        assert torch.equal(alone.completion_ids[0], ro.completion_ids[i]), i
        assert int(alone.nfe[0]) == int(ro.nfe[i]) and torch.equal(alone.decode_step[0], ro.decode_step[i])
        torch.testing.assert_close(alone.behaviour_logps[0], ro.behaviour_logps[i], atol=1e-5, rtol=0)
    # the same batch attending to its padding (what the model does when nothing intervenes) is not equal
    model.config.ignores_attention_mask = False
    try:
        wrong = s.generate(model, b["prompt_ids"], b["prompt_mask"], knob=knob, keys=keys)
    finally:
        model.config.ignores_attention_mask = True
    assert not torch.equal(wrong.completion_ids, ro.completion_ids)


@pytest.mark.parametrize("stages", [1, 2])
def test_batched_surrogate_logps_equal_the_unbatched_ones(model, tok, stages):
    from src.losses.diffusion import prompt_mask_draw, surrogate_assignment

    rows, b = _batch(tok)
    s = MaskedDiffusionSampler(tok, gen_length=8, block_length=4, mode="threshold")
    ro = s.generate(model, b["prompt_ids"], b["prompt_mask"], knob=0.2)
    keys = row_keys(0, 0, b["index"], 1)
    assign = surrogate_assignment(ro.decode_step, ro.nfe, num_stages=stages, cut="midpoint")
    pm = prompt_mask_draw(ro.attention_mask[:, : ro.prompt_len], prob=0.3, keys=keys)
    batched = staged_logps(model, ro, assign, mask_id=3, prompt_masked=pm)
    for i, r in enumerate(rows):
        ids = torch.tensor([r["prompt_ids"]])
        alone = s.generate(model, ids, torch.ones_like(ids), knob=0.2)
        pm_i = prompt_mask_draw(torch.ones_like(ids), prob=0.3, keys=keys[i : i + 1])
        assert torch.equal(pm_i[0], pm[i, ro.prompt_len - len(r["prompt_ids"]) :])  # keyed: padding-invariant
        one = staged_logps(model, alone, assign[i : i + 1], mask_id=3, prompt_masked=pm_i)
        torch.testing.assert_close(one[0], batched[i], atol=1e-5, rtol=0)


def test_cache_refusal_names_the_model_not_the_peft_wrapper(folder, tok):
    m = load_masked_lm(
        tok, name_or_path=str(folder), trust_remote_code=True, lora={"r": 2, "alpha": 4, "target_modules": ["q_proj"]}
    )
    s = MaskedDiffusionSampler(tok, gen_length=4, block_length=4, mode="threshold", cache="prefix")
    ids = torch.tensor([[10, 11, 12]])
    with pytest.raises(ValueError, match="TinyLLaDAModelLM called it 0 times") as e:
        s.generate(m, ids, torch.ones_like(ids), knob=0.5)
    assert "Peft" not in str(e.value)
