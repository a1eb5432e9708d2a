"""Peak memory and time: chunked ``selective_log_softmax`` vs plain ``log_softmax().gather()`` on logits.

Issue target: >= 4x lower peak memory at equal speed or better, V=50k, T=1k, CPU, forward (scoring) and
forward + backward. Memory: each variant alone in its own process, the growth of peak RSS over the RSS after
the inputs (logits, labels) were created, i.e. what the log-prob computation itself adds. Time: one more
process runs both variants once per round, alternating, after a warm-up round; median and range. The
hidden-states + LM-head rows (the fused kernel) are ``benchmarks/kernel_chunks.py``.

    python -m benchmarks.logprobs_memory
"""

from __future__ import annotations

from benchmarks.common import alternating_times, case_cli, peak_rss_mb, rss_mb, run_case, spread


def _step(name: str, B: int, T: int, V: int, chunk: int, grad: bool):
    """One log-prob computation (and its backward when ``grad``), as a closure over fixed inputs."""
    import torch

    from src.losses.logprobs import selective_log_softmax

    torch.manual_seed(0)
    logits = torch.randn(B, T, V)
    labels = torch.randint(0, V, (B, T))
    up = torch.randn(B, T)
    if grad:
        logits.requires_grad_()
        logits.grad = torch.zeros_like(logits)  # pre-allocate: both methods must produce this tensor

    def step():
        if name == "plain":
            lp = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]).squeeze(-1)
        else:
            lp = selective_log_softmax(logits, labels, chunk_size=chunk)
        if grad:
            (lp * up).sum().backward()
        return lp

    return step


def memory(name: str, B: int, T: int, V: int, chunk: int, grad: bool) -> dict:
    """Peak RSS growth of one variant, alone in its process (inputs excluded)."""
    step = _step(name, B, T, V, chunk, grad)
    base = rss_mb()
    step()
    step()
    return {"peak_extra_mb": peak_rss_mb() - base}


def times(B: int, T: int, V: int, chunk: int, grad: bool, rounds: int) -> dict:
    steps = {n: _step(n, B, T, V, chunk, grad) for n in ("plain", "chunked")}
    return alternating_times(steps, rounds=rounds, warmup=1)


def main(B: int = 1, T: int = 1024, V: int = 50_000, chunk: int = 32, rounds: int = 7) -> list[dict]:
    import statistics

    rows = []
    for grad in (False, True):
        kw = {"B": B, "T": T, "V": V, "chunk": chunk, "grad": grad}
        t = run_case("logprobs_memory", "times", **kw, rounds=rounds)
        mem = {n: run_case("logprobs_memory", "memory", name=n, **kw)["peak_extra_mb"] for n in ("plain", "chunked")}
        what = "fwd+bwd" if grad else "fwd (scoring)"
        rows.append(
            {
                "benchmark": f"log-probs from logits B={B} T={T} V={V}, {what}, ms: median [range] of {rounds} "
                "alternating rounds",
                "baseline": f"log_softmax().gather(): {mem['plain']:.0f} MB, {spread(t['plain'], scale=1e3)} ms",
                "ours": f"chunk={chunk}: {mem['chunked']:.0f} MB, {spread(t['chunked'], scale=1e3)} ms",
                "memory_ratio": mem["plain"] / max(mem["chunked"], 1e-9),
                "speed_ratio": statistics.median(t["plain"]) / statistics.median(t["chunked"]),
            }
        )
    return rows


if __name__ == "__main__":
    case_cli({"times": times, "memory": memory}, main)
