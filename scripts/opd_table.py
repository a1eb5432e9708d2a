"""Reproduce the README's OPD vs OPD+ table on the offline arithmetic task.

1. SFT a teacher (``experiment=opd_arith_teacher``) and a weaker student
   (``experiment=opd_arith_student``), once, cached under ``.cache/opd_arith``;
2. distil with OPD and OPD+ for several f-divergences and seeds (``experiment=opd_arith``);
3. print held-out pass@1 / pass@4 / reverse KL(student || teacher), mean +/- std.

    .venv/bin/python scripts/opd_table.py [--seeds 3] [--divergences reverse_kl,forward_kl,js]
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

KEYS = ["val/pass@1", "val/pass@4", "val/distill/reverse_kl"]


def _run(overrides: list[str]) -> dict[str, float]:
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose(config_name="train", overrides=[*overrides, "trainer.enable_progress_bar=false", "logger=csv"])
    with tempfile.TemporaryDirectory() as d, open_dict(cfg):
        cfg.paths.output_dir = d
        metrics, _ = run(cfg)
    return metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--divergences", default="reverse_kl,forward_kl,js")
    ap.add_argument("--steps", type=int, default=150)
    a = ap.parse_args()
    logging.disable(logging.WARNING)
    cache = ROOT / ".cache" / "opd_arith"
    for role in ("teacher", "student"):
        if not (cache / role / "config.json").exists():
            m = _run([f"experiment=opd_arith_{role}"])
            print(f"{role}: held-out pass@1 {m['val/pass@1']:.3f}, pass@4 {m['val/pass@4']:.3f}", flush=True)
    init = None
    rows = []
    for div in a.divergences.split(","):
        for est in ("opd", "opd_plus"):
            runs = []
            for seed in range(1, a.seeds + 1):
                m = _run(
                    [
                        "experiment=opd_arith",
                        f"module.divergence={div}",
                        f"module.estimator={est}",
                        f"seed={seed}",
                        f"trainer.max_steps={a.steps}",
                        f"trainer.val_check_interval={a.steps}",
                    ]
                )
                init = init or {k: m[f"init/{k}"] for k in KEYS if f"init/{k}" in m}
                runs.append(m)
                print(div, est, seed, {k: round(m.get(k, float("nan")), 4) for k in KEYS}, flush=True)
            stats = [
                (statistics.mean(r[k] for r in runs), statistics.stdev(r[k] for r in runs) if len(runs) > 1 else 0.0)
                for k in KEYS
            ]
            rows.append((div, est, stats))
    print("\nstudent before distillation:", {k: round(v, 4) for k, v in (init or {}).items()})
    print("| divergence | estimator | " + " | ".join(KEYS) + " |")
    print("|---|---|" + "---|" * len(KEYS))
    for div, est, stats in rows:
        print(f"| {div} | {est} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in stats) + " |")


if __name__ == "__main__":
    main()
