"""Rollout throughput of the HF backend (``generate`` with the KV cache) on the real SmolLM2-135M-Instruct.

Batch 64 GSM8K prompts (the committed test fixture rows, repeated), chat template, temperature-1
sampling as in OPD+ rollouts, 64 new tokens. Reports completion tokens/s (tokens up to and including
EOS) and generated positions/s. No baseline runs here: a cache-free ``generate`` at this size takes
minutes per step on a CPU. The vLLM backend shares the interface but needs a GPU (untested here).

    python -m benchmarks.rollout_throughput
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(batch: int = 64, max_new_tokens: int = 64, rounds: int = 3) -> list[dict]:
    import torch
    from omegaconf import OmegaConf

    from benchmarks.common import alternating_times, spread
    from src.datamodules.prompt import collate_prompts
    from src.eval import task_records
    from src.models.hf import smollm2_causal_lm, smollm2_tokenizer
    from src.rollout.hf import HFGenerateBackend

    cache = ROOT / ".cache" / "smollm2"
    tok = smollm2_tokenizer(cache_dir=str(cache))
    model = smollm2_causal_lm(tok, cache_dir=str(cache)).eval()
    task = OmegaConf.load(ROOT / "configs" / "task" / "gsm8k.yaml")  # eval.py's GSM8K prompting
    task.path = str(ROOT / "tests" / "fixtures" / "gsm8k_test_sample.jsonl")
    task.prompt_template = "{question}\nGive the final answer after '####'."
    rows = task_records(task, tok)
    rows = [rows[i % len(rows)] for i in range(batch)]
    b = collate_prompts(rows, pad_id=tok.pad_token_id)
    backend = HFGenerateBackend(tok)
    backend.generate(model, b["prompt_ids"][:4], b["prompt_mask"][:4], n=1, max_new_tokens=4)  # warm-up
    tokens = []

    def gen():  # the same sampling seed every round: the same tokens, so the same work
        torch.manual_seed(0)
        ro = backend.generate(
            model, b["prompt_ids"], b["prompt_mask"], n=1, max_new_tokens=max_new_tokens, temperature=1.0
        )
        tokens.append(int(ro.action_mask.sum()))

    dts = alternating_times({"gen": gen}, rounds=rounds, warmup=0)["gen"]  # warmed up above
    what = (
        f"rollout: SmolLM2-135M-Instruct, HF generate + KV cache, batch {batch}, prompt {b['prompt_ids'].shape[1]} "
        f"tokens (left-padded), {max_new_tokens} new, T=1, median [range] of {rounds} runs"
    )
    return [
        {
            "benchmark": what,
            "baseline": "-",
            "ours": f"{spread([t / d for t, d in zip(tokens, dts)])} completion tokens/s "
            f"({spread([batch * max_new_tokens / d for d in dts])} positions/s, {spread(dts, digits=1)} s)",
            "memory_ratio": float("nan"),
            "speed_ratio": float("nan"),
        }
    ]


if __name__ == "__main__":
    for r in main():
        print(r)
