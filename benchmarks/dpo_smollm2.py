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
sides alternate so machine drift hits all alike; medians over ``repeats``.

    python -m benchmarks.dpo_smollm2
"""

from __future__ import annotations

import functools
import json
import random
import statistics
from pathlib import Path

from benchmarks.common import case_cli, peak_rss_mb, rss_mb, run_case
from benchmarks.mallowspo_vs_trl import fit_timed, trl_timed

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


def _model(tok):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        **ARCH, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id
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
    from src.datamodules.preference import PreferenceDataModule

    bs = SETTINGS[setting]["batch_size"]
    rows = _pairs(tok, setting, bs * (steps + 2))
    return PreferenceDataModule(
        tokenizer=tok,
        batch_size=bs,
        generator=lambda seed: rows,
        val_fraction=0.01,
        max_length=2048,
        max_prompt_length=1024,
    )


def _our_order(tok, setting: str, steps: int) -> list[dict[str, str]]:
    """The pairs in the order our training loop draws them (its seeded split and shuffle, epoch 0), so TRL
    can be fed exactly the same batches in the same order (it shuffles with a seed of its own otherwise)."""
    from src.datamodules.base import ResumableSampler

    dm = _datamodule(tok, setting, steps)
    dm.setup("fit")
    order = list(ResumableSampler(dm.train_set, num_replicas=1, rank=0, seed=dm.seed))
    return [{k: dm.train_set[i][k] for k in ("prompt", "chosen", "rejected")} for i in order]


def _ours(setting: str, steps: int, warmup: int, fused: bool) -> dict:
    import torch

    from src.modules.mallowspo import MallowsPOModule

    torch.manual_seed(0)
    tok = _tokenizer()
    base = rss_mb()
    dm = _datamodule(tok, setting, steps)
    m = MallowsPOModule(
        model=lambda t: _model(t),
        tokenizer=tok,
        variant="dpo",
        beta=0.1,
        dispersion={"source": "none", "scale": 1.0},
        fused_logprobs=fused,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-5),
    )
    return {"steps_per_s": fit_timed(m, dm, steps, warmup), "peak_extra_mb": peak_rss_mb() - base}


def _trl(setting: str, steps: int, warmup: int, compact: bool = False) -> dict:
    """TRL ``DPOTrainer`` on our batches in our order. ``compact``: TRL's LM head scores only the completion
    positions, as it does on CUDA/XPU (TRL 1.16 decides that by ``_use_triton(device)``, so on CPU it scores
    every position of every row, prompt and padding included: a CPU artefact, kept as its own row)."""
    import torch
    from datasets import Dataset

    if compact:
        import trl.trainer.utils as trl_utils

        trl_utils._use_triton = lambda device: True  # the compact selection only; kernels keep their own check
    torch.manual_seed(0)
    tok = _tokenizer()
    base = rss_mb()
    bs = SETTINGS[setting]["batch_size"]
    ds = Dataset.from_list(_our_order(tok, setting, steps))
    rate = trl_timed(
        _model(tok),
        _model(tok),
        ds,
        tok,
        batch_size=bs,
        steps=steps,
        warmup=warmup,
        max_length=2048,
        lr=1e-5,
        grad_ckpt=False,
        in_order=True,
    )
    return {"steps_per_s": rate, "peak_extra_mb": peak_rss_mb() - base}


def _median(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def _row(label: str, base_label: str, base: dict, ours: dict) -> dict:
    return {
        "benchmark": label,
        "baseline": f"{base_label}: {base['steps_per_s']:.3f} steps/s, {base['peak_extra_mb']:.0f} MB",
        "ours": f"{ours['steps_per_s']:.3f} steps/s, {ours['peak_extra_mb']:.0f} MB",
        "memory_ratio": base["peak_extra_mb"] / max(ours["peak_extra_mb"], 1e-9),
        "speed_ratio": ours["steps_per_s"] / base["steps_per_s"],
    }


def main(steps: int = 4, warmup: int = 1, repeats: int = 1) -> list[dict]:
    rows = []
    for setting in ("t1024", "hh"):
        kw = {"setting": setting, "steps": steps, "warmup": warmup}
        fused, plain, trl, trl_c = [], [], [], []
        for _ in range(repeats):  # interleaved
            fused.append(run_case("dpo_smollm2", "ours", **kw, fused=True))
            plain.append(run_case("dpo_smollm2", "ours", **kw, fused=False))
            trl_c.append(run_case("dpo_smollm2", "trl", **kw, compact=True))
            trl.append(run_case("dpo_smollm2", "trl", **kw))
        f, p, t, tc = _median(fused), _median(plain), _median(trl), _median(trl_c)
        what = (
            "T=1024 (prompt 768, replies 256), 1 pair/step"
            if setting == "t1024"
            else "HH-RLHF harmless length distribution (prompt 134, replies 38/52 tokens on average), 4 pairs/step"
        )
        head = f"DPO train step, SmolLM2-135M-shaped (4 of 30 layers, V=49152, tied), CPU fp32, {what}, median of {repeats}"
        rows.append(_row(f"{head}: fused vs today's path (fused_logprobs=false)", "ours, fused_logprobs=false", p, f))
        rows.append(
            _row(
                "  same setting: fused vs TRL DPOTrainer scoring completion positions only (its CUDA path; the fair baseline)",
                "TRL, completion positions",
                tc,
                f,
            )
        )
        rows.append(
            _row(
                "  same setting: fused vs TRL DPOTrainer as it runs on CPU (every position scored: a CPU artefact)",
                "TRL on CPU",
                t,
                f,
            )
        )
    return rows


if __name__ == "__main__":
    case_cli({"ours": _ours, "trl": _trl}, main)
