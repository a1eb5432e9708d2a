"""Run every benchmark and write ``benchmarks/results.md`` (ratios vs baselines measured in the same run).

python benchmarks/run_all.py            # or: make bench
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


def main() -> None:
    import torch

    rows = []
    for fn in BENCHMARKS:
        t0 = time.time()
        rows += fn()
        print(f"{fn.__module__}: {time.time() - t0:.0f}s", flush=True)
    lines = [
        f"# Benchmark results ({time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__})",
        "",
        "| benchmark | baseline | ours | memory ratio (baseline/ours) | speed ratio (ours/baseline) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        fmt = lambda x: "-" if x != x else f"{x:.2f}x"  # noqa: E731 - NaN: not applicable
        lines.append(
            f"| {r['benchmark']} | {r['baseline']} | {r['ours']} | {fmt(r['memory_ratio'])} | {fmt(r['speed_ratio'])} |"
        )
    out = Path(__file__).with_name("results.md")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
