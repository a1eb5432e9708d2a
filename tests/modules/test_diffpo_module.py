"""DiFFPOModule: a step moves the model and the controller; options; Pareto output."""

import copy
import functools
import json

import lightning as L
import pytest
import torch

from src.callbacks.pareto_eval import ParetoEval
from src.datamodules.prompt import PromptDataModule
from src.datamodules.tasks.math import arithmetic_problems, math_reward
from src.models.tiny import tiny_masked_lm
from src.modules.diffpo import DiFFPOModule
from tests.helpers.configs import component, module_defaults

TINY = functools.partial(tiny_masked_lm, hidden_size=32, num_layers=1, num_heads=2)


YAML = module_defaults("diffpo")


def make(char_tok, *, sampler=None, controller="default", knobs=(0.0, 1.0), **kw):
    """A DiFFPOModule with the YAML's arguments; ``sampler`` / ``controller``: overrides of the YAML's
    component arguments (``controller=None``: no controller); ``knobs``: the Pareto grid (None: none)."""
    opts = {
        **YAML,
        "model": TINY,
        "tokenizer": char_tok,
        "reward": math_reward,
        "optimizer": functools.partial(torch.optim.AdamW, lr=1e-2),
        "sampler": component(YAML["sampler"], **({"gen_length": 4, "block_length": 4} | (sampler or {}))),
        "controller": None
        if controller is None
        else component(
            YAML["controller"],
            init_knob=None,
            **({"grid": [0.0, 0.5, 1.0]} | (controller if isinstance(controller, dict) else {})),
        ),
        "pareto_eval": None if knobs is None else ParetoEval(knobs=list(knobs)),
        "group_size": 2,
        "inner_updates": 1,
    }
    opts.update(kw)
    return DiFFPOModule(**opts)


def dm(char_tok):
    d = PromptDataModule(
        tokenizer=char_tok,
        batch_size=3,
        generator=functools.partial(arithmetic_problems, num_examples=30, max_operand=9),
    )
    return d


def trainer(tmp_path, **kw):
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
        inference_mode=False,
        **kw,
    )


@pytest.mark.parametrize("train_model, train_controller", [(True, True), (True, False), (False, True)])
def test_step_updates_what_is_trained(char_tok, tmp_path, train_model, train_controller):
    m = make(char_tok, train_model=train_model, train_controller=train_controller)
    m.configure_model()
    pol, ctrl = copy.deepcopy(m.policy.state_dict()), copy.deepcopy(m.controller.state_dict())
    torch.manual_seed(0)
    trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(m, datamodule=dm(char_tok))
    pol_changed = any(not torch.equal(v, pol[k]) for k, v in m.policy.state_dict().items())
    ctrl_changed = any(not torch.equal(v, ctrl[k]) for k, v in m.controller.state_dict().items())
    assert pol_changed == train_model
    assert ctrl_changed == train_controller


def test_controller_param_group_and_grads(char_tok):
    m = make(char_tok, controller_lr=0.5)
    m.configure_model()
    groups = m.param_groups()
    assert len(groups) == 2 and groups[1]["lr"] == 0.5
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in m.controller.parameters()}


def test_validation_writes_pareto(char_tok, tmp_path):
    m = make(char_tok)
    res = trainer(tmp_path, limit_val_batches=1).validate(m, datamodule=dm(char_tok), verbose=False)[0]
    # threshold 1.0 decodes one token per step: NFE == gen_length; 0.0: one step per block
    assert res["val/pareto/nfe@1.0"] == 4.0 and res["val/pareto/nfe@0.0"] == 1.0
    assert "val/accuracy" in res and "val/nfe" in res
    rows = [json.loads(x) for x in (tmp_path / "pareto.jsonl").read_text().splitlines()]
    assert {r["source"] for r in rows} == {"fixed", "controller"}
    assert list(tmp_path.glob("pareto_step*.png"))


def test_bad_config(char_tok):
    with pytest.raises(ValueError, match="nothing to train"):
        make(char_tok, train_model=False, train_controller=False)
    with pytest.raises(ValueError, match="needs a module.controller"):
        make(char_tok, controller=None)
    with pytest.raises(ValueError, match="group_size"):
        make(char_tok, group_size=1)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_trains_and_validates_with_the_block_cache(char_tok, tmp_path, cache):
    """``sampler.cache`` reaches both samplers (evaluation inherits it); two blocks of 2 so that the
    cache is used after each block's first step; a step still moves the model and the controller."""
    m = make(char_tok, sampler={"gen_length": 4, "block_length": 2, "cache": cache})
    assert m.sampler.cache == m.eval_sampler.cache == cache
    m.configure_model()
    pol = copy.deepcopy(m.policy.state_dict())
    torch.manual_seed(0)
    tr = trainer(tmp_path, max_steps=2, limit_val_batches=1, val_check_interval=2)
    tr.fit(m, datamodule=dm(char_tok))
    assert any(not torch.equal(v, pol[k]) for k, v in m.policy.state_dict().items())
    assert float(tr.callback_metrics["val/pareto/nfe@1.0"]) == 4.0  # one token a step, whatever the cache
    assert m.policy.config._attn_implementation == "sdpa"
