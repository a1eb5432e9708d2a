"""Fast-dLLM's block-wise approximate key/value cache (``sampler.cache=prefix|dual``)."""

import pytest
import torch

from src.models.tiny import tiny_masked_lm
from src.rollout.diffusion_sampler import MaskedDiffusionSampler, masked_lm_logits
from src.rollout.dllm_cache import block_kv_cache


@pytest.fixture
def model(char_tok):
    # two of four layers local with a 4-token window (half-window 2): the cache must mask them as
    # transformers does, over the whole sequence, from any query offset
    return tiny_masked_lm(
        char_tok, hidden_size=32, num_layers=4, num_heads=2, global_attn_every_n_layers=2, local_attention=4
    ).eval()


@pytest.fixture
def batch(char_tok):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(5, 40, (3, 14), generator=g)
    x[:, 9:] = char_tok.mask_token_id
    attn = torch.ones_like(x)
    attn[0, :3] = 0  # left padding
    x[0, :3] = char_tok.pad_token_id
    return x, attn


def test_local_layers_are_really_local(char_tok, model, batch):
    """Guard for the next test: the fixture's local layers change its output (a 14-token sequence
    against a half-window of 2), so reproducing the logits exercises the window masking."""
    x, attn = batch
    assert model.config.layer_types == ["full_attention", "sliding_attention"] * 2
    assert model.config.sliding_window == 2
    with torch.no_grad():
        local = masked_lm_logits(model, x, attn)
        model.config.sliding_window = 100
        try:
            wide = masked_lm_logits(model, x, attn)
        finally:
            model.config.sliding_window = 2
    assert (local - wide).abs().max() > 1e-3


@pytest.mark.parametrize("positions", [slice(9, 14), slice(9, 12), slice(3, 9), slice(0, 14)])
def test_fresh_cache_reproduces_the_full_forward(char_tok, model, batch, positions):
    """Cached keys/values recorded from the same sequence are exact: a forward over some positions
    only (at their true rotary positions, against all keys, padding and local windows masked)
    gives the full forward's logits at those positions."""
    x, attn = batch
    with torch.no_grad():
        ref = masked_lm_logits(model, x, attn)
        with block_kv_cache(model, attn) as kv:
            full = kv.full(model, x, attn).logits
            part = kv.partial(model, x, attn, positions).logits
    torch.testing.assert_close(full, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(part, ref[:, positions], atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation == "sdpa"  # restored


def test_cached_positions_are_stale_by_design(char_tok, model, batch):
    """A partial forward sees the positions outside its range only through the recorded keys and
    values: changing those tokens afterwards changes nothing; changing its own tokens does."""
    x, attn = batch
    q = slice(9, 14)
    with torch.no_grad(), block_kv_cache(model, attn) as kv:
        kv.full(model, x, attn)
        base = kv.partial(model, x, attn, q).logits
        outside = x.clone()
        outside[:, 4:9] = 7
        torch.testing.assert_close(kv.partial(model, outside, attn, q).logits, base, atol=0, rtol=0)
        inside = x.clone()
        inside[:, 10] = 7
        assert (kv.partial(model, inside, attn, q).logits - base).abs().max() > 1e-5
        with pytest.raises(RuntimeError, match="call the model through them"):
            model(input_ids=x, attention_mask=attn)
    # ...while an uncached forward does see the change outside its range
    with torch.no_grad():
        assert (masked_lm_logits(model, outside, attn)[:, q] - base).abs().max() > 1e-5


def _computed_positions(model):
    sizes = []
    hook = model.model.embeddings.register_forward_hook(lambda m, i, o: sizes.append(o.shape[1]))
    return sizes, hook


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_sampler_computes_fewer_positions_after_a_blocks_first_step(char_tok, model, batch, cache):
    """Prompt 9, completion 8 in blocks of 4, 2 steps per block: each block's first step is a full
    forward (17 positions), its second one the block and what follows (prefix) or the block only."""
    x, attn = batch
    sizes, hook = _computed_positions(model)
    s = MaskedDiffusionSampler(
        char_tok, gen_length=8, block_length=4, mode="low_confidence", steps_per_block=2, cache=cache
    )
    try:
        ro = s.generate(model, x[:, :9], attn[:, :9])
    finally:
        hook.remove()
    rest = {"prefix": [8, 4], "dual": [4, 4]}[cache]
    assert sizes == [17, rest[0], 17, rest[1]]
    assert ro.nfe.tolist() == [4, 4, 4]
    assert (ro.completion_ids != char_tok.mask_token_id).all()
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_one_step_per_block_is_exact(char_tok, model, batch, cache):
    """At threshold 0 every block is decoded by its first (full) forward, where nothing is stale:
    the cached sampler decodes exactly what the uncached one does, controller features included."""
    x, attn = batch
    feats = []

    def knob(hidden, pmask):
        feats.append(hidden[-1].mean(1))
        return torch.zeros(hidden[0].shape[0]), hidden[-1].mean(1)

    out = []
    for c in ("none", cache):
        s = MaskedDiffusionSampler(char_tok, gen_length=8, block_length=4, mode="threshold", temperature=0.7, cache=c)
        out.append(s.generate(model, x[:, :9], attn[:, :9], knob=knob, generator=torch.Generator().manual_seed(1)))
    a, b = out
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.decode_step, b.decode_step)
    assert a.nfe.tolist() == b.nfe.tolist() == [2, 2, 2]
    torch.testing.assert_close(a.behaviour_logps, b.behaviour_logps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.first_hidden, b.first_hidden, atol=1e-5, rtol=1e-5)


def test_cached_rollout_records_the_cached_distribution(char_tok, model, batch):
    """The behaviour log-probs of a cached rollout are those of the (approximate) forward that chose
    the token, not of an exact rescoring: the importance ratio is what corrects the mismatch."""
    x, attn = batch
    s = MaskedDiffusionSampler(
        char_tok, gen_length=4, block_length=4, mode="low_confidence", steps_per_block=2, cache="dual"
    )
    ro = s.generate(model, x[:, :9], attn[:, :9])
    P, comp = ro.prompt_len, ro.completion_ids
    second = ro.decode_step == 1
    assert second.any()
    masks = torch.full_like(comp, char_tok.mask_token_id)
    with torch.no_grad(), block_kv_cache(model, ro.attention_mask) as kv:
        kv.full(model, torch.cat([x[:, :9], masks], 1), ro.attention_mask)  # step 0: all masked, recorded
        step1 = torch.cat([x[:, :9], torch.where(ro.decode_step < 1, comp, masks)], 1)
        logits = kv.partial(model, step1, ro.attention_mask, slice(P, P + 4)).logits.float()
    logits[..., char_tok.mask_token_id] = float("-inf")
    lp = torch.log_softmax(logits, -1).gather(-1, comp[..., None]).squeeze(-1)
    torch.testing.assert_close(lp[second], ro.behaviour_logps[second], atol=1e-5, rtol=1e-5)


def test_bad_cache_config_and_unsupported_attention(char_tok):
    with pytest.raises(ValueError, match="valid: none, prefix, dual"):
        MaskedDiffusionSampler(char_tok, gen_length=4, block_length=4, mode="threshold", cache="kv")

    class OwnAttention(torch.nn.Module):  # remote-code style: never calls transformers' AttentionInterface
        def __init__(self):
            super().__init__()
            from transformers import PretrainedConfig

            self.config = PretrainedConfig(num_hidden_layers=1)
            self.config._attn_implementation = "eager"
            self.emb = torch.nn.Embedding(char_tok.vocab_size + 8, 4)

        def forward(self, input_ids, attention_mask, **kw):
            from transformers.modeling_outputs import MaskedLMOutput

            return MaskedLMOutput(logits=self.emb(input_ids))

    m = OwnAttention()
    x = torch.ones(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="sampler.cache=none"), block_kv_cache(m, torch.ones_like(x)) as kv:
        kv.full(m, x, torch.ones_like(x))
    assert m.config._attn_implementation == "eager"
