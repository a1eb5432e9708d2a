"""Reproduce the README's DiFFPO result: SFT once (cached), then DiFFPO over seeds; print the
accuracy-vs-NFE points before/after and write ``docs/diffpo_pareto.png``.

    .venv/bin/python scripts/diffpo_table.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
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


def _run(overrides: list[str], out: str) -> dict[str, float]:
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose(config_name="train", overrides=[*overrides, "trainer.enable_progress_bar=false", "logger=csv"])
    with open_dict(cfg):
        cfg.paths.output_dir = out
    return run(cfg)[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args()
    logging.disable(logging.WARNING)
    if not (ROOT / ".cache" / "diffpo_arith" / "sft" / "config.json").exists():
        with tempfile.TemporaryDirectory() as d:
            m = _run(["experiment=diffpo_arith_sft"], d)
        print(f"SFT: accuracy {m['val/accuracy']:.3f} at NFE {m['val/nfe']:.2f}", flush=True)
    finals, inits = [], None
    for seed in range(1, a.seeds + 1):
        with tempfile.TemporaryDirectory() as d:
            _run(["experiment=diffpo_arith", f"seed={seed}"], d)
            rows = [json.loads(x) for x in (Path(d) / "pareto.jsonl").read_text().splitlines()]
        last = max(r["step"] for r in rows)
        inits = inits or [r for r in rows if r["step"] == 0]
        finals.append([r for r in rows if r["step"] == last])
        print(seed, [(r["source"], round(r["threshold"], 2), r["accuracy"], r["nfe"]) for r in finals[-1]], flush=True)

    def agg(points_per_seed, i, key):
        vals = [pts[i][key] for pts in points_per_seed]
        return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    print("| decoding | before: accuracy | before: NFE | after DiFFPO: accuracy | after: NFE |")
    print("|---|---|---|---|---|")
    for i, p in enumerate(inits):
        name = f"fixed threshold {p['threshold']:g}" if p["source"] == "fixed" else "learned controller"
        (am, asd), (nm, nsd) = agg(finals, i, "accuracy"), agg(finals, i, "nfe")
        thr = "" if p["source"] == "fixed" else f" (threshold {agg(finals, i, 'threshold')[0]:.2f}; init 0.9)"
        print(f"| {name}{thr} | {p['accuracy']:.3f} | {p['nfe']:.2f} | {am:.3f} ± {asd:.3f} | {nm:.2f} ± {nsd:.2f} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    fx = [p for p in inits if p["source"] == "fixed"]
    ax.plot([p["nfe"] for p in fx], [p["accuracy"] for p in fx], "o--", color="gray", label="before (fixed thresholds)")
    n = len(fx)
    ax.plot([agg(finals, i, "nfe")[0] for i in range(n)], [agg(finals, i, "accuracy")[0] for i in range(n)], "o-",
            label=f"after DiFFPO (fixed thresholds, mean of {a.seeds} seeds)")  # fmt: skip
    for i, p in enumerate(fx):
        ax.annotate(f"{p['threshold']:g}", (agg(finals, i, "nfe")[0], agg(finals, i, "accuracy")[0]), fontsize=7)
    ax.plot([agg(finals, n, "nfe")[0]], [agg(finals, n, "accuracy")[0]], "r*", markersize=13, label="after: learned controller")
    ax.plot([inits[n]["nfe"]], [inits[n]["accuracy"]], "k*", markersize=10, label="before: controller init (0.9)")
    ax.set_xlabel("mean NFE per completion (8 tokens)")
    ax.set_ylabel("held-out accuracy")
    ax.set_xscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = ROOT / "docs" / "diffpo_pareto.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=110)
    print("wrote", out)


if __name__ == "__main__":
    main()
