"""Masked-diffusion sampler throughput: confidence-threshold decoding at several thresholds vs
low-confidence remasking with fixed steps, same model and prompts, one run; and at prompt 256 /
completion 256 / block 32: the LM head on the current block only vs on the whole sequence, and
Fast-dLLM's approximate key/value cache (``cache=prefix|dual``).

    python -m benchmarks.diffusion_sampler
"""

from __future__ import annotations

import functools
from pathlib import Path


def main(
    num_prompts: int = 32, gen_length: int = 32, block_length: int = 8, rounds: int = 5, trained: bool = True
) -> list[dict]:
    """Uses the SFT'd masked model of ``experiment=diffpo_arith``'s SFT stage (``trained``; the stage cache
    under ``.cache/stages``, trained first when absent): a random model is never confident, so every
    threshold would decode one token per step. The completion is then 8 tokens in one block, as in training."""
    import statistics

    from benchmarks.common import alternating_times, spread
    from src.datamodules.prompt import PromptDataModule
    from src.datamodules.tasks.math import arithmetic_problems
    from src.models.tiny import tiny_masked_lm
    from src.models.tokenizer import char_tokenizer
    from src.rollout.diffusion_sampler import MaskedDiffusionSampler

    if trained:
        from src.experiments import stage_model
        from src.models.hf import load_masked_lm
        from src.models.tokenizer import load_tokenizer

        sft = stage_model(["experiment=diffpo_arith"])  # its SFT stage: cached, else trained first
        tok, model, what = load_tokenizer(str(sft)), load_masked_lm(name_or_path=str(sft)), "SFT'd (diffpo_arith_sft)"
        gen_length = block_length = 8
    else:
        tok, what = char_tokenizer(), "random-init"
        model = tiny_masked_lm(tok, hidden_size=128, num_layers=4, num_heads=4)
    dm = PromptDataModule(
        tokenizer=tok, batch_size=num_prompts, generator=functools.partial(arithmetic_problems, num_examples=200)
    )
    dm.setup()
    b = next(iter(dm.train_dataloader()))

    base = MaskedDiffusionSampler(
        tok, gen_length=gen_length, block_length=block_length, mode="low_confidence", steps_per_block=block_length
    )
    thr = MaskedDiffusionSampler(tok, gen_length=gen_length, block_length=block_length, mode="threshold")
    eb = MaskedDiffusionSampler(tok, gen_length=gen_length, block_length=block_length, mode="entropy_bounded")
    variants = {"base": (base, {})}
    variants |= {f"  confidence threshold {t}": (thr, {"knob": t}) for t in (1.0, 0.9, 0.7, 0.5, 0.0)}
    variants |= {f"  entropy-bounded gamma {g}": (eb, {"knob": g}) for g in (0.0, 0.1, 0.5, 2.0)}
    nfe = {}

    def run(name, sampler, kw):
        def go():
            ro = sampler.generate(model, b["prompt_ids"], b["prompt_mask"], **kw)
            nfe[name] = ro.nfe.float().mean().item()

        return go

    # every variant once per round, alternating, after a warm-up round
    times = alternating_times({k: run(k, *v) for k, v in variants.items()}, rounds=rounds)
    tok_s = {k: [num_prompts * gen_length / t for t in v] for k, v in times.items()}
    b_tps = statistics.median(tok_s["base"])
    rows = [
        {
            "benchmark": f"MDM sampler, {what} tiny ModernBERT 128x4, {num_prompts} prompts x {gen_length} tokens, blocks "
            f"of {block_length}, tok/s: median [range] of {rounds} alternating rounds",
            "baseline": f"low-confidence, {block_length} steps/block: {spread(tok_s['base'])} tok/s, NFE {nfe['base']:.1f}",
            "ours": "-",
            "memory_ratio": float("nan"),
            "speed_ratio": float("nan"),
        }
    ]
    for name in variants:
        if name != "base":
            rows.append(
                {
                    "benchmark": name,
                    "baseline": "(same baseline)",
                    "ours": f"{spread(tok_s[name])} tok/s, NFE {nfe[name]:.1f}",
                    "memory_ratio": float("nan"),
                    "speed_ratio": statistics.median(tok_s[name]) / b_tps,
                }
            )
    return rows


def long_context(
    num_prompts: int = 2,
    prompt_length: int = 256,
    gen_length: int = 256,
    block_length: int = 32,
    steps_per_block: int = 8,
    rounds: int = 5,
) -> list[dict]:
    """Prompt 256 / completion 256 / block 32 on a ModernBERT-shaped masked LM with a real-size
    vocabulary (the SmolLM2 tokenizer's 49152; 4 layers x 256, random init): the LM head over the
    whole sequence at every step (the old sampler) vs over the current block only (the default),
    then with the block-wise key/value cache (the accuracy it costs is measured by
    ``scripts/dllm_cache_accuracy.py`` on a trained model; a random model's tokens say nothing).
    Low-confidence remasking with 8 steps per block, so both decode 4 tokens a step (NFE 64): a
    random model is never confident, so threshold decoding would take one token per step."""
    import statistics

    import torch
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    from benchmarks.common import alternating_times, spread
    from src.models.hf import smollm2_tokenizer
    from src.rollout.diffusion_sampler import MaskedDiffusionSampler

    tok = smollm2_tokenizer(cache_dir=str(Path(__file__).resolve().parents[1] / ".cache" / "smollm2"))
    V = len(tok)
    cfg = ModernBertConfig(
        vocab_size=V,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        cls_token_id=tok.bos_token_id,
        sep_token_id=tok.eos_token_id,
        global_attn_every_n_layers=1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ModernBertForMaskedLM(cfg).eval()
        model.config.mask_token_id = V - 1  # the benchmark's [MASK]: what model.mask_token_id sets
        ids = torch.randint(1000, V - 1, (num_prompts, prompt_length))
    mask = torch.ones_like(ids)
    res, steps = {}, {}
    variants = [("all", False, "none"), ("block", True, "none"), ("prefix", True, "prefix"), ("dual", True, "dual")]
    for name, only, cache in variants:
        s = MaskedDiffusionSampler(
            tok,
            gen_length=gen_length,
            block_length=block_length,
            mode="low_confidence",
            steps_per_block=steps_per_block,
            block_logits_only=only,
            cache=cache,
        )

        def go(name=name, s=s):
            ro = s.generate(model, ids, mask)
            res[name] = (ro.nfe.float().mean().item(), ro.sequences)

        steps[name] = go
    times = alternating_times(steps, rounds=rounds)  # after a warm-up round, alternating
    tok_s = {k: [num_prompts * gen_length / t for t in v] for k, v in times.items()}
    res = {k: (statistics.median(tok_s[k]), *res[k]) for k in res}
    assert torch.equal(res["block"][2], res["all"][2]), "block-only head changed the decoded tokens"
    b_tps, b_nfe, _ = res["all"]
    what = (
        f"ModernBERT-shaped 256x4 with V={V} (random init), {num_prompts} prompts, prompt {prompt_length} / completion "
        f"{gen_length} / block {block_length}, low-confidence {steps_per_block} steps/block, tok/s: median [range] of "
        f"{rounds} alternating rounds"
    )
    baseline = (
        f"LM head on all {prompt_length + gen_length} positions, no cache: {spread(tok_s['all'], digits=1)} tok/s, "
        f"NFE {b_nfe:.0f}"
    )
    rows = []
    for name, label in [
        ("block", "LM head on the block only (identical tokens)"),
        ("prefix", "+ cache=prefix (approximate)"),
        ("dual", "+ cache=dual (approximate)"),
    ]:
        tps, nfe, seq = res[name]
        same = (seq[:, prompt_length:] == res["block"][2][:, prompt_length:]).float().mean().item()
        extra = "" if name == "block" else f", {same:.0%} of tokens as without cache"
        rows.append(
            {
                "benchmark": f"MDM sampler, {what}" if name == "block" else f"  {label}",
                "baseline": baseline if name == "block" else "(same baseline)",
                "ours": f"{label if name == 'block' else name}: {spread(tok_s[name], digits=1)} tok/s, NFE {nfe:.0f}{extra}",
                "memory_ratio": float("nan"),
                "speed_ratio": tps / b_tps,
            }
        )
    return rows


def all_rows() -> list[dict]:
    return main() + long_context()


if __name__ == "__main__":
    for r in all_rows():
        print(r)
