"""Benchmark helpers: run a function in a fresh subprocess and report time and peak RSS growth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def spread(values, *, scale: float = 1.0, digits: int = 0) -> str:
    """``median [min-max]`` of ``values`` times ``scale``: how every benchmark figure is reported."""
    import statistics

    v = [x * scale for x in values]
    f = lambda x: f"{x:.{digits}f}"  # noqa: E731
    return f"{f(statistics.median(v))} [{f(min(v))}-{f(max(v))}]"


def alternating_times(steps: dict, *, rounds: int, warmup: int = 1, sync=None) -> dict[str, list[float]]:
    """Seconds of each ``steps[name]()`` over ``rounds`` timed rounds after ``warmup`` untimed ones, the steps
    alternating within every round, so machine drift hits all alike. ``sync()``: called around each timed call
    (``torch.cuda.synchronize`` on a GPU)."""
    import time

    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(warmup + rounds):
        for name, step in steps.items():
            if sync is not None:
                sync()
            t = time.perf_counter()
            step()
            if sync is not None:
                sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - t)
    return times


def run_case(module: str, case: str, *, env: dict[str, str] | None = None, **kw) -> dict:
    """Run ``python -m benchmarks.<module> --case <case>`` in a clean process (``env``: extra variables); it prints
    one JSON line."""
    env = {
        **os.environ,
        **(env or {}),
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
    }
    args = [sys.executable, "-m", f"benchmarks.{module}", "--case", case, "--json", json.dumps(kw)]
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{module}:{case} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def case_cli(cases: dict, main) -> None:
    """``python -m benchmarks.<m> [--case NAME --json KW]``: one case as JSON (for run_case), or all rows."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--case")
    ap.add_argument("--json", default="{}")
    a = ap.parse_args()
    if a.case:
        print(json.dumps(cases[a.case](**json.loads(a.json))))
    else:
        for r in main():
            print(r)
