"""MallowsPO's dispersion on real HH-RLHF harmless pairs: the reference's normalised predictive entropy.

    .venv/bin/python scripts/hh_dispersion.py --path <harmless-base test.jsonl.gz> [--pairs 256]

``experiment=mallowspo_hh``'s reference (SmolLM2-135M-Instruct) scores up to ``--pairs`` training pairs of
the fixed split (``data.split_seed=0``, the same pairs the table's runs train on). Prints the quantiles of
``Hbar``, of the raw ``-log Hbar`` and of the calibrated weights ``w = -log Hbar / mean(-log Hbar)`` (what
``module.dispersion.scale=auto`` computes: mean 1), appends them to ``--out`` and draws the histogram
``docs/hh_dispersion.png``. The training table itself is a sweep: ``hparams_search=mallowspo_hh_table``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from src.experiments import build_job  # noqa: E402


def quantiles(x: torch.Tensor) -> dict[str, float]:
    q = torch.quantile(x.double(), torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.double)).tolist()
    return {"mean": float(x.mean()), "std": float(x.std()), **dict(zip(("p5", "p25", "p50", "p75", "p95"), q))}


@torch.no_grad()
def dispersion_stats(path: str, *, max_pairs: int, overrides: list[str] = ()) -> tuple[dict, torch.Tensor]:
    """Statistics of ``Hbar``, ``-log Hbar`` and ``w`` over up to ``max_pairs`` training pairs, and ``w``."""
    ov = ["experiment=mallowspo_hh", f"data.path={path}", "module.variant=mallows_theta"]
    objs = build_job([*ov, "module.dispersion.scale=1.0", *overrides])
    dm, module = objs["datamodule"], objs["module"]
    dm.setup()
    module.configure_model()
    loader = torch.utils.data.DataLoader(dm.train_set, batch_size=dm.eval_batch_size, collate_fn=dm.collate)
    raw = []
    for batch in loader:
        raw.append(module.reference_stats(batch)["w"])  # -log Hbar at scale 1
        if sum(len(r) for r in raw) >= max_pairs:
            break
    raw = torch.cat(raw)[:max_pairs].float()
    w = raw / raw.mean()
    stats = {
        "n": len(w),
        "hbar": quantiles(torch.exp(-raw)),
        "neg_log_hbar": quantiles(raw),
        "w": quantiles(w),
        "w_max_over_min": float(w.max() / w.min()),
    }
    return stats, w


def histogram(w: torch.Tensor, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(w.numpy(), bins=30, color="tab:blue")
    ax.set_xlabel("w(x) = -c log Hbar(x)  (c: mean 1)")
    ax.set_ylabel("training pairs")
    ax.set_title(f"HH-RLHF harmless, SmolLM2-135M reference ({len(w)} pairs)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--path", required=True, help="HH-RLHF harmless-base file (jsonl or jsonl.gz) or folder")
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--out", default=str(ROOT / "logs" / "mallowspo_hh" / "dispersion.jsonl"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "hh_dispersion.png"))
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides (smoke tests)")
    a = ap.parse_args()
    stats, w = dispersion_stats(a.path, max_pairs=a.pairs, overrides=a.overrides)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as f:
        f.write(json.dumps({"dispersion": stats}) + "\n")
    histogram(w, Path(a.plot))
    h, q = stats["hbar"], stats["w"]
    print(json.dumps({"dispersion": stats}, indent=1))
    print(
        f"Dispersion over {stats['n']} training pairs: Hbar mean {h['mean']:.3f} (p5 {h['p5']:.3f}, p95 {h['p95']:.3f}); "
        f"w(x) p5 {q['p5']:.2f}, p25 {q['p25']:.2f}, median {q['p50']:.2f}, p75 {q['p75']:.2f}, p95 {q['p95']:.2f}, "
        f"std {q['std']:.2f}, max/min {stats['w_max_over_min']:.2f}"
    )


if __name__ == "__main__":
    main()
