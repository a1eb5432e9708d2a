"""Rollouts whose completions are empty (the policy emits EOS first) train without NaN: the EOS is
the only scored action, rewards are 0, group advantages are 0 rather than 0/0, metrics stay finite."""

import functools
import math

import torch

from src.datamodules.prompt import PromptDataModule
from src.datamodules.tasks.math import arithmetic_problems
from tests.modules import test_diffpo_module as diffpo_t
from tests.modules import test_opd_module as opd_t


def _force_eos(linear: torch.nn.Module, eos: int) -> None:
    """Make the output layer put (almost) all mass on EOS, like a collapsed policy."""
    linear.register_forward_hook(
        lambda mod, inp, out: out + 1e4 * torch.nn.functional.one_hot(torch.tensor(eos), out.shape[-1]).to(out.dtype)
    )


def _prompts(char_tok):
    dm = PromptDataModule(
        tokenizer=char_tok,
        batch_size=3,
        generator=functools.partial(arithmetic_problems, num_examples=30, max_operand=9),
    )
    dm.setup()
    return next(iter(dm.train_dataloader()))


def _finite_grads(module):
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return grads and all(torch.isfinite(g).all() for g in grads)


def test_opd_empty_completions(char_tok):
    m = opd_t.make(char_tok, fused_logprobs=False)  # the fused path refuses a logit-editing hook (tested there)
    _force_eos(m.policy.lm_head, char_tok.eos_token_id)
    batch = _prompts(char_tok)
    ro, _, _ = m._rollout_and_score(batch)
    assert ro.texts == [""] * len(ro.texts) and ro.action_mask.sum(-1).tolist() == [1] * len(ro.texts)
    logged = {}
    m.log_metrics = lambda stage, metrics, **kw: logged.update(metrics)
    loss = m.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert _finite_grads(m.policy)
    assert all(math.isfinite(float(v)) for v in logged.values()) and float(logged["rollout/length"]) == 1.0
    assert float(logged["reward/mean"]) == 0.0  # garbage (empty) answers score 0


def test_diffpo_empty_completions(char_tok, tmp_path):
    m = diffpo_t.make(char_tok)
    m.configure_model()
    _force_eos(m.policy.decoder, char_tok.eos_token_id)
    batch = _prompts(char_tok)
    ro = m.sampler.generate(m.policy, batch["prompt_ids"], batch["prompt_mask"], knob=0.9)
    assert ro.texts == [""] * len(ro.texts) and ro.action_mask.sum(-1).tolist() == [1] * len(ro.texts)
    tr = diffpo_t.trainer(tmp_path, max_steps=2, limit_val_batches=1, val_check_interval=2)
    tr.fit(m, datamodule=diffpo_t.dm(char_tok))
    metrics = {k: float(v) for k, v in tr.callback_metrics.items()}
    assert metrics["train/reward/mean"] == 0.0 and metrics["val/accuracy"] == 0.0
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert all(torch.isfinite(p).all() for p in m.parameters())
    # equal rewards: the policy's group advantages are exactly 0 (not 0/0)
    assert metrics["train/policy/advantage_mean"] == 0.0
