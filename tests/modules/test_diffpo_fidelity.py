"""DiFFPO as the paper defines it (docs/diffpo.md): the random two-stage cut, the loss over the
completion up to the first EOS, importance weights that are exact at any sampling temperature, the
entropy-bounded sampler, a controller that costs no extra forward, batched surrogate scoring, and
the paper's LLaDA setting instantiated on a tiny stand-in."""

import copy
import functools
import json

import pytest
import torch

from src.losses import LossOutput, importance_ratio
from src.losses.diffusion import cut_assignment, draw_cut, stage_assignment, staged_token_logps, trajectory_assignment
from src.models.tiny import tiny_masked_lm
from src.modules.diffpo.surrogate import SurrogateDraw, staged_logps
from src.rollout.diffusion_sampler import (
    DiffusionRollout,
    MaskedDiffusionSampler,
    entropy_bounded_select,
    masked_lm_logits,
)
from src.rollout.hf import completion_mask_from_ids
from tests.modules.test_diffpo_module import make

TINY = functools.partial(tiny_masked_lm, hidden_size=32, num_layers=1, num_heads=2)


class Counter:
    """Counts the forward passes of a model (each is one NFE when it runs inside the sampler)."""

    def __init__(self, model):
        self.n = 0
        model.register_forward_pre_hook(self._hook)

    def _hook(self, *_):
        self.n += 1


@pytest.fixture
def prompts(char_tok):
    ids = torch.tensor([[char_tok.pad_token_id, 1, 20, 21], [1, 22, 23, 24], [1, 25, 26, 27]])
    return ids, (ids != char_tok.pad_token_id).long()


# ---- 1. the two-stage cut ------------------------------------------------------------------------
def test_midpoint_cut_is_the_old_even_split():
    g = torch.Generator().manual_seed(0)
    nfe = torch.randint(1, 9, (64,), generator=g)
    step = torch.stack([torch.randint(0, int(n), (8,), generator=g) for n in nfe])
    full = torch.ones_like(step)
    old = stage_assignment(step, full, num_stages=2, num_steps=nfe)
    assert torch.equal(cut_assignment(step, full, draw_cut(nfe, mode="midpoint")), old)


def test_uniform_cut_is_uniform_over_the_steps_and_keyed_draws_are_reproducible():
    n = torch.full((20000,), 5)
    tau = draw_cut(n, mode="uniform", generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(tau, minlength=5).float()
    assert tau.min() == 0 and tau.max() == 4
    chi2 = ((counts - 4000) ** 2 / 4000).sum()
    assert chi2 < 20.5  # 4 dof, p = 0.0004
    keys = torch.arange(6) * 7919
    a = draw_cut(torch.tensor([1, 2, 3, 4, 5, 6]), keys=keys, counter=3)
    assert torch.equal(a, draw_cut(torch.tensor([1, 2, 3, 4, 5, 6]), keys=keys, counter=3))
    assert (a <= torch.tensor([0, 1, 2, 3, 4, 5])).all() and a[0] == 0
    with pytest.raises(ValueError, match="valid: uniform, midpoint"):
        draw_cut(n, mode="random")


def test_stage_one_state_is_the_rollouts_state_after_the_cut(char_tok, prompts):
    """Stage-1 tokens are scored in the rollout's own state after step tau: exactly the tokens the
    sampler had unmasked by then (a re-run of the sampler for tau + 1 steps reproduces it)."""
    ids, mask = prompts
    model = TINY(char_tok)
    s = MaskedDiffusionSampler(char_tok, gen_length=8, block_length=8, mode="threshold")
    ro = s.generate(model, ids, mask, knob=0.6)
    tau = torch.tensor([0, 1, 2]).clamp(max=ro.nfe - 1)
    assign = cut_assignment(ro.decode_step, torch.ones_like(ro.decode_step), tau)
    comp = ro.completion_ids
    state = torch.where(assign < 1, comp, torch.full_like(comp, char_tok.mask_token_id))
    for b in range(3):
        revealed = (ro.decode_step[b] <= tau[b]).tolist()
        assert [t != char_tok.mask_token_id for t in state[b].tolist()] == revealed


def test_module_redraws_the_cut_for_every_inner_update(char_tok, prompts):
    ids, mask = prompts
    m = make(char_tok, sampler={"gen_length": 8, "block_length": 8}, cut="uniform")
    m.configure_model()
    ro = m.sampler.generate(m.policy, ids.repeat(8, 1), mask.repeat(8, 1), knob=1.0)  # NFE 8 per row
    torch.manual_seed(0)
    draws = [m.assignment(ro, i, None) for i in range(4)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])  # a fresh tau per update
    mid = make(char_tok, sampler={"gen_length": 8, "block_length": 8}, cut="midpoint")
    mid.configure_model()
    assert torch.equal(mid.assignment(ro, 0, None), mid.assignment(ro, 3, None))
    keyed = [m.assignment(ro, 2, torch.arange(24)) for _ in range(2)]
    assert torch.equal(*keyed)


# ---- 2. the loss covers the completion up to and including the first EOS ------------------------
def _rollout(char_tok, tail: str) -> DiffusionRollout:
    """A hand-made rollout ``"7<eos>" + tail`` decoded left to right (one token per step)."""
    prompt = torch.tensor([[1] + char_tok.convert_tokens_to_ids(list("3+4="))] * 2)
    comp = torch.tensor(
        [char_tok.convert_tokens_to_ids(["7"]) + [char_tok.eos_token_id] + char_tok.convert_tokens_to_ids(list(tail))]
        * 2
    )
    L = comp.shape[1]
    return DiffusionRollout(
        sequences=torch.cat([prompt, comp], 1),
        attention_mask=torch.ones(2, prompt.shape[1] + L, dtype=torch.long),
        prompt_len=prompt.shape[1],
        decode_step=torch.arange(L).repeat(2, 1),
        behaviour_logps=torch.zeros(2, L),
        nfe=torch.full((2,), L),
        action_mask=completion_mask_from_ids(comp, char_tok.eos_token_id, pad_id=None),
        texts=["7", "7"],
    )


@pytest.mark.parametrize("num_stages, cut", [(1, "midpoint"), (2, "midpoint"), (2, "uniform")])
def test_tokens_after_the_first_eos_change_neither_loss_nor_gradient(char_tok, num_stages, cut):
    m = make(char_tok, sampler={"gen_length": 6, "block_length": 6}, num_stages=num_stages, cut=cut, kl_coef=0.1)
    m.configure_model()
    adv = torch.tensor([1.0, -0.5])
    out = []
    for tail in ("1234", "9999"):
        ro = _rollout(char_tok, tail)
        assert ro.action_mask.tolist() == [[1, 1, 0, 0, 0, 0]] * 2
        torch.manual_seed(0)
        assign = m.assignment(ro, 0, None)
        # the post-EOS tokens are decoded after every kept token, so they are never in a kept token's state
        with torch.no_grad():
            old = staged_logps(m.policy, ro, assign, mask_id=m.mask_id) - 0.1  # ratio != 1: a non-trivial loss
            ref = old + 0.2
        m.policy.zero_grad()
        draw = SurrogateDraw(assign, old, LossOutput(torch.ones_like(old), {}), ref)
        loss = m.policy_loss(ro, draw, adv).loss
        loss.backward()
        grads = [p.grad.clone() for p in m.policy.parameters() if p.grad is not None]
        out.append((loss.detach(), grads, old))
    (l1, g1, o1), (l2, g2, o2) = out
    assert not torch.allclose(o1[:, 2:], o2[:, 2:])  # the post-EOS tokens do score differently ...
    torch.testing.assert_close(l1, l2)  # ... but the loss and its gradient ignore them
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


# ---- 3. importance weights at any temperature; the exact trajectory likelihood --------------------
@pytest.mark.parametrize("temperature", [0.0, 0.9, 1.3])
def test_rescoring_the_trajectory_gives_ratio_one_at_any_temperature(char_tok, prompts, temperature):
    """Rows with *different* NFEs: the exact staged likelihood (stage = decoding step) reproduces the
    recorded behaviour log-probs for every token, so the IS ratio is 1, also when sampling at T=0.9."""
    ids, mask = prompts
    model = TINY(char_tok)
    s = MaskedDiffusionSampler(char_tok, gen_length=8, block_length=4, mode="threshold", temperature=temperature)
    ro = s.generate(model, ids, mask, knob=torch.tensor([0.0, 1.0, 0.05]), generator=torch.Generator().manual_seed(3))
    assert len(set(ro.nfe.tolist())) > 1, ro.nfe  # the case the old test skipped
    assign = trajectory_assignment(ro.decode_step, torch.ones_like(ro.decode_step))
    got = staged_logps(model, ro, assign, mask_id=char_tok.mask_token_id)
    torch.testing.assert_close(got, ro.behaviour_logps, atol=2e-5, rtol=1e-5)
    r = importance_ratio(got, ro.behaviour_logps, torch.ones_like(got)).loss
    torch.testing.assert_close(r, torch.ones_like(r), atol=1e-4, rtol=1e-4)


def test_batched_surrogate_scoring_equals_one_forward_per_stage(char_tok, prompts):
    ids, mask = prompts
    model = TINY(char_tok)
    ro = MaskedDiffusionSampler(char_tok, gen_length=8, block_length=8, mode="threshold").generate(
        model, ids, mask, knob=0.7
    )
    assign = trajectory_assignment(ro.decode_step, torch.ones_like(ro.decode_step))
    S, comp, P = int(assign.max()) + 1, ro.completion_ids, ro.prompt_len
    per_stage = []
    for k in range(S):  # the old path: S forwards one after another
        state = torch.where(assign < k, comp, torch.full_like(comp, char_tok.mask_token_id))
        logits = masked_lm_logits(model, torch.cat([ids, state], 1), ro.attention_mask)[:, P:].float()
        logits[..., char_tok.mask_token_id] = float("-inf")
        per_stage.append(torch.log_softmax(logits, -1).gather(-1, comp[..., None]).squeeze(-1))
    want = staged_token_logps(torch.stack(per_stage), assign)
    c = Counter(model)
    torch.testing.assert_close(
        staged_logps(model, ro, assign, mask_id=char_tok.mask_token_id), want, atol=1e-5, rtol=1e-5
    )
    assert c.n == 1  # all S * N rows in one forward
    torch.testing.assert_close(
        staged_logps(model, ro, assign, mask_id=char_tok.mask_token_id, max_rows=2), want, atol=1e-5, rtol=1e-5
    )
    assert c.n == 1 + -(-S * 3 // 2)


# ---- 4. the entropy-bounded sampler -------------------------------------------------------------
def test_entropy_bounded_rule_by_hand():
    # per-position distributions over 3 tokens with known entropies
    def dist(p):
        return torch.tensor(p).log()

    a, b, c = [0.98, 0.01, 0.01], [0.4, 0.3, 0.3], [0.9, 0.05, 0.05]
    h = [float(-(torch.tensor(x) * torch.tensor(x).log()).sum()) for x in (a, b, c)]  # 0.112, 1.089, 0.394
    logp = torch.stack([dist(a), dist(b), dist(c), dist(a)])[None].repeat(3, 1, 1)
    masked = torch.tensor([[True, True, True, False]] * 3)
    # sorted by entropy: a (0.112), c (0.394), b (1.089); sum_U H - max_U H = sum of all but the last
    gamma = torch.tensor([0.0, h[0] + 1e-4, h[0] + h[2] + 1e-4])
    sel = entropy_bounded_select(logp, masked, gamma)
    assert sel.tolist() == [[True, False, False, False], [True, False, True, False], [True, True, True, False]]


@pytest.mark.parametrize("gamma, blocks", [(0.0, None), (1e6, 2)])
def test_entropy_bounded_extremes_and_exact_nfe(char_tok, prompts, gamma, blocks):
    ids, mask = prompts
    model = TINY(char_tok)
    s = MaskedDiffusionSampler(char_tok, gen_length=8, block_length=4, mode="entropy_bounded")
    c = Counter(model)
    ro = s.generate(model, ids, mask, knob=gamma)
    # gamma = 0: one token per step (no entropy is exactly 0); a huge gamma: one step per block
    assert ro.nfe.tolist() == [blocks or 8] * 3
    assert c.n == int(ro.nfe.max())


def test_entropy_bounded_per_row_nfe_is_exact(char_tok, prompts):
    ids, mask = prompts
    model = TINY(char_tok)
    s = MaskedDiffusionSampler(char_tok, gen_length=8, block_length=4, mode="entropy_bounded", temperature=1.0)
    c = Counter(model)
    ro = s.generate(model, ids, mask, knob=torch.tensor([0.0, 2.0, 5.0]), generator=torch.Generator().manual_seed(0))
    for b in range(3):  # NFE = number of distinct steps of the row (each step unmasks >= 1 token)
        assert int(ro.nfe[b]) == len(set(ro.decode_step[b].tolist()))
    per_block = [max(len(set(ro.decode_step[b, k * 4 : (k + 1) * 4].tolist())) for b in range(3)) for k in range(2)]
    assert c.n == sum(per_block)  # forwards run only while some row still has masks in the block
    assert ro.nfe[0] == 8 and ro.nfe[2] <= ro.nfe[0]


def test_eb_module_config_and_knob_ranges(char_tok):
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["module=diffpo_eb"])
    assert cfg.module.sampler.mode == "entropy_bounded" and max(cfg.module.controller.grid) > 1
    m = make(
        char_tok,
        sampler={"gen_length": 4, "block_length": 4, "mode": "entropy_bounded"},
        controller={"grid": [0.0, 0.5, 2.0]},
        knobs=[0.0, 3.0],
    )
    assert m.sampler.mode == "entropy_bounded"
    with pytest.raises(ValueError, match="confidence thresholds in \\[0, 1\\]"):
        make(char_tok, controller={"grid": [0.5, 2.0]})
    with pytest.raises(ValueError, match="gamma >= 0"):
        make(char_tok, sampler={"gen_length": 4, "block_length": 4, "mode": "entropy_bounded"}, knobs=[-1.0])
    with pytest.raises(ValueError, match="no per-row knob"):
        make(char_tok, sampler={"gen_length": 4, "block_length": 4, "mode": "low_confidence"})


# ---- 5. the controller: features from the first decoding forward, PPO-clipped updates ------------
def test_controller_costs_no_extra_forward(char_tok, prompts):
    """The controller's decoding: the forwards are exactly the NFEs (the largest row's, one block); the
    controller reads the first decoding forward's prompt states instead of running its own pass."""
    ids, mask = prompts
    m = make(char_tok, controller={"grid": [0.0, 0.5, 1.0]})
    m.configure_model()
    c = Counter(m.policy)
    ro = m.eval_sampler.generate(m.policy, ids, mask, knob=m.knob(greedy=True))
    assert c.n == int(ro.nfe.max())
    H = m.policy.config.hidden_size
    assert ro.first_hidden.shape == (*ids.shape, 2 * H)  # embeddings and last layer (features=embed_last)
    with torch.no_grad():  # the recorded knob is the controller's greedy choice on those states
        want = m.controller.grid[m.controller(ro.first_hidden, mask).argmax(-1)]
        hidden = m.policy(input_ids=ro.sequences, attention_mask=ro.attention_mask, output_hidden_states=True)
    torch.testing.assert_close(ro.knobs, want)
    P = ids.shape[1]
    torch.testing.assert_close(hidden.hidden_states[0][:, :P], ro.first_hidden[..., :H])  # embeddings: any pass
    assert not torch.allclose(
        hidden.hidden_states[-1][:, :P], ro.first_hidden[..., H:]
    )  # last layer: the *first* pass


def test_training_step_logs_controller_clip_and_eos_length(char_tok, tmp_path):
    from tests.modules.test_diffpo_module import dm, trainer

    m = make(char_tok, inner_updates=3, cut="uniform")
    tr = trainer(tmp_path, max_steps=3, limit_val_batches=0, log_every_n_steps=1)
    tr.fit(m, datamodule=dm(char_tok))
    logged = tr.callback_metrics
    assert 0.0 <= float(logged["train/controller/clip_frac"]) <= 1.0
    assert 1.0 <= float(logged["train/rollout/length"]) <= 4.0


# ---- 6. the paper's setting as a config ---------------------------------------------------------
def test_llada_experiment_instantiates_and_steps_with_a_tiny_stand_in(char_tok, tmp_path):
    """experiment=diffpo_llada_gsm8k with the model swapped for a tiny masked LM saved to a folder whose
    tokenizer declares no mask token (as LLaDA's): model.mask_token_id supplies it; LoRA r=128,
    the paper's hyperparameters and d1's low-confidence evaluation all instantiate, and one step trains."""
    from omegaconf import open_dict

    from src.train import build
    from tests.conftest import compose_cfg

    folder = tmp_path / "stand_in"
    TINY(char_tok).save_pretrained(folder)
    tok = copy.deepcopy(char_tok)
    mask_id = char_tok.mask_token_id
    tok.mask_token = None
    tok.save_pretrained(folder)
    rows = [
        {"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
        for a in range(6)
        for b in range(6)
    ]
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = compose_cfg(
        [
            "experiment=diffpo_llada_gsm8k",
            f"model.name_or_path={folder}",
            "trainer=default",
            f"data.path={data}",
            "data.chat=false",
            "model.policy.dtype=float32",
            "model.policy.trust_remote_code=false",
            "model.policy.gradient_checkpointing=false",
            "model.policy.lora.target_modules=[Wqkv,Wo]",
            "module.sampler.gen_length=8",
            "module.sampler.block_length=4",
            "module.eval_sampler.gen_length=8",
            "module.eval_sampler.block_length=4",
            "module.eval_sampler.steps_per_block=2",
            "module.inner_updates=2",
            "module.score_max_rows=null",
            "data.global_batch_size=2",
            "data.micro_batch_size=2",
            "trainer.max_steps=2",
            "trainer.val_check_interval=1",
            "trainer.enable_progress_bar=false",
            "+trainer.limit_val_batches=1",
            "data.eval_batch_size=4",
            "logger=csv",
            "callbacks=none",
        ],
        tmp_path=tmp_path,
    )
    hp = cfg.module
    assert (hp.sampler.temperature, hp.group_size, hp.inner_updates, hp.clip_eps, hp.kl_coef) == (0.9, 6, 2, 0.5, 0.04)
    assert hp.optimizer.lr == 3e-6 and cfg.model.policy.lora.r == 128 and cfg.model.mask_token_id == 126336
    assert cfg.model.family == "llada"
    with open_dict(cfg):
        cfg.model.mask_token_id = mask_id  # the stand-in's [MASK] (LLaDA's is 126336)
        cfg.module.group_size = 2
    objs = build(cfg)
    module = objs["module"]
    assert objs["tokenizer"].mask_token_id is None
    assert module.eval_sampler.mode == "low_confidence" and module.eval_sampler.steps_per_block == 2
    objs["trainer"].fit(module, datamodule=objs["datamodule"])
    assert module.mask_id == mask_id and module.policy.config.model_family == "llada"
    assert hasattr(module.policy, "peft_config") and module.policy.peft_config["default"].r == 128
    assert (
        "val/accuracy" in objs["trainer"].callback_metrics
        and "val/pareto/acc@0.9" not in objs["trainer"].callback_metrics
    )


def test_missing_mask_token_is_a_clear_error(char_tok):
    """No mask token in the model's config or its tokenizer: the family says to set model.mask_token_id; the old
    sampler.mask_token_id says where it moved."""
    from src.models.families import mask_token_id

    KW = {"gen_length": 4, "block_length": 4, "mode": "threshold"}
    tok = copy.deepcopy(char_tok)
    tok.mask_token = None
    model = TINY(char_tok)
    assert model.config.mask_token_id == char_tok.mask_token_id  # recorded by the factory
    model.config.mask_token_id = None
    with pytest.raises(ValueError, match="set model.mask_token_id"):
        MaskedDiffusionSampler(tok, **KW).generate(model, torch.tensor([[5, 6]]), torch.ones(1, 2), knob=0.9)
    assert mask_token_id(model, char_tok) == char_tok.mask_token_id  # the tokenizer's
    model.config.mask_token_id = 5
    assert mask_token_id(model, tok) == 5  # the config's (what model.mask_token_id sets)
    with pytest.raises(ValueError, match="moved to the model: set model.mask_token_id"):
        MaskedDiffusionSampler(tok, **KW, mask_token_id=5)
