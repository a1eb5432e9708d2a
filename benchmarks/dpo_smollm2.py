"""DPO training step on a SmolLM2-135M-shaped model: our fused path vs our plain path vs TRL.

The model is SmolLM2-135M's architecture (Llama, hidden 576, 9 heads / 3 KV heads, MLP 1536, tied
embeddings, the real 49152-token vocabulary and tokenizer) with 4 of its 30 layers, randomly
initialised (seeded): the LM head is then as large as in the real model while the backbone is
small enough for a CPU, which is where the logits' share of memory is largest.

Two length settings, the same text on every side (random one-token words, so token counts are exact):

* ``hh``: (prompt, chosen, rejected) token lengths resampled from 256 real HH-RLHF harmless pairs
  (``benchmarks/hh_lengths.json``: prompt mean 134, replies 38 / 52 tokens), 4 pairs a step;
* ``t1024``: prompt 768, replies 256 each (every TRL row is 1024 tokens), 1 pair a step.

Sides: TRL ``DPOTrainer`` (fp32, no gradient checkpointing, its own reference copy), fed the same pairs in
the same order as ours and timed twice: scoring only completion positions (what it does on CUDA: the fair
baseline) and as it runs on CPU (every position scored); our
``MallowsPOModule(variant=dpo)`` with today's defaults (prefix sharing) and ``fused_logprobs``
off (the full-logits path) or on. Each run is its own process (peak RSS growth over the
post-import baseline, so weights, AdamW state and the reference copy count on every side), the
sides alternate so machine drift hits all alike; 5 timed steps after 2 warm-up steps, medians and ranges
over ``repeats`` alternating runs. ``_ours`` / ``_trl`` also take ``device`` and ``layers``: the GPU check
(``benchmarks/gpu_check.py``) runs them on CUDA, where both sides use bf16 autocast.

    python -m benchmarks.dpo_smollm2
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

from benchmarks.common import case_cli, peak_rss_mb, rss_mb, run_case
from benchmarks.mallowspo_vs_trl import (
    datamodule_order,
    fit_timed,
    pairs_datamodule,
    ratio_row,
    trl_completion_only,
    trl_timed,
)

ARCH = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "num_hidden_layers": 4,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "rope_theta": 100000.0,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
}
SETTINGS = {"hh": {"batch_size": 4}, "t1024": {"batch_size": 1}}


def _tokenizer():
    from src.models.hf import smollm2_tokenizer

    return smollm2_tokenizer(cache_dir=str(Path(__file__).resolve().parents[1] / ".cache" / "smollm2"))


def _model(tok, layers: int = ARCH["num_hidden_layers"]):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        **{**ARCH, "num_hidden_layers": layers},
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    cfg._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(cfg)


def _pairs(tok, setting: str, n: int) -> list[dict[str, str]]:
    """``n`` text pairs whose token lengths follow the setting (words that are one token each)."""
    vocab = [t for t, i in tok.get_vocab().items() if t.startswith("Ġ") and t[1:].isalpha() and len(t) > 3 and i > 300]
    words = sorted(vocab)[:2000]
    rng = random.Random(0)
    if setting == "hh":
        triples = json.loads((Path(__file__).with_name("hh_lengths.json")).read_text())["triples"]
        lengths = [triples[i % len(triples)] for i in range(n)]
    else:
        lengths = [(768, 255, 255)] * n  # + EOS on each reply: 1024-token rows

    def text(k: int) -> str:
        return "".join(rng.choice(words) for _ in range(max(1, k))).replace("Ġ", " ")

    return [{"prompt": text(p), "chosen": text(c), "rejected": text(r)} for p, c, r in lengths]


def _datamodule(tok, setting: str, steps: int):
    bs = SETTINGS[setting]["batch_size"]
    rows = _pairs(tok, setting, bs * (steps + 2))
    return pairs_datamodule(tok, rows, batch_size=bs, max_length=2048, max_prompt_length=1024)


def _peak(device: str):
    """Start measuring; returns the reader: peak-RSS growth on CPU, peak CUDA allocation on a GPU (MB)."""
    import torch

    if device == "cuda":
        import gc

        gc.collect()  # the previous side's trainer, model and optimizer state, when run in one process
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        return lambda: (torch.cuda.max_memory_allocated() - base) / 2**20
    base = rss_mb()
    return lambda: peak_rss_mb() - base


def _ours(
    setting: str,
    steps: int,
    warmup: int,
    fused: bool,
    device: str = "cpu",
    layers: int = ARCH["num_hidden_layers"],
) -> dict:
    """Our ``MallowsPOModule(variant=dpo)``; on CUDA in bf16-mixed precision (TRL's default there)."""
    import torch

    from src.modules.mallowspo import MallowsPOModule

    torch.manual_seed(0)
    tok = _tokenizer()
    peak = _peak(device)
    dm = _datamodule(tok, setting, steps)
    m = MallowsPOModule(
        model=lambda t: _model(t, layers),
        tokenizer=tok,
        variant="dpo",
        beta=0.1,
        dispersion={"source": "none", "scale": 1.0},
        fused_logprobs=fused,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-5),
    )
    precision = "bf16-mixed" if device == "cuda" else "32-true"
    rate = fit_timed(m, dm, steps, warmup, device=device, precision=precision)
    return {"steps_per_s": rate, "peak_extra_mb": peak()}


def _trl(
    setting: str,
    steps: int,
    warmup: int,
    compact: bool = False,
    device: str = "cpu",
    layers: int = ARCH["num_hidden_layers"],
) -> dict:
    """TRL ``DPOTrainer`` on our batches in our order. ``compact``: its LM head scores only the completion
    positions, as it does on CUDA/XPU (on CPU it scores every position: a CPU artefact, kept as its own row).
    On CUDA: bf16 autocast (``bf16=True``, its default), as ours."""
    import torch
    from datasets import Dataset

    if compact:
        trl_completion_only()
    torch.manual_seed(0)
    tok = _tokenizer()
    peak = _peak(device)
    ds = Dataset.from_list(datamodule_order(_datamodule(tok, setting, steps)))
    rate = trl_timed(
        _model(tok, layers),
        _model(tok, layers),
        ds,
        tok,
        batch_size=SETTINGS[setting]["batch_size"],
        steps=steps,
        warmup=warmup,
        max_length=2048,
        lr=1e-5,
        grad_ckpt=False,
        in_order=True,
        device=device,
        bf16=device == "cuda",
    )
    return {"steps_per_s": rate, "peak_extra_mb": peak()}


def main(steps: int = 7, warmup: int = 2, repeats: int = 2) -> list[dict]:
    rows = []
    for setting in ("t1024", "hh"):
        kw = {"setting": setting, "steps": steps, "warmup": warmup}
        fused, plain, trl, trl_c = [], [], [], []
        for _ in range(repeats):  # interleaved
            fused.append(run_case("dpo_smollm2", "ours", **kw, fused=True))
            plain.append(run_case("dpo_smollm2", "ours", **kw, fused=False))
            trl_c.append(run_case("dpo_smollm2", "trl", **kw, compact=True))
            trl.append(run_case("dpo_smollm2", "trl", **kw))
        what = (
            "T=1024 (prompt 768, replies 256), 1 pair/step"
            if setting == "t1024"
            else "HH-RLHF harmless length distribution (prompt 134, replies 38/52 tokens on average), 4 pairs/step"
        )
        head = (
            f"DPO train step, SmolLM2-135M-shaped (4 of 30 layers, V=49152, tied), CPU fp32, {what}, "
            f"{steps - warmup} timed steps after {warmup}, median [range] of {repeats} alternating runs"
        )
        rows += [
            ratio_row(
                f"{head}: fused vs today's path (fused_logprobs=false)", "ours, fused_logprobs=false", plain, fused, 3
            ),
            ratio_row(
                "  same setting: fused vs TRL DPOTrainer scoring completion positions only (its CUDA path; the fair baseline)",
                "TRL, completion positions",
                trl_c,
                fused,
                3,
            ),
            ratio_row(
                "  same setting: fused vs TRL DPOTrainer as it runs on CPU (every position scored: a CPU artefact)",
                "TRL on CPU",
                trl,
                fused,
                3,
            ),
        ]
    return rows


if __name__ == "__main__":
    case_cli({"ours": _ours, "trl": _trl}, main)
