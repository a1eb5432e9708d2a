"""Run every benchmark and write ``benchmarks/results.md`` (ratios vs baselines measured in the same run).

python benchmarks/run_all.py                  # or: make bench
python benchmarks/run_all.py --only opd_vs_trl   # re-measure one benchmark: its rows replaced, the others kept
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import (  # noqa: E402
    diffpo_scoring,
    diffusion_sampler,
    dpo_smollm2,
    kernel_chunks,
    logprobs_memory,
    mallowspo_vs_trl,
    opd_step,
    opd_vs_trl,
    rollout_throughput,
)

BENCHMARKS = [
    logprobs_memory.main,
    kernel_chunks.bench_rows,
    dpo_smollm2.main,
    mallowspo_vs_trl.main,
    opd_step.main,
    opd_vs_trl.main,
    diffusion_sampler.all_rows,
    diffpo_scoring.main,
    rollout_throughput.main,
]


def row_line(r: dict) -> str:
    fmt = lambda x: "-" if x != x else f"{x:.2f}x"  # noqa: E731 - NaN: not applicable
    return f"| {r['benchmark']} | {r['baseline']} | {r['ours']} | {fmt(r['memory_ratio'])} | {fmt(r['speed_ratio'])} |"


def main(only: str | None = None) -> None:
    import torch

    fns = [fn for fn in BENCHMARKS if only is None or fn.__module__.rsplit(".", 1)[-1] == only]
    if not fns:
        raise SystemExit(f"--only {only}: no such benchmark ({', '.join(f.__module__ for f in BENCHMARKS)})")
    rows = []
    for fn in fns:
        t0 = time.time()
        rows += fn()
        print(f"{fn.__module__}: {time.time() - t0:.0f}s", flush=True)
    out = Path(__file__).with_name("results.md")
    head = [
        f"# Benchmark results ({time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__})",
        "",
        "| benchmark | baseline | ours | memory ratio (baseline/ours) | speed ratio (ours/baseline) |",
        "|---|---|---|---|---|",
    ]
    if only is None or not out.exists():
        lines = head + [row_line(r) for r in rows]
    else:  # the other benchmarks' rows stay; this one's rows (same first cell) are replaced, new ones appended
        lines = out.read_text().splitlines()
        for r in rows:
            label = f"| {r['benchmark']} |"
            at = [i for i, line in enumerate(lines) if line.startswith(label)]
            if at:
                lines[at[0]] = row_line(r)
            else:
                lines.append(row_line(r))
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--only", help="one benchmark module (e.g. opd_vs_trl): re-measure it, keep the other rows")
    main(ap.parse_args().only)
