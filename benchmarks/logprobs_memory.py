"""Peak memory and time: chunked ``selective_log_softmax`` vs plain ``log_softmax().gather()``.

Issue target: >= 4x lower peak memory at equal speed or better, V=50k, T=1k, CPU, forward+backward.
Each case runs in its own process; memory is the growth of peak RSS over the RSS after the
inputs (logits, labels) were created, i.e. what the log-prob computation itself adds.

    python -m benchmarks.logprobs_memory
"""

from __future__ import annotations

import functools

from benchmarks.common import case_cli, median_time, peak_rss_mb, rss_mb, run_case


def _linear_case(name: str, B: int, T: int, V: int, H: int, chunk: int, repeats: int) -> dict:
    """Training path: hidden states and LM head in, log-probs out, forward + backward."""
    import torch

    from src.losses.logprobs import linear_selective_log_softmax

    torch.manual_seed(0)
    hidden = torch.randn(B, T, H, requires_grad=True)
    weight = (torch.randn(V, H) / H**0.5).requires_grad_()
    labels = torch.randint(0, V, (B, T))
    up = torch.randn(B, T)
    weight.grad = torch.zeros_like(weight)  # parameter grads exist in training anyway
    hidden.grad = torch.zeros_like(hidden)
    base = rss_mb()

    def step():
        if name == "plain_linear":
            lp = torch.log_softmax(hidden @ weight.T, -1).gather(-1, labels[..., None]).squeeze(-1)
        else:
            lp = linear_selective_log_softmax(hidden, weight, labels, chunk_size=chunk)
        (lp * up).sum().backward()

    t = median_time(step, repeats)
    return {"case": name, "peak_extra_mb": peak_rss_mb() - base, "time_s": t}


def _case(name: str, B: int, T: int, V: int, chunk: int, repeats: int, grad: bool = False, H: int = 0) -> dict:
    import torch

    from src.losses.logprobs import selective_log_softmax

    if name.endswith("_linear"):
        return _linear_case(name, B, T, V, H, chunk, repeats)

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


def _row(label: str, plain: dict, ours: dict, chunk: int) -> dict:
    return {
        "benchmark": label,
        "baseline": f"{plain['peak_extra_mb']:.0f} MB, {plain['time_s'] * 1e3:.0f} ms",
        "ours": f"chunk={chunk}: {ours['peak_extra_mb']:.0f} MB, {ours['time_s'] * 1e3:.0f} ms",
        "memory_ratio": plain["peak_extra_mb"] / max(ours["peak_extra_mb"], 1e-9),
        "speed_ratio": plain["time_s"] / ours["time_s"],
    }


def main(B: int = 1, T: int = 1024, V: int = 50_000, chunk: int = 32, repeats: int = 5, H: int = 256,
         fused_chunk: int = 256) -> list[dict]:
    rows = []
    for grad in (False, True):
        res = {c: run_case("logprobs_memory", c, B=B, T=T, V=V, chunk=chunk, repeats=repeats, grad=grad)
               for c in ("plain", "chunked")}  # fmt: skip
        label = f"logprobs from logits B={B} T={T} V={V}, {'fwd+bwd' if grad else 'fwd (scoring)'}"
        rows.append(_row(label, res["plain"], res["chunked"], chunk))
    res = {c: run_case("logprobs_memory", c, B=B, T=T, V=V, H=H, chunk=fused_chunk, repeats=repeats)
           for c in ("plain_linear", "fused_linear")}  # fmt: skip
    label = f"logprobs from hidden+LM head B={B} T={T} V={V} H={H}, fwd+bwd (training)"
    rows.append(_row(label, res["plain_linear"], res["fused_linear"], fused_chunk))
    return rows


if __name__ == "__main__":
    case_cli({"plain": functools.partial(_case, "plain"), "chunked": functools.partial(_case, "chunked"), "plain_linear": functools.partial(_case, "plain_linear"), "fused_linear": functools.partial(_case, "fused_linear")}, main)
