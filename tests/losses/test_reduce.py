"""Reduction: modes on hand-built masks, all-masked -> 0, and micro-batch x accumulation x world-size invariance."""

import pytest
import torch

from src.losses.reduce import aggregate, count_items


def test_modes_hand_values():
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # tokens 1, 2, 4: token mean = 7/3; seq means (1.5, 4) -> 2.75; seq sums (3, 4) -> 3.5
    assert aggregate(v, m, mode="token_mean").item() == pytest.approx(7 / 3)
    assert aggregate(v, m, mode="seq_mean_token_mean").item() == pytest.approx(2.75)
    assert aggregate(v, m, mode="seq_mean_token_sum").item() == pytest.approx(3.5)
    assert aggregate(v, m, mode="sum").item() == pytest.approx(7.0)


def test_all_masked_is_zero_with_finite_grad():
    v = torch.full((2, 3), float("nan")).requires_grad_()
    m = torch.zeros(2, 3)
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "sum"):
        out = aggregate(v, m, mode=mode)
        assert out.item() == 0.0
        (g,) = torch.autograd.grad(out, v)
        assert torch.isfinite(g).all()


def test_unknown_mode_and_shape_errors():
    with pytest.raises(ValueError, match="valid: token_mean"):
        aggregate(torch.ones(2, 2), torch.ones(2, 2), mode="mean")
    with pytest.raises(ValueError, match="differ in shape"):
        aggregate(torch.ones(2, 2), torch.ones(2, 3))


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
def test_invariance_microbatch_accumulation_world(mode):
    """(micro 8, accum 1) == (2, 4) == (4, 1 x 2 simulated ranks): same gradient as the full batch.

    Ragged masks make the per-micro-batch token counts differ, which is exactly what breaks a
    local mean. The framework divides by accum (Lightning) and averages over ranks (DDP); we pass
    the global count and loss_scale = accum * world to cancel it.
    """
    g = torch.Generator().manual_seed(0)
    B, T = 8, 6
    x = torch.randn(B, T, generator=g)
    lengths = torch.tensor([1, 6, 2, 5, 3, 3, 6, 1])
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    w = torch.randn(T, requires_grad=True)

    def grad_for(micro: int, accum: int, world: int) -> torch.Tensor:
        n_global = count_items(mask, mode=mode)  # would be all-reduced in practice
        total = torch.zeros(T)
        per_rank = B // world
        for r in range(world):
            rank_grad = torch.zeros(T)
            for a in range(accum):
                s = r * per_rank + a * micro
                vals = x[s : s + micro] * w
                loss = aggregate(vals, mask[s : s + micro], mode=mode, num_items=n_global, loss_scale=accum * world)
                (gw,) = torch.autograd.grad(loss / accum, w)  # Lightning divides by accum
                rank_grad += gw
            total += rank_grad / world  # DDP averages over ranks
        return total

    full = grad_for(8, 1, 1)
    ref_loss = aggregate(x * w, mask, mode=mode)
    (ref,) = torch.autograd.grad(ref_loss, w)
    torch.testing.assert_close(full, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad_for(2, 4, 1), ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad_for(4, 1, 2), ref, atol=1e-6, rtol=1e-6)
    # and the naive local mean does NOT have this property (the test can fail)
    if mode == "token_mean":  # seq modes with equal micro-batches happen to agree locally
        naive = torch.zeros(T)
        for a in range(4):
            s = a * 2
            loss = aggregate(x[s : s + 2] * w, mask[s : s + 2], mode=mode)
            naive += torch.autograd.grad(loss / 4, w)[0]
        assert not torch.allclose(naive, ref, atol=1e-4)
