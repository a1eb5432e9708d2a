"""What Fast-dLLM's approximate key/value cache (``sampler.cache=prefix|dual``) costs in accuracy,
measured on the SFT'd masked models of ``experiment=diffpo_arith_sft`` (held-out split).

    .venv/bin/python scripts/dllm_cache_accuracy.py --models .cache/diffpo_arith/sft \
        .cache/diffpo_arith/sft_seed1 .cache/diffpo_arith/sft_seed2

Each model (one per SFT seed) greedily decodes the whole held-out split of the arithmetic task (the
``data.seed=1234`` split every DiFFPO experiment uses; the cache was tuned on nothing) with every
combination of block length (completion 8), decoding rule (confidence thresholds 0.5 and 0.9;
low-confidence remasking at one token a step, the most steps and so the most cached forwards) and
cache mode. Per cell: accuracy, mean NFE, and how often the
cached completion is identical to the uncached one. The table shows mean +- std over the models.
Raw rows go to ``--out`` (JSONL; ``--resume`` rebuilds the table from it without decoding).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

import src.utils.resolvers  # noqa: E402,F401
from src.datamodules.tasks.math import math_reward  # noqa: E402
from src.experiments import compose_run, stage_model  # noqa: E402
from src.models.hf import load_masked_lm  # noqa: E402
from src.models.tokenizer import load_tokenizer  # noqa: E402
from src.modules.rl_common import score_texts  # noqa: E402
from src.rollout.diffusion_sampler import MaskedDiffusionSampler  # noqa: E402
from src.rollout.dllm_cache import CACHE_MODES  # noqa: E402

GEN = 8
DECODERS = [("threshold", 0.5), ("threshold", 0.9), ("low_confidence", None)]  # low-confidence: 1 token a step


def held_out(tok, limit: int | None):
    cfg = compose_run(["experiment=diffpo_arith_sft", "data.eval_batch_size=256"], output_dir="unused")
    dm = instantiate(cfg.data, tokenizer=tok)
    dm.setup()
    batches = list(dm.val_dataloader())
    if limit is not None:  # keep the first `limit` prompts
        out, n = [], 0
        for b in batches:
            k = min(limit - n, len(b["answer"]))
            if k <= 0:
                break
            out.append(
                {"prompt_ids": b["prompt_ids"][:k], "prompt_mask": b["prompt_mask"][:k], "answer": b["answer"][:k]}
            )
            n += k
        batches = out
    return batches


def decode_all(path: str, blocks: list[int], limit: int | None) -> list[dict]:
    tok, model = load_tokenizer(path), load_masked_lm(name_or_path=path).eval()
    batches = held_out(tok, limit)
    rows = []
    for bl in blocks:
        for mode, thr in DECODERS:
            texts = {}
            for cache in CACHE_MODES:
                s = MaskedDiffusionSampler(
                    tok, gen_length=GEN, block_length=bl, mode=mode, cache=cache, steps_per_block=bl
                )
                acc, nfe, outs = [], [], []
                for b in batches:
                    ro = s.generate(model, b["prompt_ids"], b["prompt_mask"], knob=thr)
                    acc += score_texts(math_reward, ro.texts, b["answer"], 1, "cpu").flatten().tolist()
                    nfe += ro.nfe.tolist()
                    outs += ro.completion_ids.tolist()
                texts[cache] = outs
                same = sum(a == b for a, b in zip(outs, texts["none"], strict=True)) / len(outs)
                rows.append(
                    {
                        "model": path,
                        "block": bl,
                        "mode": mode,
                        "threshold": thr,
                        "cache": cache,
                        "n": len(acc),
                        "accuracy": sum(acc) / len(acc),
                        "nfe": sum(nfe) / len(nfe),
                        "same_as_none": same,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    def ms(vals):
        return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else f"{vals[0]:.3f}"

    keys = sorted(
        {(r["block"], r["mode"], r["threshold"] if r["threshold"] is not None else -1) for r in rows},
        key=lambda k: (-k[0], k[1] != "threshold", k[2]),
    )
    models = sorted({r["model"] for r in rows})
    out = [
        f"{len(models)} models (SFT seeds), {rows[0]['n']} held-out prompts each, completion {GEN}; mean ± std over models",
        "",
        "| block | decoding | cache | accuracy | NFE | identical to no cache |",
        "|---|---|---|---|---|---|",
    ]
    for bl, mode, thr in keys:
        for cache in CACHE_MODES:
            sel = [
                r
                for r in rows
                if (r["block"], r["mode"], r["threshold"] if r["threshold"] is not None else -1, r["cache"])
                == (bl, mode, thr, cache)
            ]
            dec = f"threshold {thr}" if mode == "threshold" else "low-confidence, 1 token a step"
            out.append(
                f"| {bl} | {dec} | {cache} | {ms([r['accuracy'] for r in sel])} | {ms([r['nfe'] for r in sel])} "
                f"| {ms([r['same_as_none'] for r in sel])} |"
            )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", help="model folders (default: experiment=diffpo_arith's SFT stage)")
    ap.add_argument("--blocks", nargs="+", type=int, default=[8, 4, 2])
    ap.add_argument("--limit", type=int, default=None, help="first k held-out prompts (default: all)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "dllm_cache_accuracy.jsonl"))
    ap.add_argument("--resume", action="store_true", help="rebuild the table from --out, decoding nothing")
    args = ap.parse_args()
    torch.manual_seed(0)
    if not args.resume:  # default: the SFT stage of experiment=diffpo_arith (trained first if not cached)
        args.models = args.models or [str(stage_model(["experiment=diffpo_arith"]))]
    if args.resume:
        rows = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line.strip()]
    else:
        for m in args.models:
            if not (Path(m) / "config.json").exists():
                sys.exit(
                    f"{m}: no model there; build it with: python train.py experiment=diffpo_arith_sft "
                    f"seed=S model.policy.seed=S export_dir={m}"
                )
        rows = [r for m in args.models for r in decode_all(m, args.blocks, args.limit)]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(table(rows))


if __name__ == "__main__":
    main()
