"""Counter-based random numbers keyed by (seed, step, example, sample): rank- and batch-invariant.

Sampling from the global RNG makes a rollout depend on which other rows share the batch, on the
world size and on everything that consumed the stream before. With ``rng: keyed`` the rollout
modules instead draw every random number from a hash of ``(seed, global step, dataset index,
sample number, call counter, element)``: the same example at the same step gets the same noise on
1 or 8 GPUs, in any batch, after any resume. That is what lets the DDP test compare a 2-process run
with a single process exactly, and what makes a rollout reproducible from its identifiers alone.

The hash is ``lowbias32`` (Chris Wellons' integer hash; good avalanche, passes the usual bias tests)
applied twice per element, computed in int64 with every product kept below ``2**63``, so results are
identical on every device. Uniforms have 24 random bits (fp32 resolution); categorical draws use
the Gumbel-max trick, ``argmax(log p + G)``, an exact sample from ``softmax(log p)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

_M32 = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """``(x * c) mod 2**32`` for ``0 <= x < 2**32`` without int64 overflow (split ``c`` in 16-bit halves)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def hash32(x: Tensor) -> Tensor:
    """lowbias32 on int64 tensors holding 32-bit values."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def row_keys(seed: int, step: int, index: Tensor, n: int = 1) -> Tensor:
    """Keys ``(B * n,)`` for examples ``index`` (dataset indices), each repeated for ``n`` samples
    (the ``repeat_interleave(n)`` layout of grouped rollouts)."""
    idx = index.long().repeat_interleave(n)
    j = torch.arange(n, device=index.device).repeat(index.numel())
    h = hash32(torch.full_like(idx, seed & _M32) ^ 0x9E3779B9)
    for part in (step, idx, j):
        h = hash32(h ^ (part & _M32))
    return h


def keyed_uniform(keys: Tensor, counter: int, shape: tuple[int, ...]) -> Tensor:
    """Uniforms in ``(0, 1)`` of shape ``(B, *shape)``; row ``b`` depends only on ``(keys[b], counter)``."""
    n = 1
    for s in shape:
        n *= s
    base = hash32(keys.long() ^ hash32(torch.tensor(counter & _M32, device=keys.device)))
    elem = hash32(torch.arange(n, device=keys.device) + 0x632BE5AB)
    h = hash32(hash32(base[:, None] ^ elem[None, :]) ^ 0x5BD1E995)
    return (((h >> 8).float() + 0.5) / float(1 << 24)).view(keys.shape[0], *shape)


def keyed_gumbel(keys: Tensor, counter: int, shape: tuple[int, ...]) -> Tensor:
    """Standard Gumbel noise ``-log(-log U)`` of shape ``(B, *shape)``."""
    return -torch.log(-torch.log(keyed_uniform(keys, counter, shape)))


def keyed_categorical(logits: Tensor, keys: Tensor, counter: int) -> Tensor:
    """One sample per row of ``logits (B, ..., K)`` by Gumbel-max (exact; -inf logits never win)."""
    g = keyed_gumbel(keys, counter, tuple(logits.shape[1:]))
    return (logits.float() + g).argmax(-1)
