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
    from src.pareto import Point, mark_frontier, plot_frontier

    fx = [p for p in inits if p["source"] == "fixed"]
    n = len(fx)
    se = lambda sd: sd / a.seeds**0.5
    pts = [
        Point(x=p["nfe"], y=p["accuracy"], series="before (fixed thresholds)", label=f"{p['threshold']:g}") for p in fx
    ]
    for i in range(n + 1):
        (xm, xsd), (ym, ysd) = agg(finals, i, "nfe"), agg(finals, i, "accuracy")
        series = f"after DiFFPO (fixed thresholds, {a.seeds} seeds, ±s.e.)" if i < n else "after: learned controller"
        pts.append(
            Point(
                x=xm, y=ym, x_se=se(xsd), y_se=se(ysd), series=series, label=f"{fx[i]['threshold']:g}" if i < n else ""
            )
        )
    pts.append(Point(x=inits[n]["nfe"], y=inits[n]["accuracy"], series="before: controller init (0.9)"))
    out = plot_frontier(
        mark_frontier(pts, x_mode="min", y_mode="max"),
        ROOT / "docs" / "diffpo_pareto.png",
        x="mean NFE per completion (8 tokens)",
        y="held-out accuracy",
        logx=True,
        frontier=False,
        styles={
            "before (fixed thresholds)": "o--",
            "after: learned controller": "r*",
            "before: controller init (0.9)": "k*",
        },
    )
    print("wrote", out)


if __name__ == "__main__":
    main()
