"""Masked-diffusion sampler throughput: confidence-threshold decoding at several thresholds vs
low-confidence remasking with fixed steps, same model and prompts, one run.

    python -m benchmarks.diffusion_sampler
"""

from __future__ import annotations

import functools
import time


def main(num_prompts: int = 32, gen_length: int = 32, block_length: int = 8, repeats: int = 3) -> list[dict]:
    """Uses the SFT'd masked model of ``experiment=diffpo_arith_sft`` when it is cached (a random
    model is never confident, so every threshold would decode one token per step); then the
    completion is 8 tokens in one block, as in training."""

    from pathlib import Path

    from src.datamodules.prompt import PromptDataModule
    from src.datamodules.tasks.math import arithmetic_problems
    from src.models.diffusion_sampler import MaskedDiffusionSampler
    from src.models.tiny import tiny_masked_lm
    from src.models.tokenizer import char_tokenizer

    sft = Path(__file__).resolve().parents[1] / ".cache" / "diffpo_arith" / "sft"
    if (sft / "config.json").exists():
        from src.models.hf import load_masked_lm
        from src.models.tokenizer import load_tokenizer

        tok, model, what = load_tokenizer(str(sft)), load_masked_lm(name_or_path=str(sft)), "SFT'd (diffpo_arith_sft)"
        gen_length = block_length = 8
    else:
        tok, what = char_tokenizer(), "random-init"
        model = tiny_masked_lm(tok, hidden_size=128, num_layers=4, num_heads=4)
    dm = PromptDataModule(tokenizer=tok, batch_size=num_prompts,
                          generator=functools.partial(arithmetic_problems, num_examples=200))  # fmt: skip
    dm.setup()
    b = next(iter(dm.train_dataloader()))

    def bench(sampler, **kw):
        sampler.generate(model, b["prompt_ids"], b["prompt_mask"], **kw)  # warm-up
        ts, nfe = [], None
        for _ in range(repeats):
            t0 = time.perf_counter()
            ro = sampler.generate(model, b["prompt_ids"], b["prompt_mask"], **kw)
            ts.append(time.perf_counter() - t0)
            nfe = ro.nfe.float().mean().item()
        t = sorted(ts)[len(ts) // 2]
        return num_prompts * gen_length / t, nfe, t

    base = MaskedDiffusionSampler(tok, gen_length=gen_length, block_length=block_length, mode="low_confidence",
                                  steps_per_block=block_length)  # fmt: skip
    b_tps, b_nfe, _ = bench(base)
    rows = [{"benchmark": f"MDM sampler, {what} tiny ModernBERT 128x4, {num_prompts} prompts x {gen_length} tokens, blocks of {block_length}",
             "baseline": f"low-confidence, {block_length} steps/block: {b_tps:.0f} tok/s, NFE {b_nfe:.1f}",
             "ours": "-", "memory_ratio": float("nan"), "speed_ratio": float("nan")}]  # fmt: skip
    thr = MaskedDiffusionSampler(tok, gen_length=gen_length, block_length=block_length, mode="threshold")
    for t in (1.0, 0.9, 0.7, 0.5, 0.0):
        tps, nfe, _ = bench(thr, threshold=t)
        rows.append({"benchmark": f"  confidence threshold {t}", "baseline": "(same baseline)",
                     "ours": f"{tps:.0f} tok/s, NFE {nfe:.1f}", "memory_ratio": float("nan"), "speed_ratio": tps / b_tps})  # fmt: skip
    eb = MaskedDiffusionSampler(tok, gen_length=gen_length, block_length=block_length, mode="entropy_bounded")
    for g in (0.0, 0.1, 0.5, 2.0):
        tps, nfe, _ = bench(eb, threshold=g)
        rows.append({"benchmark": f"  entropy-bounded gamma {g}", "baseline": "(same baseline)",
                     "ours": f"{tps:.0f} tok/s, NFE {nfe:.1f}", "memory_ratio": float("nan"), "speed_ratio": tps / b_tps})  # fmt: skip
    return rows


if __name__ == "__main__":
    for r in main():
        print(r)
