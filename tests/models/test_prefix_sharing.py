"""Prefix sharing: the one-row-per-pair forward gives the same per-token log-probs, entropies and
gradients as the standard 2B-row concatenated forward, and refuses batches it cannot pack."""

import functools

import pytest
import torch

from src.datamodules.preference import collate_pairs
from src.losses import entropy_from_logits, selective_log_softmax
from src.models.prefix_sharing import shared_prefix_layout, shared_prefix_token_stats
from src.models.tiny import tiny_causal_lm


def rows(pairs):
    return [
        {"prompt_ids": p, "chosen_ids": c, "rejected_ids": r, "index": i, "prompt": ""}
        for i, (p, c, r) in enumerate(pairs)
    ]


def test_layout_by_hand():
    # pair 0: prompt [5, 6], chosen [7], rejected [8, 9]; pair 1: prompt [5], chosen [4, 3, 2], rejected [1]
    b = collate_pairs(rows([([5, 6], [7], [8, 9]), ([5], [4, 3, 2], [1])]), pad_id=0)
    lay = shared_prefix_layout(b["input_ids"], b["attention_mask"], b["loss_mask"], pad_id=0)
    assert lay.input_ids.tolist() == [[5, 6, 7, 8, 9], [5, 4, 3, 2, 1]]
    assert lay.position_ids.tolist() == [[0, 1, 2, 2, 3], [0, 1, 2, 3, 1]]
    assert lay.segment.tolist() == [[0, 0, 1, 2, 2], [0, 1, 1, 1, 2]]
    assert lay.last_prompt.tolist() == [1, 0] and lay.first_rejected.tolist() == [8, 1]
    allowed = (lay.attention_mask(torch.float32) == 0)[:, 0]
    # pair 0, query "9" (index 4) sees the prompt and "8", not the chosen "7"
    assert allowed[0, 4].tolist() == [True, True, False, True, True]
    # pair 1, query "1" (index 4) sees only the prompt and itself
    assert allowed[1, 4].tolist() == [True, False, False, False, True]
    assert allowed[1, 2].tolist() == [True, True, True, False, False]  # plain causal inside chosen


def standard(model, b, chunk=4):
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
    return selective_log_softmax(logits, b["input_ids"][:, 1:], chunk_size=chunk), entropy_from_logits(
        logits.detach(), chunk_size=chunk
    )


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("arch,attn", [("llama", "sdpa"), ("llama", "eager"), ("qwen2", "sdpa")])
def test_equals_concatenated_forward(char_tok, arch, attn, fused):
    g = torch.Generator().manual_seed(0)
    V = len(char_tok)
    rand = lambda n: torch.randint(5, V, (n,), generator=g).tolist()  # noqa: E731
    pairs = [(rand(p), rand(c), rand(r)) for p, c, r in [(3, 4, 2), (7, 1, 5), (1, 6, 6), (5, 3, 3)]]
    b = collate_pairs(rows(pairs), pad_id=char_tok.pad_token_id)
    mask = b["loss_mask"][:, 1:].bool()
    model = tiny_causal_lm(char_tok, arch=arch, hidden_size=32, num_layers=2, num_heads=4, attn_implementation=attn)
    want_lp, want_ent = standard(model, b)
    (want_lp * mask).sum().backward()
    want_grad = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    lp, ent, vocab = shared_prefix_token_stats(
        model, b, pad_id=char_tok.pad_token_id, chunk_size=4, entropy=True, fused=fused
    )
    assert vocab == V and lp.shape == want_lp.shape
    torch.testing.assert_close(lp[mask], want_lp[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent[mask], want_ent[mask], atol=1e-5, rtol=1e-5)
    (lp * mask).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want_grad[n], atol=1e-5, rtol=1e-4, msg=n)


def test_refuses_what_it_cannot_pack(char_tok):
    b = collate_pairs(rows([([5, 6], [7], [8, 9]), ([5], [4, 3, 2], [1])]), pad_id=0)
    with pytest.raises(ValueError, match="right-padded"):
        shared_prefix_layout(b["input_ids"].flip(1), b["attention_mask"].flip(1), b["loss_mask"].flip(1), pad_id=0)
    ids = b["input_ids"].clone()
    ids[2, 0] = 9  # rejected row of pair 0 no longer has the chosen row's prompt
    with pytest.raises(ValueError, match="share a non-empty prompt"):
        shared_prefix_layout(ids, b["attention_mask"], b["loss_mask"], pad_id=0)
    with pytest.raises(ValueError, match="even number"):
        shared_prefix_layout(ids[:3], b["attention_mask"][:3], b["loss_mask"][:3], pad_id=0)
    model = tiny_causal_lm(char_tok, hidden_size=16, num_layers=1, num_heads=2)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="module.prefix_sharing=false"):
        shared_prefix_token_stats(model, b, pad_id=0, chunk_size=4, entropy=False)


def test_module_paths_agree(char_tok):
    """MallowsPOModule with and without prefix sharing, fused or not: same loss and metrics on a real batch."""
    from src.datamodules.preference import PreferenceDataModule
    from src.datamodules.tasks.synthetic import sorting_preferences
    from src.modules.mallowspo import MallowsPOModule

    dm = PreferenceDataModule(
        tokenizer=char_tok,
        batch_size=6,
        max_length=40,
        max_prompt_length=20,
        generator=functools.partial(sorting_preferences, num_examples=40),
    )
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    out = {}
    for shared, fused in [(True, True), (False, False), (True, False), (False, True)]:
        m = MallowsPOModule(
            model=functools.partial(tiny_causal_lm, hidden_size=32, num_layers=1, num_heads=2),
            tokenizer=char_tok,
            optimizer=torch.optim.SGD,
            variant="mallows_phi",
            dispersion={"source": "entropy", "scale": 1.0},
            prefix_sharing=shared,
            fused_logprobs=fused,
        )
        m.configure_model()
        with torch.no_grad():
            for p in m.policy.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        out[shared, fused] = m._shared_step(batch)
    base = out[False, False]  # the plain TRL-style path
    for key in [(True, True), (True, False), (False, True)]:
        torch.testing.assert_close(out[key].loss, base.loss, atol=1e-5, rtol=1e-5)
        for k, v in base.metrics.items():
            torch.testing.assert_close(out[key].metrics[k], v, atol=1e-4, rtol=1e-4, msg=(key, k))
