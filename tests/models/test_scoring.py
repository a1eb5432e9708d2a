"""The fused scoring path (LM head applied only where a token is scored, chunk by chunk) gives the
same log-probs, entropies and gradients as the plain full-logits path, for untied and tied heads,
LoRA, bf16 autocast, the completion / SFT / preference layouts; and it refuses models it would
silently get wrong."""

import pytest
import torch

from src.models.scoring import fused_token_stats, next_token_logps, output_head
from src.models.tiny import tiny_causal_lm
from src.rollout.hf import completion_logps
from src.rollout.types import Rollout


def _batch(V, B=3, T=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (B, T), generator=g)
    attn = torch.ones(B, T, dtype=torch.long)
    attn[1, :3] = 0  # left padding
    attn[2, -2:] = 0  # right padding
    score = torch.zeros(B, T - 1, dtype=torch.bool)
    score[:, 4:] = True
    score[2, -2:] = False
    return ids, attn, score


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_next_token_logps_fused_equals_plain(char_tok, tied, arch):
    model = tiny_causal_lm(char_tok, arch=arch, hidden_size=32, num_layers=2, num_heads=4, tie_word_embeddings=tied)
    if tied:
        assert model.lm_head.weight is model.get_input_embeddings().weight
    ids, attn, score = _batch(len(char_tok))
    pos = (attn.cumsum(-1) - 1).clamp_min(0)
    up = torch.randn(score.shape, generator=torch.Generator().manual_seed(1))
    out = {}
    for fused in (False, True):
        model.zero_grad()
        lp, ent, vocab = next_token_logps(model, ids, attn, score, position_ids=pos, entropy=True, fused=fused)
        (lp * up).sum().backward()
        out[fused] = (lp, ent, vocab, _grads(model))
    (lp0, e0, v0, g0), (lp1, e1, v1, g1) = out[False], out[True]
    assert v0 == v1 == len(char_tok)
    assert (lp1[~score] == 0).all() and (e1[~score] == 0).all()
    torch.testing.assert_close(lp1[score], lp0[score], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(e1[score], e0[score], atol=1e-5, rtol=1e-5)
    assert g0.keys() == g1.keys() and "lm_head.weight" in g1 or tied
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-5, rtol=1e-4, msg=n)


def test_fused_with_lora_only_adapters_get_grads(char_tok):
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    model = tiny_causal_lm(char_tok, hidden_size=32, num_layers=2, num_heads=4, lora=lora)
    output_head(model)  # peft's all-linear leaves the head alone: a plain Linear
    ids, attn, score = _batch(len(char_tok))
    res = {}
    for fused in (False, True):
        model.zero_grad()
        lp, _, _ = next_token_logps(model, ids, attn, score, fused=fused)
        lp.sum().backward()
        res[fused] = (lp, _grads(model))
    assert res[True][1].keys() == res[False][1].keys() and all("lora_" in n for n in res[True][1])
    torch.testing.assert_close(res[True][0], res[False][0], atol=1e-5, rtol=1e-5)
    for n, g in res[False][1].items():
        torch.testing.assert_close(res[True][1][n], g, atol=1e-5, rtol=1e-4, msg=n)
    with model.disable_adapter():  # the LoRA reference path
        ref, _, _ = next_token_logps(model, ids, attn, score)
    assert not torch.allclose(ref, res[True][0]) or all(
        p.abs().sum() == 0 for n, p in model.named_parameters() if "lora_B" in n
    )


def test_fused_under_bf16_autocast(char_tok):
    model = tiny_causal_lm(char_tok, hidden_size=32, num_layers=2, num_heads=4)
    ids, attn, score = _batch(len(char_tok))
    res = {}
    for fused in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lp, _, _ = next_token_logps(model, ids, attn, score, fused=fused)
        lp.sum().backward()
        res[fused] = (lp, _grads(model))
    torch.testing.assert_close(res[True][0], res[False][0], atol=2e-2, rtol=2e-2)
    for n, g in res[False][1].items():
        rel = (res[True][1][n] - g).norm() / g.norm().clamp_min(1e-12)
        assert rel < 0.05, (n, float(rel))


def test_completion_logps_fused_equals_plain(char_tok):
    model = tiny_causal_lm(char_tok, hidden_size=32, num_layers=2, num_heads=4)
    ids, attn, _ = _batch(len(char_tok), T=12)
    P = 6
    cmask = attn[:, P:].clone()
    ro = Rollout(sequences=ids, attention_mask=attn, prompt_len=P, action_mask=cmask, texts=[""] * 3)
    plain = completion_logps(model, ro, fused=False)
    fused = completion_logps(model, ro)
    assert fused.shape == plain.shape == (3, 6)
    m = cmask.bool()
    torch.testing.assert_close(fused[m], plain[m], atol=1e-5, rtol=1e-5)
    assert (fused[~m] == 0).all()


def test_refuses_what_it_would_get_wrong(char_tok):
    model = tiny_causal_lm(char_tok, hidden_size=32, num_layers=1, num_heads=4)
    ids, attn, score = _batch(len(char_tok))
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        next_token_logps(model, ids, attn, score)
    model.config.final_logit_softcapping = None
    lora = {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["lm_head", "q_proj"]}
    adapted = tiny_causal_lm(char_tok, hidden_size=32, num_layers=1, num_heads=4, lora=lora)
    with pytest.raises(ValueError, match="adapter on the output layer"):
        next_token_logps(adapted, ids, attn, score)
    h = model.lm_head.register_forward_hook(lambda mod, inp, out: out * 2)
    with pytest.raises(ValueError, match="forward hook"):
        next_token_logps(model, ids, attn, score)
    h.remove()
    with pytest.raises(ValueError, match="equal-length"):
        fused_token_stats(
            model,
            input_ids=ids,
            attention_mask=attn,
            rows=torch.tensor([0]),
            cols=torch.tensor([0, 1]),
            labels=torch.tensor([1]),
        )
    with pytest.raises(ValueError, match="score_mask"):
        next_token_logps(model, ids, attn, score[:, 1:])
    assert not hasattr(model.lm_head, "forward") or "forward" not in vars(model.lm_head)  # head restored


def test_sft_module_fused_equals_plain(char_tok):
    """The module switch: SFT's answer cross-entropy, with gradients, fused vs plain."""
    import functools

    from src.datamodules.prompt import collate_prompts
    from src.modules.sft import SFTModule
    from tests.helpers.configs import module_defaults

    rows = [
        {"prompt_ids": [1, 7, 8, 9], "target_ids": [10, 11, 2], "answer": "x", "prompt": "", "index": 0},
        {"prompt_ids": [1, 12], "target_ids": [13, 14, 15, 16, 2], "answer": "y", "prompt": "", "index": 1},
    ]
    batch = collate_prompts(rows, pad_id=char_tok.pad_token_id)
    res = {}
    for fused in (False, True):
        m = SFTModule(
            model=functools.partial(tiny_causal_lm, hidden_size=32, num_layers=2, num_heads=4),
            tokenizer=char_tok,
            optimizer=torch.optim.SGD,
            rollout_backend="hf",
            eval=module_defaults("sft")["eval"],
            fused_logprobs=fused,
        )
        m.configure_model()
        loss = m._loss(batch)
        loss.backward()
        res[fused] = (loss, _grads(m.policy))
    torch.testing.assert_close(res[True][0], res[False][0], atol=1e-6, rtol=1e-6)
    for n, g in res[False][1].items():
        torch.testing.assert_close(res[True][1][n], g, atol=1e-6, rtol=1e-4, msg=n)
