"""OPDModule: rollouts, a step trains the student only; opd == opd_plus exactly where theory says."""

import copy
import functools
import math

import pytest
import torch

from src.datamodules.prompt import PromptDataModule
from src.datamodules.tasks.math import arithmetic_problems, math_reward
from src.models.tiny import tiny_causal_lm
from src.models.tokenizer import char_tokenizer
from src.modules.metrics import PassAtK, pass_at_k
from src.modules.opd import OPDModule
from src.rollout.hf import HFGenerateBackend, completion_mask_from_ids
from tests.helpers.configs import module_defaults

TINY = functools.partial(tiny_causal_lm, hidden_size=32, num_layers=1, num_heads=2)
YAML = module_defaults("opd")


def make(char_tok, **kw):
    opts = dict(
        model=TINY,
        teacher=functools.partial(TINY, seed=7),
        tokenizer=char_tok,
        optimizer=functools.partial(torch.optim.SGD, lr=0.5),
        reward=math_reward,
    )
    opts.update(kw)
    # the YAML's rollout / eval settings, with the sizes given here (backend: the YAML's fallback when the data
    # preset brings no rollout engine)
    rollout = {**YAML["rollout"], "backend": "hf", "n": 2, "max_new_tokens": 5}
    opts["rollout"] = {**rollout, **opts.get("rollout", {})}
    opts["eval"] = {**YAML["eval"], "k": 2, "n": 2, "max_new_tokens": 5, **opts.get("eval", {})}
    m = OPDModule(**opts)
    m.configure_model()
    return m


@pytest.fixture
def batch(char_tok):
    dm = PromptDataModule(
        tokenizer=char_tok,
        batch_size=3,
        generator=functools.partial(arithmetic_problems, num_examples=30, max_operand=9),
    )
    dm.setup()
    return next(iter(dm.train_dataloader()))


def test_completion_mask():
    c = torch.tensor([[5, 6, 2, 7, 2], [5, 5, 5, 5, 5]])
    assert completion_mask_from_ids(c, eos_id=2, pad_id=0).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


def test_rollout_shapes_and_groups(char_tok, batch):
    model = TINY(char_tok)
    torch.manual_seed(0)
    ro = HFGenerateBackend(char_tok).generate(model, batch["prompt_ids"], batch["prompt_mask"], n=3, max_new_tokens=4)
    assert ro.sequences.shape == (9, batch["prompt_ids"].shape[1] + 4)
    assert len(ro.texts) == 9 and (ro.action_mask.sum(-1) >= 1).all()
    assert torch.equal(ro.sequences[:3, : ro.prompt_len], batch["prompt_ids"][:1].expand(3, -1))


@pytest.mark.parametrize("estimator", ["opd", "opd_plus"])
def test_step_updates_student_not_teacher(char_tok, batch, estimator):
    m = make(char_tok, estimator=estimator, divergence="js")
    before, t_before = copy.deepcopy(m.policy.state_dict()), copy.deepcopy(m.teacher.state_dict())
    opt = m.configure_optimizers()
    torch.manual_seed(0)
    loss = m.training_step(batch, 0)
    loss.backward()
    opt.step()
    changed = [k for k, v in m.policy.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) >= len(before) - 1  # (an untouched embedding row set may stay; the rest moves)
    assert all(torch.equal(v, t_before[k]) for k, v in m.teacher.state_dict().items())
    assert all(p.grad is None for p in m.teacher.parameters())


def _grads(m, batch, seed):
    m.policy.zero_grad()
    torch.manual_seed(seed)
    m.training_step(batch, 0).backward()
    return torch.cat([p.grad.flatten() for p in m.policy.parameters() if p.grad is not None])


def test_opd_equals_opd_plus_for_reverse_kl_only(char_tok, batch):
    """For reverse KL, f'(r) = log r + 1 = h(r) + 1: OPD+ and OPD advantages differ by the constant 1
    (the paper's uncentred pair) and coincide once centred; for chi2 they differ by a non-constant amount."""
    from src.losses.distillation import distillation_advantages

    m = make(char_tok)
    torch.manual_seed(0)
    ro, _, t_lp = m._rollout_and_score(batch)
    from src.rollout.hf import completion_logps

    s_lp = completion_logps(m.policy, ro).detach()
    mask = ro.action_mask
    for div, constant in (("reverse_kl", True), ("chi2", False)):
        a_plus, _ = distillation_advantages(s_lp, t_lp, mask, estimator="opd_plus", divergence=div)
        a_opd, _ = distillation_advantages(s_lp, t_lp, mask, estimator="opd", divergence=div)
        c_plus, _ = distillation_advantages(s_lp, t_lp, mask, estimator="opd_plus", divergence=div, center=True)
        diff, cdiff = (a_plus - a_opd)[mask.bool()], (c_plus - a_opd)[mask.bool()]
        if constant:
            torch.testing.assert_close(diff, torch.ones_like(diff))
            torch.testing.assert_close(cdiff, torch.zeros_like(cdiff))
        else:
            assert diff.std() > 1e-3


@pytest.mark.parametrize("reward", [math_reward, None])
def test_validation_logs_pass_at_k_and_divergence(char_tok, reward):
    import lightning as L

    m = make(char_tok, divergence="js", reward=reward)
    dm = PromptDataModule(
        tokenizer=char_tok,
        batch_size=4,
        generator=functools.partial(arithmetic_problems, num_examples=40, max_operand=9),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=2,
        inference_mode=False,
    )
    res = trainer.validate(m, datamodule=dm, verbose=False)[0]
    for k in ("val/rollout/length", "val/distill/js", "val/distill/reverse_kl", "val/distill/log_ratio"):
        assert k in res
    # pass@k needs the task's reward; without one the held-out samples still give the divergences and their length
    assert ("val/pass@1" in res and "val/pass@2" in res) == (reward is not None)
    assert 1 <= res["val/rollout/length"] <= 5
    # per-sequence Monte-Carlo estimates (unbiased, so a small sample can be negative): finite;
    # the estimators' values are checked exactly in tests/losses
    assert all(math.isfinite(res[k]) for k in ("val/distill/js", "val/distill/reverse_kl"))


def test_tokenizer_mismatch_and_bad_config(char_tok):
    other = char_tokenizer(alphabet="0123456789+=")
    with pytest.raises(ValueError, match="tokenizers differ"):
        make(char_tok, teacher_tokenizer=other)
    with pytest.raises(ValueError, match="valid: opd, opd_plus"):
        make(char_tok, estimator="gkd")
    with pytest.raises(ValueError, match="valid: reverse_kl"):
        make(char_tok, divergence="kl")
    with pytest.raises(ValueError, match="reward_coef"):
        make(char_tok, reward=None, reward_coef=1.0)
    with pytest.raises(ValueError, match="need samples from the student"):
        make(char_tok, rollout={"n": 2, "max_new_tokens": 4, "temperature": 0.7})
    with pytest.raises(ValueError, match="need samples from the student"):
        make(char_tok, rollout={"n": 2, "max_new_tokens": 4, "top_p": 0.9})
    with pytest.raises(ValueError, match="discount"):
        make(char_tok, discount=2.0)


def test_pass_at_k():
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    m = PassAtK(2)
    m.update(torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0]]))
    assert m.compute().item() == pytest.approx(((1 - 3 / 6) + (1 - 1 / 6)) / 2)


def test_rollout_backend_is_a_config_choice(char_tok):
    """``module.rollout.backend``: hf (default), vllm (an error naming the fix without vLLM), a factory."""
    import importlib.util

    from src.rollout.hf import HFGenerateBackend

    assert isinstance(make(char_tok).backend, HFGenerateBackend)
    made = []
    m = make(char_tok, rollout={"backend": lambda tok: made.append(tok) or HFGenerateBackend(tok)})
    assert made == [char_tok] and isinstance(m.backend, HFGenerateBackend)
    with pytest.raises(ValueError, match="module.rollout.backend='sglang'; valid: hf, vllm"):
        make(char_tok, rollout={"backend": "sglang"})
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ImportError, match="not installed.*module.rollout.backend=hf"):
            make(char_tok, rollout={"backend": "vllm"})
    with pytest.raises(ValueError, match="module.rollout needs top_p"):
        make(char_tok, rollout={"top_p": None})
