"""Chunked log-probs / entropy equal the plain computation (values and gradients)."""

import pytest
import torch

from src.losses.logprobs import entropy_from_logits, selective_log_softmax, sequence_logprob


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_chunked_equals_plain_values_and_grads(chunk):
    g = torch.Generator().manual_seed(1)
    logits = (3 * torch.randn(2, 7, 11, generator=g)).requires_grad_()
    labels = torch.randint(0, 11, (2, 7), generator=g)
    up = torch.randn(2, 7, generator=g)
    ours = selective_log_softmax(logits, labels, chunk_size=chunk)
    plain = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(ours, plain, atol=1e-6, rtol=1e-6)
    (g1,) = torch.autograd.grad((ours * up).sum(), logits)
    (g2,) = torch.autograd.grad((plain * up).sum(), logits)
    torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-6)


def test_gradcheck_double():
    logits = torch.randn(1, 4, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (1, 4))
    # our function computes in fp32, so check the float64 plain gradient against it loosely-but-tightly
    ours = selective_log_softmax(logits, labels, chunk_size=2)
    plain = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    (g1,) = torch.autograd.grad(ours.sum(), logits)
    (g2,) = torch.autograd.grad(plain.sum(), logits)
    torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-5)


def test_ignore_index_and_errors():
    logits = torch.randn(1, 3, 4)
    labels = torch.tensor([[1, -100, 2]])
    out = selective_log_softmax(logits, labels)
    assert out[0, 1] == 0.0
    with pytest.raises(ValueError, match="out of range"):
        selective_log_softmax(logits, torch.tensor([[1, 9, 2]]))
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        selective_log_softmax(logits[0], labels[0])


def test_bf16_inputs_finite_and_close():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 50, generator=g)
    labels = torch.randint(0, 50, (2, 5), generator=g)
    lb = logits.bfloat16().requires_grad_()
    out = selective_log_softmax(lb, labels, chunk_size=2)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    ref = torch.log_softmax(lb.float(), -1).gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert lb.grad.dtype == torch.bfloat16 and torch.isfinite(lb.grad.float()).all()


def test_entropy_matches_plain_and_uniform():
    logits = torch.randn(2, 9, 13)
    p = torch.softmax(logits, -1)
    plain = -(p * p.log()).sum(-1)
    torch.testing.assert_close(entropy_from_logits(logits, chunk_size=4), plain, atol=1e-6, rtol=1e-6)
    u = entropy_from_logits(torch.zeros(1, 2, 13))
    torch.testing.assert_close(u, torch.full((1, 2), torch.log(torch.tensor(13.0)).item()))


def test_sequence_logprob_sum_and_mean_all_masked():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    m = torch.tensor([[1, 1, 0], [0, 0, 0]])
    torch.testing.assert_close(sequence_logprob(lp, m), torch.tensor([-3.0, 0.0]))
    torch.testing.assert_close(sequence_logprob(lp, m, average=True), torch.tensor([-1.5, 0.0]))


@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_linear_equals_plain(with_bias):
    from src.losses.logprobs import linear_selective_log_softmax

    g = torch.Generator().manual_seed(5)
    h = torch.randn(2, 9, 8, generator=g, requires_grad=True)
    w = torch.randn(13, 8, generator=g, requires_grad=True)
    b = torch.randn(13, generator=g, requires_grad=True) if with_bias else None
    labels = torch.randint(0, 13, (2, 9), generator=g)
    labels[0, 3] = -100
    up = torch.randn(2, 9, generator=g)
    ours = linear_selective_log_softmax(h, w, labels, bias=b, chunk_size=4)
    logits = h @ w.T + (b if b is not None else 0)
    plain = (
        torch.log_softmax(logits, -1).gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1).masked_fill(labels < 0, 0)
    )
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=1e-5)
    params = [h, w] + ([b] if b is not None else [])
    g1 = torch.autograd.grad((ours * up).sum(), params)
    g2 = torch.autograd.grad((plain * up).sum(), params)
    for a, c in zip(g1, g2):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


def _linear_case(seed, N, H, V, *, train_head=True):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g, requires_grad=True)
    w = torch.randn(V, H, generator=g, requires_grad=train_head)
    b = torch.randn(V, generator=g, requires_grad=train_head)
    return h, w, b, torch.randint(0, V, (N,), generator=g), torch.randn(N, generator=g)


def _plain_linear(h, w, b, labels):
    z = h.double() @ w.double().T + (b.double() if b is not None else 0)
    logp = torch.log_softmax(z, -1)
    return logp.gather(-1, labels[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("entropy", [True, False])
@pytest.mark.parametrize("train_head", [True, False])
@pytest.mark.parametrize("rows", [1, 3, 64])
def test_fused_token_stats_values_entropy_and_grads(train_head, rows, entropy):
    """Both backward paths (recompute when the head trains; stored E_p[w] when it is frozen) against
    the plain fp64 log-softmax, for chunks smaller than, dividing and larger than N; with the entropy
    (log-probs kept per chunk) and without (the in-place log-sum-exp)."""
    from src.losses.logprobs import fused_linear_token_stats

    h, w, b, labels, up = _linear_case(11, 7, 5, 11, train_head=train_head)
    h.data[0] *= 40  # one row with a wide logit range: log-sum-exp must subtract its max
    lp, ent = fused_linear_token_stats(h, w, labels, bias=b, entropy=entropy, rows_per_chunk=rows)
    ref_lp, ref_ent = _plain_linear(h, w, b, labels)
    torch.testing.assert_close(lp.double(), ref_lp, atol=1e-5, rtol=1e-5)
    if entropy:
        torch.testing.assert_close(ent.double(), ref_ent, atol=1e-5, rtol=1e-5)
        assert not ent.requires_grad
    else:
        assert ent is None
    params = [h, w, b] if train_head else [h]
    ours = torch.autograd.grad((lp * up).sum(), params)
    ref = torch.autograd.grad((ref_lp * up.double()).sum(), params)
    for a, c in zip(ours, ref):
        torch.testing.assert_close(a.double(), c.double(), atol=1e-5, rtol=1e-5)


def test_fused_token_stats_no_rows_gives_zero_gradients():
    """With no rows no chunk writes the weight gradient: it must be zeros, not uninitialised memory."""
    from src.losses.logprobs import fused_linear_token_stats

    w = torch.full((6, 3), float("nan")).requires_grad_()  # nan: an uninitialised read would show
    w.data.normal_()
    h = torch.randn(0, 3, requires_grad=True)
    lp, _ = fused_linear_token_stats(h, w, torch.zeros(0, dtype=torch.long))
    lp.sum().backward()
    assert lp.shape == (0,) and torch.equal(w.grad, torch.zeros(6, 3))


def test_fused_token_stats_gradcheck_fp64():
    from src.losses.logprobs import fused_linear_token_stats

    g = torch.Generator().manual_seed(2)
    h = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(6, 3, dtype=torch.float64, generator=g, requires_grad=True)
    labels = torch.tensor([0, 5, 2, 2])
    # the kernel's log-softmax is fp32 by design, so a loose fp64 gradcheck
    assert torch.autograd.gradcheck(
        lambda a, c: fused_linear_token_stats(a, c, labels, rows_per_chunk=3)[0].double(),
        (h, w),
        eps=1e-3,
        atol=2e-3,
        rtol=2e-3,
    )


def test_fused_token_stats_bf16_autocast_matches_plain_autocast():
    """Under CPU bf16 autocast both paths run the head matmul in bf16 and the softmax in fp32."""
    from src.losses.logprobs import fused_linear_token_stats

    g = torch.Generator().manual_seed(3)
    h = torch.randn(9, 16, generator=g, requires_grad=True)
    w = torch.randn(40, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 40, (9,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp, _ = fused_linear_token_stats(h, w, labels, rows_per_chunk=4)
        z = torch.nn.functional.linear(h, w)
    assert z.dtype == torch.bfloat16
    plain = torch.log_softmax(z.float(), -1).gather(-1, labels[:, None]).squeeze(-1)
    torch.testing.assert_close(lp, plain, atol=1e-4, rtol=1e-4)
    gf = torch.autograd.grad(lp.sum(), [h, w])
    gp = torch.autograd.grad(plain.sum(), [h, w])
    for a, c in zip(gf, gp):
        torch.testing.assert_close(a, c, atol=3e-2, rtol=3e-2)


def test_fused_token_stats_rejects_bad_input():
    from src.losses.logprobs import default_rows_per_chunk, fused_linear_token_stats

    with pytest.raises(ValueError, match="label id out of range"):
        fused_linear_token_stats(torch.randn(2, 3), torch.randn(4, 3), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="expected hidden"):
        fused_linear_token_stats(torch.randn(2, 2, 3), torch.randn(4, 3), torch.tensor([0, 1]))
    assert default_rows_per_chunk(49152) == 170 and default_rows_per_chunk(10) == 4096
    # with the head's width: the chunk at least the size of the weight (fp32: H rows; bf16: H / 2)
    assert default_rows_per_chunk(49152, hidden_size=576) == 576
    assert default_rows_per_chunk(49152, hidden_size=576, weight_itemsize=2) == 288
    lp, ent = fused_linear_token_stats(
        torch.randn(0, 3), torch.randn(4, 3), torch.zeros(0, dtype=torch.long), entropy=True
    )
    assert lp.shape == (0,) and ent.shape == (0,)


def test_fused_token_stats_fp16_saved_logprobs():
    """save="fp16" skips the backward matmul; values are exact (fp32), gradients within fp16 rounding."""
    from src.losses.logprobs import fused_linear_token_stats

    h, w, b, labels, up = _linear_case(4, 13, 8, 50)
    lp, _ = fused_linear_token_stats(h, w, labels, bias=b, rows_per_chunk=5, save="fp16")
    ref_lp, _ = _plain_linear(h, w, b, labels)
    torch.testing.assert_close(lp.double(), ref_lp, atol=1e-5, rtol=1e-5)
    ours = torch.autograd.grad((lp * up).sum(), [h, w, b])
    ref = torch.autograd.grad((ref_lp * up.double()).sum(), [h, w, b])
    for a, c in zip(ours, ref):
        rel = (a.double() - c).norm() / c.norm()
        assert 1e-7 < rel < 2e-3, float(rel)  # not exact (so the fp16 path really ran), but close
    with pytest.raises(ValueError, match="save="):
        fused_linear_token_stats(h, w, labels, save="bf16")
