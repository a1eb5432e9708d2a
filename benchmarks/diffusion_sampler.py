"""Masked-diffusion sampler throughput: confidence-threshold decoding at several thresholds vs
low-confidence remasking with fixed steps, same model and prompts, one run.

    python -m benchmarks.diffusion_sampler
"""

from __future__ import annotations

import functools
import time


def main(num_prompts: int = 32, gen_length: int = 32, block_length: int = 8, repeats: int = 3) -> list[dict]:

    from src.datamodules.prompt import PromptDataModule
    from src.datamodules.tasks.math import arithmetic_problems
    from src.models.diffusion_sampler import MaskedDiffusionSampler
    from src.models.tiny import tiny_masked_lm
    from src.models.tokenizer import char_tokenizer

    tok = char_tokenizer()
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
    rows = [{"benchmark": f"MDM sampler, tiny ModernBERT 128x4, {num_prompts} prompts x {gen_length} tokens, blocks of {block_length}",
             "baseline": f"low-confidence, {block_length} steps/block: {b_tps:.0f} tok/s, NFE {b_nfe:.1f}",
             "ours": "-", "memory_ratio": float("nan"), "speed_ratio": float("nan")}]  # fmt: skip
    thr = MaskedDiffusionSampler(tok, gen_length=gen_length, block_length=block_length, mode="threshold")
    for t in (1.0, 0.9, 0.7, 0.5, 0.0):
        tps, nfe, _ = bench(thr, threshold=t)
        rows.append({"benchmark": f"  confidence threshold {t}", "baseline": "(same baseline)",
                     "ours": f"{tps:.0f} tok/s, NFE {nfe:.1f}", "memory_ratio": float("nan"), "speed_ratio": tps / b_tps})  # fmt: skip
    return rows


if __name__ == "__main__":
    for r in main():
        print(r)
