"""Peak memory and time: chunked ``selective_log_softmax`` vs plain ``log_softmax().gather()``.

Issue target: >= 4x lower peak memory at equal speed or better, V=50k, T=1k, CPU, forward+backward.
Each case runs in its own process; memory is the growth of peak RSS over the RSS after the
inputs (logits, labels) were created, i.e. what the log-prob computation itself adds. The
hidden+LM-head rows (a ~2 s step) take their times from one more process that runs every variant
once per round, several rounds, median per variant: on a shared 2-core machine single timings
drift by +-30% from minute to minute, and alternating spreads that over all variants alike.

    python -m benchmarks.logprobs_memory
"""

from __future__ import annotations

import functools

from benchmarks.common import alternating_times, case_cli, median_time, peak_rss_mb, rss_mb, run_case


def _linear_step(
    name: str, B: int, T: int, V: int, H: int, chunk: int | None, frozen: bool = False, save: str = "recompute"
):
    """Training path: hidden states and LM head in, log-probs out, forward + backward (a closure).

    ``frozen``: the head takes no gradient (LoRA, a reference model); ``save``: the fused kernel's
    trainable-head mode (``recompute`` exact, ``fp16`` stored log-probs)."""
    import torch

    from src.losses.logprobs import linear_selective_log_softmax

    torch.manual_seed(0)
    hidden = torch.randn(B, T, H, requires_grad=True)
    weight = (torch.randn(V, H) / H**0.5).requires_grad_(not frozen)
    labels = torch.randint(0, V, (B, T))
    up = torch.randn(B, T)
    if not frozen:
        weight.grad = torch.zeros_like(weight)  # parameter grads exist in training anyway
    hidden.grad = torch.zeros_like(hidden)

    def step():
        if name == "plain_linear":
            lp = torch.log_softmax(hidden @ weight.T, -1).gather(-1, labels[..., None]).squeeze(-1)
        else:
            lp = linear_selective_log_softmax(hidden, weight, labels, chunk_size=chunk, save=save)
        (lp * up).sum().backward()

    return step


def _linear_case(
    name: str,
    B: int,
    T: int,
    V: int,
    H: int,
    chunk: int | None,
    repeats: int,
    frozen: bool = False,
    save: str = "recompute",
) -> dict:
    """Peak memory (and a time) of one variant, alone in its process."""
    step = _linear_step(name, B, T, V, H, chunk, frozen=frozen, save=save)
    base = rss_mb()
    t = median_time(step, repeats)
    return {"case": name, "peak_extra_mb": peak_rss_mb() - base, "time_s": t}


def _linear_alternating(B: int, T: int, V: int, H: int, rounds: int) -> dict:
    """Times of every hidden+head variant, taken round by round in one process (each round runs
    each variant once; median per variant), so that a slow minute on a shared machine hits every
    variant alike instead of whichever ran then. Memory comes from the per-variant processes."""
    import statistics

    variants = {
        "plain": ("plain_linear", False, "recompute"),
        "fused": ("fused_linear", False, "recompute"),
        "fp16": ("fused_linear", False, "fp16"),
        "plain_frozen": ("plain_linear", True, "recompute"),
        "fused_frozen": ("fused_linear", True, "recompute"),
    }
    steps = {k: _linear_step(n, B, T, V, H, None, frozen=f, save=sv) for k, (n, f, sv) in variants.items()}
    times = alternating_times(steps, rounds=rounds, warmup=1)
    return {k: statistics.median(v) for k, v in times.items()}


def _case(
    name: str,
    B: int,
    T: int,
    V: int,
    chunk: int | None,
    repeats: int,
    grad: bool = False,
    H: int = 0,
    frozen: bool = False,
    save: str = "recompute",
) -> dict:
    import torch

    from src.losses.logprobs import selective_log_softmax

    if name.endswith("_linear"):
        return _linear_case(name, B, T, V, H, chunk, repeats, frozen=frozen, save=save)

    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    logits = torch.randn(B, T, V)
    labels = torch.randint(0, V, (B, T))
    up = torch.randn(B, T)
    if grad:
        logits.requires_grad_()
        logits.grad = torch.zeros_like(logits)  # pre-allocate: both methods must produce this tensor
    base = rss_mb()

    def step():
        if name == "plain":
            lp = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]).squeeze(-1)
        else:
            lp = selective_log_softmax(logits, labels, chunk_size=chunk)
        if grad:
            (lp * up).sum().backward()
        return lp

    t = median_time(step, repeats)
    return {"case": name, "peak_extra_mb": peak_rss_mb() - base, "time_s": t}


def _row(label: str, plain: dict, ours: dict, chunk: int | str) -> dict:
    return {
        "benchmark": label,
        "baseline": f"{plain['peak_extra_mb']:.0f} MB, {plain['time_s'] * 1e3:.0f} ms",
        "ours": f"chunk={chunk}: {ours['peak_extra_mb']:.0f} MB, {ours['time_s'] * 1e3:.0f} ms",
        "memory_ratio": plain["peak_extra_mb"] / max(ours["peak_extra_mb"], 1e-9),
        "speed_ratio": plain["time_s"] / ours["time_s"],
    }


def main(
    B: int = 1,
    T: int = 1024,
    V: int = 50_000,
    chunk: int = 32,
    repeats: int = 5,
    H: int = 576,
    V_lm: int = 49_152,
    rounds: int = 7,
) -> list[dict]:
    from src.losses.logprobs import default_rows_per_chunk

    rows = []
    for grad in (False, True):
        res = {
            c: run_case("logprobs_memory", c, B=B, T=T, V=V, chunk=chunk, repeats=repeats, grad=grad)
            for c in ("plain", "chunked")
        }
        label = f"logprobs from logits B={B} T={T} V={V}, {'fwd+bwd' if grad else 'fwd (scoring)'}"
        rows.append(_row(label, res["plain"], res["chunked"], chunk))
    rule = f"{default_rows_per_chunk(V_lm, hidden_size=H)} rows (rule)"
    shape = f"B={B} T={T} V={V_lm} H={H} (SmolLM2 head)"
    # times: alternating rounds in one process (robust to a busy machine); memory: one process per variant
    t = run_case("logprobs_memory", "linear_alternating", B=B, T=T, V=V_lm, H=H, rounds=rounds)
    mem = lambda name, **kw: run_case("logprobs_memory", name, B=B, T=T, V=V_lm, H=H, chunk=None, repeats=1, **kw)  # noqa: E731
    note = f", time: median of {rounds} alternating rounds"
    for frozen in (False, True):
        sfx = "_frozen" if frozen else ""
        plain = {**mem("plain_linear", frozen=frozen), "time_s": t["plain" + sfx]}
        fused = {**mem("fused_linear", frozen=frozen), "time_s": t["fused" + sfx]}
        what = "head frozen (LoRA / reference), grad to hidden only" if frozen else "head trainable"
        rows.append(_row(f"logprobs from hidden+LM head {shape}, fwd+bwd, {what}{note}", plain, fused, rule))
        if not frozen:
            fp16 = {**mem("fused_linear", save="fp16"), "time_s": t["fp16"]}
            rows.append(
                {
                    **_row(
                        "  same, fused with save=fp16 (fp16 log-probs kept; no recomputed matmul)", plain, fp16, rule
                    ),
                    "baseline": "(same baseline)",
                }
            )
    return rows


if __name__ == "__main__":
    case_cli(
        {
            "plain": functools.partial(_case, "plain"),
            "chunked": functools.partial(_case, "chunked"),
            "plain_linear": functools.partial(_case, "plain_linear"),
            "fused_linear": functools.partial(_case, "fused_linear"),
            "linear_alternating": _linear_alternating,
        },
        main,
    )
