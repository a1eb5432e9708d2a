"""MallowsPO-theta, MallowsPO-phi and DPO on real HH-RLHF harmless pairs (README table).

    .venv/bin/python scripts/hh_preference_table.py --path <harmless-base test.jsonl.gz> [--seeds 1 2] [--steps 30]

SmolLM2-135M-Instruct with LoRA (``experiment=mallowspo_hh``), on CPU. One fixed split of the file
(``data.split_seed=0``): every variant and seed trains on pairs from the same training part and is
scored on the same held-out pairs, which nothing was tuned on. Hyperparameters (beta 0.1, lr 5e-4,
LoRA r 16) were set before any run and are the same for every variant.

1. Dispersion statistics of the data: the reference model's normalised predictive entropy Hbar on
   training pairs, the raw ``-log Hbar`` and the calibrated weights ``w(x)`` (``scale=auto``: mean 1),
   with a histogram (``docs/hh_dispersion.png``).
2. Per variant and seed, a training run; held-out preference accuracy and mean implicit-reward
   margin after training. Before training the LoRA policy equals the reference (B = 0), so every
   margin is exactly 0 (accuracy 0.5 with ties counted 1/2); the first run measures this.

Writes ``logs/mallowspo_hh/results.jsonl`` and prints the markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
from omegaconf import open_dict  # noqa: E402

import src.utils.resolvers  # noqa: E402,F401
from src.experiments import compose_run, mean_std  # noqa: E402
from src.train import build, run  # noqa: E402

VARIANTS = ["dpo", "mallows_theta", "mallows_phi"]
OUT = ROOT / "logs" / "mallowspo_hh"


EXTRA: list[str] = []


def _cfg(overrides: list[str], out: str):
    return compose_run(["experiment=mallowspo_hh", *overrides, *EXTRA], output_dir=out)


def quantiles(x: torch.Tensor) -> dict[str, float]:
    q = torch.quantile(x.double(), torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.double)).tolist()
    return {
        "mean": float(x.mean()),
        "std": float(x.std()),
        "p5": q[0],
        "p25": q[1],
        "p50": q[2],
        "p75": q[3],
        "p95": q[4],
    }


@torch.no_grad()
def dispersion_stats(path: str, *, max_pairs: int) -> dict[str, dict[str, float]]:
    """Raw ``-log Hbar`` of the reference on up to ``max_pairs`` training pairs, and ``w = c * (-log Hbar)``
    with ``c = 1 / mean`` (what ``scale=auto`` computes on the training pairs)."""
    with tempfile.TemporaryDirectory() as d:
        objs = build(_cfg([f"data.path={path}", "module.variant=mallows_theta", "module.dispersion.scale=1.0"], d))
    dm, module = objs["datamodule"], objs["module"]
    dm.setup()
    module.configure_model()
    loader = torch.utils.data.DataLoader(dm.train_set, batch_size=dm.eval_batch_size, collate_fn=dm.collate)
    raw = []
    for batch in loader:
        raw.append(module.reference_stats(batch)["w"])
        if sum(len(r) for r in raw) >= max_pairs:
            break
    raw = torch.cat(raw)[:max_pairs].float()
    hbar = torch.exp(-raw)
    w = raw / raw.mean()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.hist(w.numpy(), bins=30, color="tab:blue")
        ax.set_xlabel("w(x) = -c log Hbar(x)  (c: mean 1)")
        ax.set_ylabel("training pairs")
        ax.set_title(f"HH-RLHF harmless, SmolLM2-135M reference ({len(w)} pairs)", fontsize=9)
        fig.tight_layout()
        fig.savefig(ROOT / "docs" / "hh_dispersion.png", dpi=120)
    except ImportError:
        pass
    return {
        "n": len(w),
        "hbar": quantiles(hbar),
        "neg_log_hbar": quantiles(raw),
        "w": quantiles(w),
        "w_max_over_min": float(w.max() / w.min()),
    }


def one(path: str, variant: str, seed: int, steps: int, *, before: bool) -> dict:
    with tempfile.TemporaryDirectory() as d:
        cfg = _cfg(
            [
                f"data.path={path}",
                f"module.variant={variant}",
                f"seed={seed}",
                f"trainer.max_steps={steps}",
                f"validate_before_fit={str(before).lower()}",
            ],
            d,
        )
        with open_dict(cfg):  # validate once, after the last step (the interval counts micro-batches)
            cfg.trainer.val_check_interval = steps * int(cfg.trainer.accumulate_grad_batches)
        t0 = time.perf_counter()
        metrics, _ = run(cfg)
    keep = (
        "val/rewards/accuracy",
        "val/rewards/margin_mean",
        "val/loss",
        "val/dispersion/w_mean",
        "init/val/rewards/accuracy",
        "init/val/rewards/margin_mean",
    )
    return {
        "variant": variant,
        "seed": seed,
        "steps": steps,
        "seconds": time.perf_counter() - t0,
        **{k: metrics[k] for k in keep if k in metrics},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", required=True, help="HH-RLHF harmless-base file (jsonl or jsonl.gz) or folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--dispersion-pairs", type=int, default=256)
    ap.add_argument("--resume", action="store_true", help="keep the runs (and dispersion) already in results.jsonl")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (smoke tests)")
    args = ap.parse_args()
    EXTRA[:] = ["callbacks.model_checkpoint=null", *args.overrides]
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done = [json.loads(line) for line in (OUT / "results.jsonl").read_text().splitlines()] if args.resume else []
    disp = next((d["dispersion"] for d in done if "dispersion" in d), None)
    rows = [d for d in done if "variant" in d and d["steps"] == args.steps]
    if disp is None:
        disp = dispersion_stats(args.path, max_pairs=args.dispersion_pairs)
    print(json.dumps({"dispersion": disp}, indent=1), flush=True)
    with open(OUT / "results.jsonl", "w") as f:
        for d in [{"dispersion": disp}, *rows]:
            f.write(json.dumps(d) + "\n")
        for i, (variant, seed) in enumerate((v, s) for s in args.seeds for v in VARIANTS):
            if any(r["variant"] == variant and r["seed"] == seed for r in rows):
                continue
            r = one(args.path, variant, seed, args.steps, before=i == 0)
            print(json.dumps(r), flush=True)
            f.write(json.dumps(r) + "\n")
            f.flush()
            rows.append(r)
    before = next(r for r in rows if "init/val/rewards/accuracy" in r)
    print(
        f"\nBefore training (measured once; LoRA B = 0 so policy = reference): held-out accuracy "
        f"{before['init/val/rewards/accuracy']:.3f}, margin {before['init/val/rewards/margin_mean']:.4f}\n"
    )
    print("| variant | held-out accuracy | held-out margin (beta * Delta) | held-out loss | seconds / run |")
    print("|---|---|---|---|---|")
    for v in VARIANTS:
        rs = [r for r in rows if r["variant"] == v]
        print(
            f"| {v} | {mean_std([r['val/rewards/accuracy'] for r in rs])} | {mean_std([r['val/rewards/margin_mean'] for r in rs])} "
            f"| {mean_std([r['val/loss'] for r in rs])} | {statistics.mean(r['seconds'] for r in rs):.0f} |"
        )
    w, h = disp["w"], disp["hbar"]
    print(
        f"\nDispersion over {disp['n']} training pairs: Hbar mean {h['mean']:.3f} (p5 {h['p5']:.3f}, p95 {h['p95']:.3f}); "
        f"w(x) p5 {w['p5']:.2f}, p25 {w['p25']:.2f}, median {w['p50']:.2f}, p75 {w['p75']:.2f}, p95 {w['p95']:.2f}, "
        f"std {w['std']:.2f}, max/min {disp['w_max_over_min']:.2f}"
    )
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
