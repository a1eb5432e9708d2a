"""rng=keyed: a row's rollout is a function of its key only, whatever else is in the batch (and
however wide the padded prompts are), for the HF sampler, the masked-diffusion sampler and the
threshold controller; keyed sampling is still sampling from the model's distribution."""

import torch

from src.datamodules.prompt import collate_prompts
from src.models.tiny import tiny_causal_lm, tiny_masked_lm
from src.modules.diffpo.controller import KnobController
from src.rollout.diffusion_sampler import MaskedDiffusionSampler
from src.rollout.hf import HFGenerateBackend, KeyedSampling
from src.utils.keyed_random import row_keys

PROMPTS = ["1+2=", "13+17=", "5+5=", "19+19="]


def _rows(tok):
    return [
        {
            "prompt_ids": tok(p, add_special_tokens=False)["input_ids"],
            "target_ids": [1],
            "prompt": p,
            "answer": "",
            "index": i,
        }
        for i, p in enumerate(PROMPTS)
    ]


def test_hf_keyed_rollouts_do_not_depend_on_the_batch(char_tok):
    model = tiny_causal_lm(char_tok, hidden_size=32, num_layers=1, num_heads=2)
    backend, rows = HFGenerateBackend(char_tok), _rows(char_tok)

    def gen(rs, seed=7):
        b = collate_prompts(rs, pad_id=char_tok.pad_token_id)
        torch.manual_seed(len(rs))  # the global RNG must not matter
        return backend.generate(
            model, b["prompt_ids"], b["prompt_mask"], n=2, max_new_tokens=8, keys=row_keys(seed, 0, b["index"], 2)
        ).texts

    full = gen(rows)
    assert len(set(full)) > 4  # really sampled, not greedy
    assert gen(rows[:2]) + gen(rows[2:]) == full
    assert gen([rows[1], rows[3]]) == [full[2], full[3], full[6], full[7]]  # narrower padding
    assert gen(rows, seed=8) != full


def test_keyed_sampling_follows_the_model_distribution():
    # one step of KeyedSampling over many keys reproduces softmax(z / T) with top-p truncation
    z = torch.tensor([2.0, 1.0, 0.0, -1.0])
    n = 40_000
    proc = KeyedSampling(row_keys(0, 0, torch.arange(n)), temperature=2.0, top_p=0.85, prompt_width=3)
    draws = proc(torch.zeros(n, 5, dtype=torch.long), z.expand(n, 4)).argmax(-1)
    p = torch.softmax(z / 2.0, -1)  # [0.455, 0.276, 0.167, 0.102]: nucleus 0.85 keeps the first three
    p = torch.cat([p[:3] / p[:3].sum(), torch.zeros(1)])
    freq = torch.bincount(draws, minlength=4).float() / n
    assert freq[3] == 0 and ((freq - p).abs() < 4 * (p * (1 - p) / n).sqrt() + 1e-9).all(), (freq, p)


def test_diffusion_sampler_and_controller_keyed(char_tok):
    model = tiny_masked_lm(char_tok)
    sampler = MaskedDiffusionSampler(char_tok, gen_length=8, block_length=4, mode="threshold", temperature=1.0)
    ctrl = KnobController(
        model.config.hidden_size, grid=[0.3, 0.6, 0.9], mlp_hidden=64, init_knob=None, features="embed_last"
    )
    rows = _rows(char_tok)

    def gen(rs):
        b = collate_prompts(rs, pad_id=char_tok.pad_token_id)
        keys = row_keys(3, 5, b["index"], 2)
        ids, mask = b["prompt_ids"].repeat_interleave(2, 0), b["prompt_mask"].repeat_interleave(2, 0)
        torch.manual_seed(len(rs))
        picked = {}

        def knob(hidden_states, m):  # the controller reads the first decoding forward (as in DiFFPOModule)
            feats = ctrl.featurize(hidden_states)
            thr, picked["idx"], _ = ctrl.sample(feats, m, keys=keys)
            return thr, feats

        ro = sampler.generate(model, ids, mask, knob=knob, keys=keys)
        return ro.texts, picked["idx"].tolist(), ro.nfe.tolist()

    full = gen(rows)
    halves = [a + b for a, b in zip(gen(rows[:2]), gen(rows[2:]))]
    assert halves[0] == full[0] and halves[1] == full[1] and halves[2] == full[2]
    assert len(set(full[1])) > 1  # the controller really samples
