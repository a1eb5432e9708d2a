"""Ablation (not part of ``make bench``): does ``torch.compile`` of the fused kernel's per-chunk
element-wise work make the trainable-head path faster on CPU?

    python -m benchmarks.fused_compile [rounds]

Same shape as the kernel rows of ``results.md`` (N=1024 rows, H=576, V=49152, rows per chunk by
rule, head trainable, fwd+bwd). Variants: the plain ``log_softmax(h W^T)`` path; our kernel
(``fused_linear_token_stats``, eager); and the same recompute algorithm with its two element-wise
stages (forward: logsumexp + label gather; backward: ``-softmax * g`` + label scatter) compiled by
inductor, written in place and out of place. The matmuls are untouched (they are library calls
either way). The variants alternate round by round and each reports its median, because single
timings on a shared 2-core VM vary by +-30%. Results on that machine (2026-11-23, two runs of 9
rounds): plain 1527 ms, eager kernel 0.69x, compiled 0.66x (in place) / 0.67x (out of place); and
plain 2260 ms, eager 0.96x, compiled 0.99x / 0.97x. Compiled stays within a few percent of eager
in both: no gain, so the kernel has no compile option. (The kernel-vs-plain ratio itself moved
from 0.69x to 0.96x between the runs: the plain path's passes over the (N, V) logits are what a
busier machine slows down.) The four matmuls against the plain path's three bound the
recompute path at 0.75x; the element-wise work is not where the time goes.
"""

from __future__ import annotations

import statistics
import sys
import time


def main(rounds: int = 9, N: int = 1024, H: int = 576, V: int = 49152) -> dict[str, float]:
    import torch

    from src.losses.logprobs import default_rows_per_chunk, fused_linear_token_stats

    torch.manual_seed(0)
    rows = default_rows_per_chunk(V)
    hidden = torch.randn(N, H, requires_grad=True)
    weight = (torch.randn(V, H) / H**0.5).requires_grad_(True)
    labels, up = torch.randint(0, V, (N,)), torch.randn(N)

    def stats(z, lab):  # forward element-wise stage
        lz = torch.logsumexp(z, -1)
        return z.gather(-1, lab[:, None]).squeeze(-1) - lz, lz

    def dz_inplace(z, lse, g, lab):  # backward element-wise stage: d logp_y / dz = e_y - softmax(z)
        return z.sub_(lse[:, None]).exp_().mul_(-g[:, None]).scatter_add_(-1, lab[:, None], g[:, None])

    def dz_out_of_place(z, lse, g, lab):
        return ((z - lse[:, None]).exp() * (-g[:, None])).scatter_add(-1, lab[:, None], g[:, None])

    fns = {"compiled in place": (stats, dz_inplace), "compiled out of place": (stats, dz_out_of_place)}
    fns = {k: (torch.compile(f, dynamic=False), torch.compile(b, dynamic=False)) for k, (f, b) in fns.items()}

    class Recompute(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h, w, lab, kind):
            out, lse = torch.empty(N), torch.empty(N)
            for s in range(0, N, rows):
                out[s : s + rows], lse[s : s + rows] = fns[kind][0](h[s : s + rows] @ w.T, lab[s : s + rows])
            ctx.save_for_backward(h, w, lab, lse)
            ctx.kind = kind
            return out

        @staticmethod
        def backward(ctx, g):
            h, w, lab, lse = ctx.saved_tensors
            gh, gw = torch.empty_like(h), torch.zeros_like(w)
            for s in range(0, N, rows):
                dz = fns[ctx.kind][1](h[s : s + rows] @ w.T, lse[s : s + rows], g[s : s + rows], lab[s : s + rows])
                gh[s : s + rows] = dz @ w
                gw.addmm_(dz.T, h[s : s + rows])
            return gh, gw, None, None

    def step(kind: str) -> None:
        hidden.grad = weight.grad = None
        if kind == "plain":
            lp = torch.log_softmax(hidden @ weight.T, -1).gather(-1, labels[:, None]).squeeze(-1)
        elif kind == "eager kernel":
            lp, _ = fused_linear_token_stats(hidden, weight, labels)
        else:
            lp = Recompute.apply(hidden, weight, labels, kind)
        (lp * up).sum().backward()

    kinds = ["plain", "eager kernel", *fns]
    grads = {}
    for k in kinds:  # warm-up (compiles) and a gradient check: every variant computes the same thing
        step(k)
        grads[k] = weight.grad.clone()
    for k in kinds[1:]:
        torch.testing.assert_close(grads[k], grads["plain"], atol=1e-4, rtol=1e-4)
    times = {k: [] for k in kinds}
    for _ in range(rounds):
        for k in kinds:
            t0 = time.perf_counter()
            step(k)
            times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["plain"])
    for k in kinds:
        m = statistics.median(times[k])
        print(f"{k:22s} median {m * 1000:6.0f} ms   speed vs plain {base / m:.2f}x")
    return {k: base / statistics.median(v) for k, v in times.items()}


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 9)
