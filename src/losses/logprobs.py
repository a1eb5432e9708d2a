"""Per-token log-probabilities and entropies without a full ``(B, T, V)`` fp32 log-softmax.

``log_softmax(logits).gather(labels)`` materialises a ``B*T*V`` fp32 tensor and autograd keeps it
for backward (TRL PR #2799: > 2 GB at V=32k, T=1024, B=16). Here a custom autograd function works
over sequence chunks: forward keeps only the per-token log-normaliser ``(B, T)``; backward
recomputes ``softmax`` chunk by chunk. Peak extra memory is ``O(B * chunk * V)``; the returned
gradient w.r.t. the logits is the only full-size tensor (it has to exist anyway).
All arithmetic is fp32 whatever the logits' dtype (torchtune ``kd_losses`` convention).
"""

from __future__ import annotations

import torch
from torch import Tensor

from src.losses.reduce import masked_mean, masked_sum

DEFAULT_CHUNK = 128


def _check(logits: Tensor, labels: Tensor) -> None:
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits (B, T, V) and labels (B, T); got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )


class _ChunkedSelectiveLogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, chunk: int) -> Tensor:  # type: ignore[override]
        B, T, _ = logits.shape
        out = torch.empty(B, T, dtype=torch.float32, device=logits.device)
        lse = torch.empty(B, T, dtype=torch.float32, device=logits.device)
        for s in range(0, T, chunk):
            blk = logits[:, s : s + chunk].float()
            lse[:, s : s + chunk] = torch.logsumexp(blk, dim=-1)
            picked = blk.gather(-1, labels[:, s : s + chunk, None]).squeeze(-1)
            out[:, s : s + chunk] = picked - lse[:, s : s + chunk]
        ctx.save_for_backward(logits, labels, lse)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        logits, labels, lse = ctx.saved_tensors
        chunk = ctx.chunk
        grad = torch.empty_like(logits)
        fp32 = logits.dtype == torch.float32
        for s in range(0, logits.shape[1], chunk):
            g = grad_out[:, s : s + chunk].float()[..., None]
            # d logp(y)/d z_v = 1[v = y] - softmax(z)_v; for fp32 written in place into the output
            # slice (no temporaries), otherwise through one fp32 chunk buffer
            dst = grad[:, s : s + chunk] if fp32 else torch.empty(grad[:, s : s + chunk].shape, device=grad.device)
            torch.sub(logits[:, s : s + chunk].float(), lse[:, s : s + chunk, None], out=dst)
            dst.exp_().mul_(-g)
            dst.scatter_add_(-1, labels[:, s : s + chunk, None], g)
            if not fp32:
                grad[:, s : s + chunk] = dst.to(grad.dtype)
        return grad, None, None


def selective_log_softmax(
    logits: Tensor, labels: Tensor, *, chunk_size: int = DEFAULT_CHUNK, ignore_index: int = -100
) -> Tensor:
    """Log-probability of ``labels`` under ``logits`` (fp32), chunked over the sequence.

    Args:
        logits: ``(B, T, V)`` any float dtype.
        labels: ``(B, T)`` token ids; ``ignore_index`` entries give 0.
        chunk_size: sequence positions per chunk (memory ``O(B * chunk_size * V)``).

    Returns:
        ``(B, T)`` fp32 log-probs.
    """
    _check(logits, labels)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    ignore = labels == ignore_index
    safe = labels.masked_fill(ignore, 0).long()
    if safe.numel() and (safe.min() < 0 or safe.max() >= logits.shape[-1]):
        raise ValueError(f"label id out of range [0, {logits.shape[-1]}) (ignore_index={ignore_index})")
    out = _ChunkedSelectiveLogSoftmax.apply(logits, safe, chunk_size)
    return out.masked_fill(ignore, 0.0)


def entropy_from_logits(logits: Tensor, *, chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """Per-position entropy ``H = -sum_v p_v log p_v`` in fp32, ``(B, T, V) -> (B, T)``, chunked."""
    if logits.dim() != 3:
        raise ValueError(f"expected logits (B, T, V), got {tuple(logits.shape)}")
    chunks = []
    for s in range(0, logits.shape[1], chunk_size):
        logp = torch.log_softmax(logits[:, s : s + chunk_size].float(), dim=-1)
        chunks.append(-(logp.exp() * logp).sum(-1))
    if not chunks:
        return logits.new_zeros(logits.shape[:2], dtype=torch.float32)
    return torch.cat(chunks, dim=1)


def sequence_logprob(token_logps: Tensor, mask: Tensor, *, average: bool = False) -> Tensor:
    """Sum (or per-token mean, SimPO/IPO length normalisation) of token log-probs per sequence."""
    return masked_mean(token_logps, mask, dim=-1) if average else masked_sum(token_logps, mask, dim=-1)


def default_rows_per_chunk(
    vocab_size: int,
    *,
    hidden_size: int | None = None,
    weight_itemsize: int = 4,
    budget_bytes: int = 32 * 2**20,
) -> int:
    """Rows of the flattened ``(N, H)`` hidden states per chunk of the fused LM-head kernel.

    Two counts set it. Memory: the chunk's fp32 logits take about ``budget_bytes`` (32 MiB: 170 rows at
    V = 49152). Weight traffic: every chunk re-reads the ``(V, H)`` weight, once in the forward matmul and
    three times in a trainable head's backward (recomputed logits, ``dz W``, the ``dW`` accumulation), while
    its own logits take about as many passes; so with ``hidden_size`` given the chunk is at least as large as
    the weight (``rows * V * 4 >= V * H * itemsize``, i.e. ``rows >= H * itemsize / 4``: 576 rows for SmolLM2's
    fp32 head), which keeps the re-reads at most about the logits' own traffic. Between 16 and 4096 rows."""
    rows = budget_bytes // (4 * max(1, vocab_size))
    if hidden_size is not None:
        rows = max(rows, -(-hidden_size * weight_itemsize // 4))
    return int(min(4096, max(16, rows)))


def _mm_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype in force on ``device`` (the LM head matmul runs in it, as under autocast)."""
    kind = device.type
    return (
        torch.get_autocast_dtype(kind)
        if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind)
        else None
    )


def _chunk_buffer(n: int, rows: int, vocab: int, device: torch.device) -> Tensor:
    """One fp32 ``(rows, V)`` buffer that every chunk of a pass reuses: a fresh buffer per chunk costs an
    allocation (on CPU, page faults over the whole chunk) each time."""
    return torch.empty(min(rows, max(n, 1)), vocab, dtype=torch.float32, device=device)


def _chunk_logits(h: Tensor, w: Tensor, buf: Tensor) -> Tensor:
    """``h @ w.T`` as fp32 in the first ``len(h)`` rows of ``buf`` (written in place when fp32)."""
    out = buf[: h.shape[0]]
    if h.dtype == torch.float32 and w.dtype == torch.float32:
        return torch.mm(h, w.T, out=out)
    return out.copy_(torch.mm(h, w.T))


class _FusedLinearLogProb(torch.autograd.Function):
    """``log_softmax(hidden @ W^T + b)[label]`` (and the entropy) without materialising ``(N, V)``.

    Works on flattened rows ``hidden (N, H)``. Matmul count, against the plain path's three
    (``z = hW^T``; backward ``dz W`` and ``dz^T h``):

    * head frozen (LoRA, a frozen reference, scoring with grad only to the hidden states): forward
      also stores ``m = softmax(z) W`` (N, H), because ``d logp_y / dh = w_y - m``; backward needs no
      matmul at all. Two matmuls, the same as the plain path.
    * head trainable: ``dW = sum_t g_t (e_y - p_t) h_t^T`` needs every ``p_t`` together with the
      incoming gradient ``g``, which only exists after the loss; so backward recomputes ``z`` chunk
      by chunk. Four matmuls instead of three: the price of never holding ``(N, V)``.
      ``save="fp16"`` instead keeps the log-softmax as fp16 ``(N, V)`` (2 bytes an entry, against
      the plain path's fp32 logits, log-softmax and gradient): three matmuls, gradients within
      about 1e-3 relative (fp16 log-probs carry 11 significant bits).
    """

    @staticmethod
    def forward(
        ctx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        labels: Tensor,
        rows: int,  # type: ignore[override]
        want_entropy: bool,
        mm_dtype: torch.dtype | None,
        save: str,
    ):
        N = hidden.shape[0]
        need_h, need_w = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1] or (bias is not None and ctx.needs_input_grad[2]),
        )
        dt = mm_dtype or torch.promote_types(hidden.dtype, weight.dtype)
        w = weight.to(dt)
        b = None if bias is None else bias.float()
        out = torch.empty(N, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(N, dtype=torch.float32, device=hidden.device)
        ent = torch.empty(N, dtype=torch.float32, device=hidden.device) if want_entropy else None
        # head frozen: keep m = E_p[w] so that backward is matmul-free
        m = (
            torch.empty(N, hidden.shape[1], dtype=torch.float32, device=hidden.device)
            if need_h and not need_w
            else None
        )
        kept = (
            torch.empty(N, weight.shape[0], dtype=torch.float16, device=hidden.device)
            if need_w and save == "fp16"
            else None
        )
        zbuf = _chunk_buffer(N, rows, weight.shape[0], hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, N, rows):
                z = _chunk_logits(hidden[s : s + rows].to(dt), w, zbuf)
                if b is not None:
                    z += b
                picked = z.gather(-1, labels[s : s + rows, None]).squeeze(-1)
                if ent is None and kept is None:
                    # log-sum-exp in place (torch.logsumexp allocates a chunk-sized temporary for
                    # z - max on every call): e = exp(z - max) overwrites z, which is not needed again
                    mx = z.amax(-1, keepdim=True)
                    e = z.sub_(mx).exp_()
                    tot = e.sum(-1)
                    lz = mx.squeeze(-1) + tot.log()
                    lse[s : s + rows] = lz
                    out[s : s + rows] = picked - lz
                    if m is not None:  # E_p[w] = (e W) / sum(e): the normalisation on (rows, H), not (rows, V)
                        m[s : s + rows] = torch.mm(e.to(dt), w).float().div_(tot[:, None])
                    continue
                lz = torch.logsumexp(z, -1)
                lse[s : s + rows] = lz
                out[s : s + rows] = picked - lz
                logp = z.sub_(lz[:, None])  # in place: z is not needed any more
                if kept is not None:
                    kept[s : s + rows] = logp
                p = logp.exp()
                if ent is not None:
                    ent[s : s + rows] = -(p * logp).sum(-1)
                if m is not None:
                    m[s : s + rows] = torch.mm(p.to(dt), w).float()
        ctx.save_for_backward(hidden, weight, bias, labels, lse, m, kept)
        ctx.rows, ctx.dt = rows, dt
        if ent is None:
            return out
        ctx.mark_non_differentiable(ent)
        return out, ent

    @staticmethod
    def backward(ctx, grad_out: Tensor, *_: Tensor):  # type: ignore[override]
        hidden, weight, bias, labels, lse, m, kept = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        g = grad_out.float()
        if m is not None:  # head frozen: d logp_y / dh = w_y - E_p[w]
            g_h = (weight.index_select(0, labels).float() - m).mul_(g[:, None]).to(hidden.dtype)
            return g_h, None, None, None, None, None, None, None
        dt, rows = ctx.dt, ctx.rows
        w = weight.to(dt)
        g_h = torch.empty_like(hidden) if need_h else None
        # dW: the first chunk's product is written into it, later chunks accumulate (no zero-fill pass)
        alloc = torch.empty if hidden.shape[0] else torch.zeros  # no rows: no chunk writes dW
        g_w = alloc(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        g_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        zbuf = _chunk_buffer(hidden.shape[0], rows, weight.shape[0], hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, hidden.shape[0], rows):
                h = hidden[s : s + rows].to(dt)
                gs = g[s : s + rows, None]
                if kept is not None:  # softmax from the stored fp16 log-probs: no matmul
                    dz = zbuf[: h.shape[0]].copy_(kept[s : s + rows]).exp_().mul_(-gs)
                else:  # recompute this chunk's logits
                    z = _chunk_logits(h, w, zbuf)
                    if bias is not None:
                        z += bias.float()
                    dz = z.sub_(lse[s : s + rows, None]).exp_().mul_(-gs)  # -softmax * g, in place
                dz.scatter_add_(-1, labels[s : s + rows, None], gs)
                if g_h is not None:
                    g_h[s : s + rows] = torch.mm(dz.to(dt), w).to(hidden.dtype)
                if g_w is not None:
                    if dt == torch.float32:  # in place, no (V, H) temporary; beta=0: the empty dW is not read
                        g_w.addmm_(dz.T, h, beta=float(s > 0))
                    elif s == 0:
                        g_w.copy_(torch.mm(dz.T.to(dt), h))
                    else:
                        g_w += torch.mm(dz.T.to(dt), h).float()
                if g_b is not None:
                    g_b += dz.sum(0)
        return (
            g_h,
            None if g_w is None else g_w.to(weight.dtype),
            None if g_b is None else g_b.to(bias.dtype),
            None,
            None,
            None,
            None,
            None,
        )


def fused_linear_token_stats(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    bias: Tensor | None = None,
    entropy: bool = False,
    rows_per_chunk: int | None = None,
    save: str = "recompute",
) -> tuple[Tensor, Tensor | None]:
    """Log-probs (and, without grad, entropies) of ``labels`` under ``hidden @ weight.T (+ bias)``.

    ``hidden`` is ``(N, H)`` (rows already selected: only the positions whose next token is scored),
    ``labels`` ``(N,)``. The LM head runs chunk by chunk over the rows and the logits are never
    held for all rows; extra memory is ``O(rows_per_chunk * V)``. Under autocast the matmul runs in
    the autocast dtype, the log-softmax always in fp32. ``save`` (trainable head only):
    ``recompute`` (exact; backward recomputes each chunk's logits) or ``fp16`` (keeps fp16
    log-probs, ``2 N V`` bytes, and skips that matmul). Returns ``((N,) fp32, (N,) fp32 | None)``.
    """
    if save not in ("recompute", "fp16"):
        raise ValueError(f"save={save!r}; valid: recompute, fp16")
    if (
        hidden.dim() != 2
        or labels.shape != hidden.shape[:1]
        or weight.dim() != 2
        or weight.shape[1] != hidden.shape[-1]
    ):
        raise ValueError(
            f"expected hidden (N, H), weight (V, H), labels (N,); got {tuple(hidden.shape)}, {tuple(weight.shape)}, "
            f"{tuple(labels.shape)}"
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= weight.shape[0]):
        raise ValueError(f"label id out of range [0, {weight.shape[0]})")
    rows = rows_per_chunk or default_rows_per_chunk(
        weight.shape[0], hidden_size=weight.shape[1], weight_itemsize=weight.element_size()
    )
    if rows < 1:
        raise ValueError(f"rows_per_chunk must be >= 1, got {rows}")
    res = _FusedLinearLogProb.apply(hidden, weight, bias, labels.long(), rows, entropy, _mm_dtype(hidden.device), save)
    return (res[0], res[1]) if entropy else (res, None)


def linear_selective_log_softmax(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    bias: Tensor | None = None,
    chunk_size: int | None = None,
    ignore_index: int = -100,
    save: str = "recompute",
) -> Tensor:
    """Log-probs of ``labels`` under ``hidden @ weight.T (+ bias)``, fused with the LM head.

    Neither the logits nor their gradient are ever materialised for the whole sequence (see
    :func:`fused_linear_token_stats`; Liger-Kernel / Cut Cross-Entropy style), so the extra memory is
    ``O(chunk * V)`` instead of ``O(B * T * V)``.

    Args:
        hidden: ``(B, T, H)`` final hidden states (after the final norm).
        weight: ``(V, H)`` output-embedding matrix; ``bias`` ``(V,)`` optional.
        labels: ``(B, T)``; ``ignore_index`` entries give 0 (and are not computed).
        chunk_size: rows (flattened ``B * T`` positions) per chunk; default by
            :func:`default_rows_per_chunk`.
        save: ``recompute | fp16``, see :func:`fused_linear_token_stats`.
    """
    if (
        hidden.dim() != 3
        or labels.shape != hidden.shape[:2]
        or weight.dim() != 2
        or weight.shape[1] != hidden.shape[-1]
    ):
        raise ValueError(
            f"expected hidden (B, T, H), weight (V, H), labels (B, T); got {tuple(hidden.shape)}, "
            f"{tuple(weight.shape)}, {tuple(labels.shape)}"
        )
    keep = labels != ignore_index
    lp, _ = fused_linear_token_stats(
        hidden[keep], weight, labels[keep], bias=bias, rows_per_chunk=chunk_size, save=save
    )
    return torch.zeros(labels.shape, dtype=lp.dtype, device=lp.device).masked_scatter(keep, lp)
