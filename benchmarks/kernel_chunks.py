"""How many rows per chunk the fused log-prob kernel should take, and how it compares with the plain path,
eager and ``torch.compile``d (the anchors of the kernel rows in ``results.md``).

    python -m benchmarks.kernel_chunks [rounds]

SmolLM2's head shape (N=1024 rows, H=576, V=49152), head trainable, forward + backward, fp32 on CPU. Each
chunk re-reads the (V, H) weight in the forward matmul and three times in the backward (the recomputed
logits, ``dz W`` and the ``dW`` accumulation), so small chunks pay for the weight many times; large chunks
hold a large (rows, V) logit buffer. Variants alternate round by round after a warm-up round; median and
range per variant. Peak memory: growth of peak RSS in a process of its own per variant. The ``frozen_*``
variants give the head no gradient (LoRA, a reference model): gradient to the hidden states only.
"""

from __future__ import annotations

import statistics
import sys

from benchmarks.common import alternating_times, case_cli, peak_rss_mb, rss_mb, run_case, spread

N, H, V = 1024, 576, 49152
ROWS = (128, 170, 256, 512, 1024, 2048)


def _step(variant: str):
    import torch

    from src.losses.logprobs import fused_linear_token_stats

    frozen = variant.startswith("frozen_")  # the head takes no gradient (LoRA, a reference): grad to hidden only
    variant = variant.removeprefix("frozen_")
    torch.manual_seed(0)
    hidden = torch.randn(N, H, requires_grad=True)
    weight = (torch.randn(V, H) / H**0.5).requires_grad_(not frozen)
    labels, up = torch.randint(0, V, (N,)), torch.randn(N)

    def plain(h, w, y):
        return torch.log_softmax(h @ w.T, -1).gather(-1, y[:, None]).squeeze(-1)

    if variant == "plain":
        fn = plain
    elif variant == "compiled":
        fn = torch.compile(plain, dynamic=False)
    else:
        save = "fp16" if variant == "fp16" else "recompute"
        rows = None if variant in ("rule", "fp16") else int(variant)

        def fn(h, w, y):
            return fused_linear_token_stats(h, w, y, rows_per_chunk=rows, save=save)[0]

    def step():
        hidden.grad = weight.grad = None
        (fn(hidden, weight, labels) * up).sum().backward()

    return step


def memory(variant: str) -> dict:
    step = _step(variant)
    base = rss_mb()
    step()
    step()
    return {"variant": variant, "peak_extra_mb": peak_rss_mb() - base}


def times(rounds: int = 7, variants: tuple[str, ...] = ()) -> dict:
    # one warm-up round (it also compiles the torch.compile variant)
    return alternating_times({v: _step(v) for v in variants}, rounds=rounds, warmup=1)


FROZEN = ("frozen_plain", "frozen_compiled", "frozen_rule")


def main(rounds: int = 7) -> list[dict]:
    from src.losses.logprobs import default_rows_per_chunk

    variants = ("plain", "compiled", "rule", "fp16", *map(str, ROWS), *FROZEN)
    t = run_case("kernel_chunks", "times", rounds=rounds, variants=variants)
    rule = default_rows_per_chunk(V, hidden_size=H)
    rows = []
    for v in variants:
        mem = run_case("kernel_chunks", "memory", variant=v)["peak_extra_mb"]
        med = statistics.median(t[v])
        frozen = v.startswith("frozen_")
        label = {
            "plain": "plain (eager)",
            "compiled": "plain (torch.compile)",
            "rule": f"fused, {rule} rows (rule)",
            "fp16": f"fused, {rule} rows, save=fp16 (3 matmuls)",
        }
        base = statistics.median(t["frozen_compiled" if frozen else "compiled"])
        rows.append(
            {
                "variant": label.get(v.removeprefix("frozen_"), f"fused, {v} rows"),
                "head": "frozen" if frozen else "trainable",
                "time_ms": spread(t[v], scale=1e3),
                "speed_vs_compiled": base / med,
                "peak_extra_mb": mem,
            }
        )
    return rows


def bench_rows(rounds: int = 7) -> list[dict]:
    """``make bench`` rows: every variant against the ``torch.compile``d plain path (the anchor) with the same
    head (trainable, or frozen: gradient to the hidden states only)."""
    rows = main(rounds)
    out = []
    for head in ("trainable", "frozen"):
        mine = [r for r in rows if r["head"] == head]
        anchor = next(r for r in mine if r["variant"] == "plain (torch.compile)")
        out += [
            {
                "benchmark": f"LM-head log-probs N={N} H={H} V={V}, head {head}, fwd+bwd: {r['variant']} vs compiled "
                f"plain (ms: median [range] of {rounds} alternating rounds)",
                "baseline": f"compiled plain: {anchor['time_ms']} ms, {anchor['peak_extra_mb']:.0f} MB",
                "ours": f"{r['time_ms']} ms, {r['peak_extra_mb']:.0f} MB",
                "memory_ratio": anchor["peak_extra_mb"] / max(r["peak_extra_mb"], 1e-9),
                "speed_ratio": r["speed_vs_compiled"],
            }
            for r in mine
            if r is not anchor
        ]
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].isdigit():
        for r in main(int(sys.argv[1])):
            print(r)
    else:
        case_cli({"times": times, "memory": memory}, main)
