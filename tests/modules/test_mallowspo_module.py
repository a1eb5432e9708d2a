"""MallowsPOModule: a step trains the policy and leaves the reference frozen; dpo == plain DPO."""

import copy
import functools

import pytest
import torch

from src.datamodules.preference import PreferenceDataModule
from src.datamodules.tasks.synthetic import sorting_preferences
from src.losses.logprobs import selective_log_softmax, sequence_logprob
from src.models.tiny import tiny_causal_lm
from src.modules.mallowspo import MallowsPOModule


def make(char_tok, tmp_path=None, **kw):
    opts = dict(
        model=functools.partial(tiny_causal_lm, hidden_size=32, num_layers=1, num_heads=2),
        tokenizer=char_tok,
        optimizer=functools.partial(torch.optim.SGD, lr=0.5),
        variant="mallows_theta",
        beta=0.5,
        dispersion={"source": "entropy", "scale": 1.0},
        cache_dir=str(tmp_path) if tmp_path else None,
    )
    opts.update(kw)
    m = MallowsPOModule(**opts)
    m.configure_model()
    return m


@pytest.fixture
def batch(char_tok):
    dm = PreferenceDataModule(
        tokenizer=char_tok,
        batch_size=4,
        max_length=32,
        max_prompt_length=16,
        generator=functools.partial(sorting_preferences, num_examples=40),
    )
    dm.setup()
    return next(iter(dm.train_dataloader()))


@pytest.mark.parametrize("variant", ["dpo", "mallows_theta", "mallows_phi"])
def test_step_updates_policy_not_reference(char_tok, batch, variant):
    disp = {"source": "none", "scale": 1.0} if variant == "dpo" else {"source": "entropy", "scale": 1.0}
    m = make(char_tok, variant=variant, dispersion=disp)
    before = copy.deepcopy(m.policy.state_dict())
    ref_before = copy.deepcopy(m.ref.state_dict())
    opt = m.configure_optimizers()
    loss = m._shared_step(batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    changed = [k for k, v in m.policy.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) == len(before), "every policy tensor should move"
    assert all(torch.equal(v, ref_before[k]) for k, v in m.ref.state_dict().items())
    assert all(not p.requires_grad for p in m.ref.parameters())
    assert all(p.grad is None for p in m.ref.parameters())


def test_variant_dpo_equals_plain_dpo(char_tok, batch):
    m = make(char_tok, variant="dpo", dispersion={"source": "none", "scale": 1.0}, beta=0.3)
    with torch.no_grad():  # make policy != reference so the margin is non-zero
        for p in m.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    got = m._shared_step(batch).loss

    def seq(model):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        return (lp * batch["loss_mask"][:, 1:]).sum(-1)

    s, r = seq(m.policy), seq(m.ref)
    n = len(batch["index"])
    delta = (s[:n] - r[:n]) - (s[n:] - r[n:])
    plain = -torch.nn.functional.logsigmoid(0.3 * delta).mean()
    torch.testing.assert_close(got, plain, atol=1e-5, rtol=1e-5)
    # a dispersion column in the data must not leak into plain DPO
    with_col = dict(batch, dispersion=torch.full((n,), 3.0))
    torch.testing.assert_close(m._shared_step(with_col).loss, plain, atol=1e-5, rtol=1e-5)


def test_given_dispersion_and_errors(char_tok, batch):
    m = make(char_tok, dispersion={"source": "given", "scale": 1.0})
    with pytest.raises(KeyError, match="dispersion"):
        m._shared_step(batch)
    b = dict(batch, dispersion=torch.ones(len(batch["index"])))
    theta = m._shared_step(b).loss
    m2 = make(char_tok, variant="dpo", dispersion={"source": "none", "scale": 1.0})
    torch.testing.assert_close(theta, m2._shared_step(batch).loss)  # w = 1 is DPO
    with pytest.raises(ValueError, match="valid: dpo"):
        make(char_tok, variant="orpo")
    with pytest.raises(ValueError, match="needs module.dispersion.source"):
        make(char_tok, dispersion={"source": "none", "scale": 1.0})
    with pytest.raises(ValueError, match="valid: none, entropy, given"):
        make(char_tok, dispersion={"source": "oracle", "scale": 1.0})


def test_lora_reference_is_adapter_disabled_base(char_tok, batch):
    pytest.importorskip("peft")
    m = make(
        char_tok,
        variant="dpo",
        dispersion={"source": "none", "scale": 1.0},
        model=functools.partial(tiny_causal_lm, hidden_size=32, num_layers=1, num_heads=2, lora={"r": 4, "alpha": 8}),
    )
    assert m.ref is None and m.is_lora
    base = tiny_causal_lm(char_tok, hidden_size=32, num_layers=1, num_heads=2)
    trainable = [n for n, p in m.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    # make the adapter non-trivial, then the reference must still equal the untouched base
    with torch.no_grad():
        for n, p in m.policy.named_parameters():
            if "lora_B" in n:
                p.add_(0.1)
    ref = m.reference_stats(batch)
    logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    seq = sequence_logprob(selective_log_softmax(logits, batch["input_ids"][:, 1:]), batch["loss_mask"][:, 1:])
    n = len(batch["index"])
    torch.testing.assert_close(ref["ref_chosen"], seq[:n], atol=1e-5, rtol=1e-5)
    pol = m._response_stats(m.policy, batch, entropy=False)[0]
    assert not torch.allclose(pol[:n], seq[:n], atol=1e-4)


def test_checkpoint_drops_and_restores_reference(char_tok):
    m = make(char_tok)
    ckpt = {"state_dict": m.state_dict()}
    m.on_save_checkpoint(ckpt)
    assert not any(k.startswith("ref.") for k in ckpt["state_dict"])
    assert any(k.startswith("policy.") for k in ckpt["state_dict"])
    m2 = make(char_tok)
    m2.on_load_checkpoint(ckpt)
    m2.load_state_dict(ckpt["state_dict"])  # strict: the reference keys were filled back


def test_precomputed_reference_cache_equals_live(char_tok, tmp_path):
    """precompute_ref: cached log-probs and dispersions equal a live reference pass, and the
    reference model is dropped afterwards."""
    import lightning as L

    dm = PreferenceDataModule(
        tokenizer=char_tok,
        batch_size=4,
        max_length=32,
        max_prompt_length=16,
        generator=functools.partial(sorting_preferences, num_examples=40),
    )
    live = make(char_tok)
    dm.setup()
    batch = next(iter(torch.utils.data.DataLoader(dm.val_set, batch_size=5, collate_fn=dm.collate)))
    expected = live.reference_stats(batch)
    m = make(char_tok, precompute_ref=True, cache_dir=str(tmp_path))
    L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
    ).fit(m, datamodule=dm)
    assert m.ref is None and list(tmp_path.glob("ref_*.pt"))
    cached = {k: v[batch["index"]] for k, v in m.ref_cache.items()}
    for k in ("ref_chosen", "ref_rejected", "w"):
        torch.testing.assert_close(cached[k], expected[k], atol=1e-5, rtol=1e-5)
