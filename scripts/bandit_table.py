"""Reproduce the README's MallowsPO bandit table: 3 variants x N seeds, mean +/- std.

.venv/bin/python scripts/bandit_table.py [--seeds 3] [--steps 400]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import open_dict  # noqa: E402

import src.utils.resolvers  # noqa: E402,F401
from src.train import run  # noqa: E402

KEYS = [
    "val/bandit/true_reward",
    "val/bandit/top1",
    "val/bandit/kl_ref",
    "val/bandit/true_reward_phi0.1",
    "val/bandit/kl_ref_phi0.1",
    "val/bandit/true_reward_phi0.9",
    "val/bandit/kl_ref_phi0.9",
    "val/rewards/accuracy",
]


def one(variant: str, seed: int, steps: int, beta: float) -> dict[str, float]:
    ov = [
        "experiment=mallowspo_bandit",
        f"module.variant={variant}",
        f"seed={seed}",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
        "trainer.enable_progress_bar=false",
        "logger=csv",
        f"module.beta={beta}",
        "export=false",
    ]
    if variant == "dpo":
        ov.append("module.dispersion.source=none")
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose(config_name="train", overrides=ov)
    with tempfile.TemporaryDirectory() as d, open_dict(cfg):
        cfg.paths.output_dir = d
        metrics, _ = run(cfg)
    return {k: metrics[k] for k in KEYS}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--beta", type=float, default=0.5)
    a = ap.parse_args()
    logging.disable(logging.WARNING)
    rows, all_runs = {}, {}
    for variant in ("dpo", "mallows_theta", "mallows_phi"):
        runs = [one(variant, s, a.steps, a.beta) for s in range(1, a.seeds + 1)]
        all_runs[variant] = runs
        rows[variant] = {
            k: (statistics.mean(r[k] for r in runs), statistics.stdev(r[k] for r in runs) if len(runs) > 1 else 0.0)
            for k in KEYS
        }
    head = "| variant | " + " | ".join(k.replace("val/bandit/", "").replace("val/", "") for k in KEYS) + " |"
    print(head)
    print("|" + "---|" * (len(KEYS) + 1))
    for v, stats in rows.items():
        print(f"| {v} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in stats.values()) + " |")
    # paired by seed (same data, same init): variant - dpo, mean +/- standard error, and wins
    print("\npaired differences vs dpo (same seed): mean ± s.e. [seeds where variant > dpo]")
    print("| variant | " + " | ".join(k.replace("val/bandit/", "").replace("val/", "") for k in KEYS) + " |")
    print("|" + "---|" * (len(KEYS) + 1))
    for v in ("mallows_theta", "mallows_phi"):
        cells = []
        for k in KEYS:
            d = [r[k] - b[k] for r, b in zip(all_runs[v], all_runs["dpo"])]
            se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else 0.0
            cells.append(f"{statistics.mean(d):+.3f} ± {se:.3f} [{sum(x > 0 for x in d)}/{len(d)}]")
        print(f"| {v} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
