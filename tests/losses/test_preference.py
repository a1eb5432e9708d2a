"""Preference losses: hand-derived golden values, Mallows links vs brute force, TRL parity."""

import itertools
import math

import pytest
import torch

from src.losses.preference import dispersion_from_entropy, mallows_phi_log_link, preference_loss

t = lambda *x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
# pc=-1, pr=-2, rc=rr=-1.5  ->  Delta = (-1 + 1.5) - (-2 + 1.5) = 1.0
PC, PR, RC, RR = t(-1.0), t(-2.0), t(-1.5), t(-1.5)


def test_dpo_golden():
    """-log sigmoid(beta * Delta) = log(1 + e^{-0.5}) at beta = 0.5, Delta = 1."""
    out = preference_loss(PC, PR, RC, RR, loss_type="dpo", beta=0.5)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-0.5)), abs=1e-6)  # 0.474077
    assert out.metrics["rewards/margin"].item() == pytest.approx(0.5)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.25)
    assert out.metrics["rewards/accuracy"].item() == 1.0


def test_label_smoothing_golden():
    """cDPO: 0.9 * log(1 + e^{-0.5}) + 0.1 * log(1 + e^{0.5})."""
    out = preference_loss(PC, PR, RC, RR, loss_type="dpo", beta=0.5, label_smoothing=0.1)
    exp = 0.9 * math.log1p(math.exp(-0.5)) + 0.1 * math.log1p(math.exp(0.5))
    assert out.loss.item() == pytest.approx(exp, abs=1e-6)


def test_ipo_golden():
    """(Delta - 1/(2 beta))^2 = (1 - 2)^2 = 1 at beta = 0.25."""
    assert preference_loss(PC, PR, RC, RR, loss_type="ipo", beta=0.25).loss.item() == pytest.approx(1.0)


def test_simpo_golden():
    """-log sigmoid(beta (pc - pr) - gamma) = log(1 + e^{-1.5}) at beta 2, gamma 0.5 (no reference)."""
    out = preference_loss(PC, PR, None, None, loss_type="simpo", beta=2.0, gamma=0.5)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-1.5)), abs=1e-6)  # 0.201413


def test_hinge_golden():
    assert preference_loss(PC, PR, RC, RR, loss_type="hinge", beta=0.5).loss.item() == pytest.approx(0.5)


def test_mallows_theta_golden_and_dpo_reduction():
    """w = 2 doubles beta: log(1 + e^{-1}); w = 1 (phi = 1/e, neutral) is exactly DPO."""
    out = preference_loss(PC, PR, RC, RR, loss_type="mallows_theta", beta=0.5, dispersion=t(2.0))
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-6)  # 0.313262
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(16, generator=g) for _ in range(4))
    a = preference_loss(pc, pr, rc, rr, loss_type="mallows_theta", beta=0.3, dispersion=torch.ones(16))
    b = preference_loss(pc, pr, rc, rr, loss_type="dpo", beta=0.3)
    assert torch.equal(a.loss, b.loss)
    # constant w = k is DPO with beta * k
    c = preference_loss(pc, pr, rc, rr, loss_type="mallows_theta", beta=0.3, dispersion=torch.full((16,), 2.0))
    d = preference_loss(pc, pr, rc, rr, loss_type="dpo", beta=0.6)
    torch.testing.assert_close(c.loss, d.loss)


def test_mallows_theta_gradient_and_no_grad_to_dispersion():
    """dL/dDelta = -beta w sigmoid(-beta w Delta); the dispersion receives no gradient."""
    pc = t(-1.0).requires_grad_()
    w = t(1.7).requires_grad_()
    out = preference_loss(pc, PR, RC, RR, loss_type="mallows_theta", beta=0.5, dispersion=w)
    out.loss.backward()
    z = 0.5 * 1.7 * 1.0
    assert pc.grad.item() == pytest.approx(-0.5 * 1.7 / (1 + math.exp(z)), abs=1e-6)
    assert w.grad is None


def _kendall_pairwise(n, phi):
    """P(item ranked i beats item ranked j) by enumerating all n! rankings with weight phi^inversions."""
    win = {}
    Z = 0.0
    for perm in itertools.permutations(range(n)):  # perm[pos] = item; central ranking = identity
        inv = sum(1 for a in range(n) for b in range(a + 1, n) if perm[a] > perm[b])
        w = phi**inv
        Z += w
        pos = {item: p for p, item in enumerate(perm)}
        for i in range(n):
            for j in range(i + 1, n):
                if pos[i] < pos[j]:
                    win[(i, j)] = win.get((i, j), 0.0) + w
    return {k: v / Z for k, v in win.items()}


@pytest.mark.parametrize("phi", [0.1, 0.5, 0.9])
def test_phi_link_equals_brute_force_kendall(phi):
    pw = _kendall_pairwise(6, phi)
    for (i, j), p in pw.items():
        s = float(j - i)
        got = mallows_phi_log_link(t(s), torch.tensor(phi)).exp().item()
        assert got == pytest.approx(p, abs=1e-5), (i, j)
        got_neg = mallows_phi_log_link(t(-s), torch.tensor(phi)).exp().item()
        assert got_neg == pytest.approx(1 - p, abs=1e-5)


def test_phi_link_properties_and_golden_at_zero():
    phi = torch.tensor(0.5)
    s = torch.linspace(0.01, 20, 200)
    g = mallows_phi_log_link(s, phi).exp()
    assert (g[1:] >= g[:-1] - 1e-7).all() and (g < 1).all() and (g > 0.5).all()
    assert mallows_phi_log_link(t(1.0), phi).exp().item() == pytest.approx(1 / 1.5, abs=1e-6)
    # right limit at 0: 1/(1-phi) + 1/log(phi) = 2 - 1/ln 2; loss = -log of it = 0.584750
    g0 = 2 - 1 / math.log(2)
    out = preference_loss(t(0.0), t(0.0), t(0.0), t(0.0), loss_type="mallows_phi", beta=1.0, dispersion=t(math.log(2)))
    assert out.loss.item() == pytest.approx(-math.log(g0), abs=1e-5)
    # the gradient at Delta = 0 is the right derivative (non-zero: training can start at the reference)
    z0 = torch.zeros(1, requires_grad=True)
    (g_at_0,) = torch.autograd.grad(-mallows_phi_log_link(z0, phi).sum(), z0)
    h, d = 1e-6, lambda x: torch.tensor([x], dtype=torch.float64)
    right = (-mallows_phi_log_link(d(h), phi) + mallows_phi_log_link(d(0.0), phi)).item() / h
    assert g_at_0.item() == pytest.approx(right, rel=1e-4) and g_at_0.item() == pytest.approx(-0.2040, abs=1e-4)
    # phi -> 1 gives 1/2 (no signal)
    assert mallows_phi_log_link(t(3.0), torch.tensor(0.999999)).exp().item() == pytest.approx(0.5, abs=1e-3)
    # finite for extreme margins
    assert torch.isfinite(mallows_phi_log_link(t(-200.0, 200.0, 1e-9), phi)).all()


def test_phi_loss_gradient_matches_finite_difference():
    z = torch.tensor([0.7, 2.3, -1.2], dtype=torch.float32, requires_grad=True)
    phi = torch.tensor(0.4)
    (g,) = torch.autograd.grad(-mallows_phi_log_link(z, phi).sum(), z)
    eps = 1e-3
    fd = (-mallows_phi_log_link(z.detach() + eps, phi) + mallows_phi_log_link(z.detach() - eps, phi)) / (2 * eps)
    torch.testing.assert_close(g, fd, atol=2e-3, rtol=2e-3)


def test_dispersion_from_entropy():
    V = 50
    logv = math.log(V)
    full = torch.full((2, 4), logv)  # uniform reference: Hbar = 1 -> w = 0
    m = torch.ones(2, 4)
    w, phi = dispersion_from_entropy(full, full, m, m, vocab_size=V, scale=0.29)
    torch.testing.assert_close(w, torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(phi, torch.ones(2), atol=1e-6, rtol=0)
    # Hbar = 0.01 with c = 0.29: w = -0.29 * log(0.01) = 1.3355 (official table: 1.34)
    h = torch.full((1, 3), 0.01 * logv)
    w, _ = dispersion_from_entropy(h, h, torch.ones(1, 3), torch.ones(1, 3), vocab_size=V, scale=0.29)
    assert w.item() == pytest.approx(1.3355, abs=1e-3)
    # masked positions do not count; the estimate is a per-token mean (length-independent)
    h2 = torch.tensor([[0.01 * logv, 99.0, 99.0]])
    w2, _ = dispersion_from_entropy(
        h2, h2, torch.tensor([[1, 0, 0]]), torch.tensor([[1, 0, 0]]), vocab_size=V, scale=0.29
    )
    torch.testing.assert_close(w2, w)
    # monotone decreasing in entropy
    lo, _ = dispersion_from_entropy(h, h, torch.ones(1, 3), torch.ones(1, 3), vocab_size=V)
    hi, _ = dispersion_from_entropy(h * 10, h * 10, torch.ones(1, 3), torch.ones(1, 3), vocab_size=V)
    assert lo.item() > hi.item() > 0


def test_errors():
    with pytest.raises(ValueError, match="valid: dpo, ipo"):
        preference_loss(PC, PR, RC, RR, loss_type="kto")
    with pytest.raises(ValueError, match="needs a per-example `dispersion`"):
        preference_loss(PC, PR, RC, RR, loss_type="mallows_theta")
    with pytest.raises(ValueError, match="needs reference log-probs"):
        preference_loss(PC, PR, loss_type="dpo")
    with pytest.raises(ValueError, match="beta"):
        preference_loss(PC, PR, RC, RR, beta=0.0)


def test_tie_counts_half_accuracy():
    out = preference_loss(t(-1.0, -1.0), t(-2.0, -1.0), t(-1.0, -1.0), t(-2.0, -1.0), beta=0.1)
    assert out.metrics["rewards/accuracy"].item() == 0.5


def test_matches_trl_dpo_sigmoid(tmp_path, char_tok):
    """Our log-probs + DPO loss equal TRL's DPOTrainer._compute_loss on identical inputs."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from src.losses.logprobs import selective_log_softmax, sequence_logprob
    from src.models.tiny import tiny_causal_lm

    policy = tiny_causal_lm(char_tok, seed=1)
    ref = tiny_causal_lm(char_tok, seed=2)
    ds = Dataset.from_list([{"prompt": "ab", "chosen": "cd", "rejected": "ef"}] * 4)
    args = DPOConfig(
        output_dir=str(tmp_path),
        beta=0.3,
        loss_type=["sigmoid"],
        report_to=[],
        use_cpu=True,
        per_device_train_batch_size=2,
        max_steps=1,
        logging_steps=1,
    )
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=ds, processing_class=char_tok)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, len(char_tok), (4, 9), generator=g)
    completion = torch.zeros(4, 9, dtype=torch.long)
    completion[:, 4:] = 1
    completion[1, 7:] = 0  # ragged
    attn = torch.ones_like(ids)
    attn[1, 7:] = 0
    inputs = {"input_ids": ids, "attention_mask": attn, "completion_mask": completion}
    policy.train()
    trl_loss = trainer._compute_loss(policy, inputs, return_outputs=False)
    trl_loss = trl_loss[0] if isinstance(trl_loss, tuple) else trl_loss

    def seq(model):
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
        return sequence_logprob(selective_log_softmax(logits, ids[:, 1:]), completion[:, 1:])

    s, r = seq(policy), seq(ref).detach()
    ours = preference_loss(s[:2], s[2:], r[:2], r[2:], loss_type="dpo", beta=0.3).loss
    torch.testing.assert_close(ours, trl_loss.float(), atol=1e-5, rtol=1e-5)
