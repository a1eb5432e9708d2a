"""MallowsPO bandit: true-reward vs KL(pi||ref) frontier over beta, per variant (the paper's
"accuracy-vs-regularisation trade-off" is a frontier claim; one beta compares different KLs).

    .venv/bin/python scripts/bandit_frontier.py [--seeds 4] [--betas 0.1,0.25,0.5,1,2] [--jsonl runs.jsonl]

Runs are seed-major and appended to ``--jsonl`` as they finish, so an interrupted sweep still has
complete seeds; ``--aggregate-only`` re-reads that file. Prints mean +/- s.e. over the seeds that
completed every (variant, beta) and writes docs/mallowspo_bandit_frontier.png (through ``src.pareto``).

The same sweep as Hydra multirun jobs, with the frontier CSV/PNG (and a W&B summary) written by
``src.pareto`` at the end: ``python train.py -m experiment=mallowspo_bandit hparams_search=mallowspo_beta
seed=1,2,3,4``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from bandit_table import one  # noqa: E402

VARIANTS = ("dpo", "mallows_theta", "mallows_phi")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--betas", default="0.1,0.25,0.5,1,2")
    ap.add_argument("--jsonl", default=str(ROOT / "logs" / "bandit_frontier.jsonl"))
    ap.add_argument("--aggregate-only", action="store_true")
    a = ap.parse_args()
    logging.disable(logging.WARNING)
    betas = [float(b) for b in a.betas.split(",")]
    path = Path(a.jsonl)
    if not a.aggregate_only:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        for seed in range(1, a.seeds + 1):  # seed-major: a partial sweep still has whole seeds
            for beta in betas:
                for v in VARIANTS:
                    m = one(v, seed, a.steps, beta)
                    with path.open("a") as f:
                        f.write(json.dumps({"variant": v, "beta": beta, "seed": seed, **m}) + "\n")
                    print(v, beta, seed, round(m["val/bandit/true_reward"], 3), flush=True)
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    per_seed: dict[int, int] = {}
    for r in recs:
        per_seed[r["seed"]] = per_seed.get(r["seed"], 0) + 1
    done = {s for s, n in per_seed.items() if n == len(betas) * len(VARIANTS)}
    res: dict[tuple[str, float], list[dict[str, float]]] = {
        (v, b): [r for r in recs if r["variant"] == v and r["beta"] == b and r["seed"] in done]
        for v in VARIANTS
        for b in betas
    }
    print(f"complete seeds: {sorted(done)}")

    def ms(runs, k):
        xs = [r[k] for r in runs]
        return statistics.mean(xs), (statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else 0.0)

    print("| beta | " + " | ".join(f"{v}: reward / KL" for v in VARIANTS) + " |")
    print("|---|" + "---|" * len(VARIANTS))
    for beta in betas:
        cells = []
        for v in VARIANTS:
            (r, rs), (k, ks) = ms(res[v, beta], "val/bandit/true_reward"), ms(res[v, beta], "val/bandit/kl_ref")
            cells.append(f"{r:.3f} ± {rs:.3f} / {k:.3f} ± {ks:.3f}")
        print(f"| {beta:g} | " + " | ".join(cells) + " |")
    from src.pareto import Point, mark_frontier, plot_frontier

    pts = []
    for v in VARIANTS:
        for b in betas:
            (k, ks), (r, rs) = ms(res[v, b], "val/bandit/kl_ref"), ms(res[v, b], "val/bandit/true_reward")
            pts.append(Point(x=k, y=r, x_se=ks, y_se=rs, series=v, label=f"{b:g}", n=len(res[v, b])))
    out = plot_frontier(
        mark_frontier(pts, x_mode="min", y_mode="max"),
        ROOT / "docs" / "mallowspo_bandit_frontier.png",
        x="KL(pi || ref), mean over contexts",
        y="E[true reward]",
        title=f"bandit: reward vs KL, beta swept ({len(done)} seeds, ±s.e.)",
    )
    print("wrote", out)


if __name__ == "__main__":
    main()
