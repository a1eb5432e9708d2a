"""OPD vs OPD+ by exact enumeration on a tiny vocabulary (V=3, T=2..3).

The student is a tabular autoregressive policy (one logit vector per prefix), so every sequence
and its probability can be enumerated. For every f in the family we compute

* the true gradient of the objective by autograd through the exact objective: the full J (token
  level: E_pi sum_t D_f(pi_t || q_t), prefix distribution included; sequence level: D_f(pi(y)||q(y)))
  and the paper's frozen-prefix objective (sum_t E_{y<t ~ sg(pi)} D_f(pi_t || q_t)), and
* the exact expectation of each estimator's gradient, sum_y sg(pi(y)) * grad surrogate(y).

OPD+ must equal the truth (1e-5) for every f, for the paper's estimator (discount 0) against the
frozen-prefix objective and for ours (discount 1) against the full J; stop-gradient OPD must equal
it for reverse KL and differ for every other f (the paper's bias). Clipping is shown to be biased.
A seeded Monte-Carlo average converges to the truth.
"""

import itertools
import math

import pytest
import torch

from src.losses.distillation import opd_full_vocab_loss, opd_loss
from src.losses.divergences import DIVERGENCES

A, LAM = 0.3, 0.3  # alpha-divergence order, JS weight
# Generators written independently of src (plain r-space formulas).
F = {
    "reverse_kl": lambda r: r * torch.log(r),
    "forward_kl": lambda r: -torch.log(r),
    "js": lambda r: LAM * r * torch.log(r) - (LAM * r + 1 - LAM) * torch.log(LAM * r + 1 - LAM),
    "tv": lambda r: 0.5 * (r - 1).abs(),
    "alpha": lambda r: (r**A - A * r - (1 - A)) / (A * (A - 1)),
    "chi2": lambda r: (r - 1) ** 2,
    "hellinger": lambda r: (r.sqrt() - 1) ** 2,
}


class Tabular:
    """Autoregressive policy over V tokens, T steps, one logit row per prefix."""

    def __init__(self, V, T, seed, scale=1.0):
        self.V, self.T = V, T
        self.prefixes = [p for t in range(T) for p in itertools.product(range(V), repeat=t)]
        self.row = {p: i for i, p in enumerate(self.prefixes)}
        g = torch.Generator().manual_seed(seed)
        self.logits = (scale * torch.randn(len(self.prefixes), V, generator=g, dtype=torch.float64)).requires_grad_()

    def logp_table(self):
        return torch.log_softmax(self.logits, -1)

    def token_logps(self, seq, table=None):
        table = self.logp_table() if table is None else table
        return torch.stack([table[self.row[seq[:t]], seq[t]] for t in range(len(seq))])


def sequences(V, T):
    return list(itertools.product(range(V), repeat=T))


def true_objective(stu, tea, name, level, *, frozen_prefix=False):
    ps, pq = stu.logp_table(), tea.logp_table().detach()
    f = F[name]
    if level == "token":
        total = 0.0
        for p in stu.prefixes:
            prefix_prob = stu.token_logps(p, ps).sum().exp() if p else torch.tensor(1.0, dtype=torch.float64)
            if frozen_prefix:  # the paper's objective: the visited prefixes carry no gradient
                prefix_prob = prefix_prob.detach()
            pi_t, q_t = ps[stu.row[p]].exp(), pq[stu.row[p]].exp()
            total = total + prefix_prob * (q_t * f(pi_t / q_t)).sum()
        return total
    total = 0.0
    for y in sequences(stu.V, stu.T):
        lpi, lq = stu.token_logps(y, ps).sum(), tea.token_logps(y, pq).sum()
        total = total + lq.exp() * f((lpi - lq).exp())
    return total


def expected_estimator(stu, tea, name, level, estimator, **kw):
    ps, pq = stu.logp_table(), tea.logp_table().detach()
    total = 0.0
    for y in sequences(stu.V, stu.T):
        s = stu.token_logps(y, ps)
        q = tea.token_logps(y, pq)
        out = opd_loss(
            s[None],
            q[None],
            torch.ones(1, len(y)),
            estimator=estimator,
            divergence=name,
            level=level,
            alpha=A,
            js_weight=LAM,
            reduce="sum",
            **kw,
        )
        total = total + s.sum().exp().detach() * out.loss
    return total


def grad(fn, stu):
    (g,) = torch.autograd.grad(fn, stu.logits, retain_graph=True)
    return g


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("name", DIVERGENCES)
def test_opd_plus_unbiased_opd_biased_exact_full_objective(name, level, center):
    """Our extension (discount 1) against the full J."""
    T = 3 if level == "token" else 2
    stu, tea = Tabular(3, T, seed=1), Tabular(3, T, seed=2)
    truth = grad(true_objective(stu, tea, name, level), stu)
    plus = grad(expected_estimator(stu, tea, name, level, "opd_plus", discount=1.0, center=center), stu)
    plain = grad(expected_estimator(stu, tea, name, level, "opd", discount=1.0, center=center), stu)
    assert truth.abs().max() > 1e-3  # non-trivial problem
    torch.testing.assert_close(plus, truth.to(plus.dtype), atol=1e-5, rtol=1e-5)
    if name == "reverse_kl":  # r h'(r) = 1 is constant: the stop-gradient is unbiased
        torch.testing.assert_close(plain, truth.to(plain.dtype), atol=1e-5, rtol=1e-5)
    else:
        assert (plain - truth).abs().max() > 1e-3, f"OPD should be biased for {name}"


@pytest.mark.parametrize("name", DIVERGENCES)
def test_paper_estimator_exact_for_frozen_prefix_objective(name):
    """The paper's estimator (defaults: discount 0, no centring) is the exact gradient of the
    frozen-prefix objective, and not of the full J; OPD (stop-gradient) is biased except reverse KL."""
    stu, tea = Tabular(3, 3, seed=11), Tabular(3, 3, seed=12)
    frozen = grad(true_objective(stu, tea, name, "token", frozen_prefix=True), stu)
    full = grad(true_objective(stu, tea, name, "token"), stu)
    plus = grad(expected_estimator(stu, tea, name, "token", "opd_plus"), stu)
    plain = grad(expected_estimator(stu, tea, name, "token", "opd"), stu)
    torch.testing.assert_close(plus, frozen, atol=1e-6, rtol=1e-6)
    assert (full - frozen).norm() > 1e-2 * full.norm()  # the two objectives really differ here
    if name == "reverse_kl":
        torch.testing.assert_close(plain, frozen, atol=1e-6, rtol=1e-6)
    else:
        assert (plain - frozen).abs().max() > 1e-3, f"OPD should be biased for {name}"


def test_paper_table_1_advantages():
    """Table 1 of the paper in u = q/pi space, written independently of src: OPD+ w_f(u) and OPD
    -f(u); our loss minimises A log pi, so A = -w (OPD+) and A = f(u) (OPD)."""
    from src.losses.distillation import distillation_advantages

    u = torch.tensor([[0.05, 0.3, 1.0, 2.0, 7.0]], dtype=torch.float64)
    s_lp, q_lp, m = torch.zeros_like(u), u.log(), torch.ones_like(u)  # pi = 1 at log scale 0, q/pi = u
    table = {  # name: (f_paper(u), w_f(u))
        "forward_kl": (u * u.log(), u),
        "reverse_kl": (-u.log(), u.log() - 1),
        "js": (0.5 * (u * u.log() - (1 + u) * ((1 + u) / 2).log()), 0.5 * ((1 + u) / 2).log()),
    }
    for name, (f_u, w_u) in table.items():
        plus, _ = distillation_advantages(s_lp, q_lp, m, estimator="opd_plus", divergence=name)
        plain, _ = distillation_advantages(s_lp, q_lp, m, estimator="opd", divergence=name)
        torch.testing.assert_close(plus.double(), -w_u, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(plain.double(), f_u, atol=1e-6, rtol=1e-6)
    # the paper's reverse-KL pair differs by the constant u f'(u) = -1: the RKL vs RKL+ arm exists
    a, _ = distillation_advantages(s_lp, q_lp, m, estimator="opd_plus", divergence="reverse_kl")
    b, _ = distillation_advantages(s_lp, q_lp, m, estimator="opd", divergence="reverse_kl")
    torch.testing.assert_close(a - b, torch.ones_like(a, dtype=a.dtype))
    a, _ = distillation_advantages(s_lp, q_lp, m, estimator="opd_plus", divergence="reverse_kl", center=True)
    torch.testing.assert_close(a, b)  # centred, they coincide sample by sample


def test_discounted_future_by_hand():
    from src.losses.distillation import discounted_future

    h = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    torch.testing.assert_close(discounted_future(h, 0.0), torch.zeros_like(h))
    torch.testing.assert_close(discounted_future(h, 1.0), torch.tensor([[9.0, 7.0, 4.0, 0.0]]))
    g = 0.5  # F_0 = .5*2 + .25*3 + .125*4 = 2.25; F_1 = .5*3 + .25*4 = 2.5; F_2 = 2
    torch.testing.assert_close(discounted_future(h, g), torch.tensor([[2.25, 2.5, 2.0, 0.0]]))


@pytest.mark.parametrize("kw", [{"max_abs_log_ratio": 0.3}, {"max_abs_advantage": 0.3}])
def test_clipping_is_biased_and_inactive_clip_is_not(kw):
    stu, tea = Tabular(3, 3, seed=13, scale=2.0), Tabular(3, 3, seed=14, scale=2.0)
    frozen = grad(true_objective(stu, tea, "forward_kl", "token", frozen_prefix=True), stu)
    clipped = grad(expected_estimator(stu, tea, "forward_kl", "token", "opd_plus", **kw), stu)
    assert (clipped - frozen).norm() > 0.05 * frozen.norm()
    loose = {k: 1e6 for k in kw}
    same = grad(expected_estimator(stu, tea, "forward_kl", "token", "opd_plus", **loose), stu)
    torch.testing.assert_close(same, frozen, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_full_vocab_estimator_exact(name):
    stu, tea = Tabular(3, 3, seed=5), Tabular(3, 3, seed=6)
    truth = grad(true_objective(stu, tea, name, "token"), stu)
    ps, pq = stu.logp_table(), tea.logp_table().detach()
    total, total_topk = 0.0, 0.0
    for y in sequences(3, 3):
        rows = [stu.row[y[:t]] for t in range(3)]
        s_full, q_full = ps[rows][None], pq[rows][None]
        tok, m = torch.tensor([y]), torch.ones(1, 3)
        w = stu.token_logps(y, ps).sum().exp().detach()
        out = opd_full_vocab_loss(s_full, q_full, tok, m, divergence=name, alpha=A, js_weight=LAM, reduce="sum")
        total = total + w * out.loss
        ids = torch.arange(3).expand(1, 3, 3)
        out_k = opd_full_vocab_loss(
            s_full, q_full, tok, m, divergence=name, alpha=A, js_weight=LAM, teacher_topk_ids=ids, reduce="sum"
        )
        total_topk = total_topk + w * out_k.loss
    g = grad(total, stu)
    torch.testing.assert_close(g, truth.to(g.dtype), atol=1e-5, rtol=1e-5)
    gk = grad(total_topk, stu)
    torch.testing.assert_close(gk, truth.to(gk.dtype), atol=1e-4, rtol=1e-4)  # tail bucket of mass 1e-6


def _sample(stu, n, seed):
    g = torch.Generator().manual_seed(seed)
    table = stu.logp_table().detach().exp()
    seqs = torch.zeros(n, stu.T, dtype=torch.long)
    for t in range(stu.T):
        rows = torch.tensor([stu.row[tuple(s[:t].tolist())] for s in seqs])
        seqs[:, t] = torch.multinomial(table[rows], 1, generator=g).squeeze(-1)
    return seqs


@pytest.mark.parametrize("name", ["chi2", "js"])
def test_monte_carlo_converges_to_exact(name):
    stu, tea = Tabular(3, 2, seed=3), Tabular(3, 2, seed=4)
    truth = grad(true_objective(stu, tea, name, "token"), stu)
    seqs = _sample(stu, 40000, seed=0)
    ps, pq = stu.logp_table(), tea.logp_table().detach()
    rows = torch.tensor([[stu.row[tuple(s[:t].tolist())] for t in range(2)] for s in seqs])
    s_lp = ps[rows, seqs]
    q_lp = pq[rows, seqs]
    m = torch.ones_like(s_lp)
    kw = {"divergence": name, "alpha": A, "js_weight": LAM, "discount": 1.0}
    mc_plus = grad(opd_loss(s_lp, q_lp, m, estimator="opd_plus", **kw).loss, stu)
    mc_opd = grad(opd_loss(s_lp, q_lp, m, estimator="opd", **kw).loss, stu)
    err_plus = ((mc_plus - truth).norm() / truth.norm()).item()
    err_opd = ((mc_opd - truth).norm() / truth.norm()).item()
    assert err_plus < 0.05, err_plus
    assert err_opd > 4 * err_plus  # the bias is visible above the Monte-Carlo noise


def test_divergence_metric_is_unbiased_estimate():
    stu, tea = Tabular(3, 2, seed=7), Tabular(3, 2, seed=8)
    ps, pq = stu.logp_table().detach(), tea.logp_table().detach()
    exp_metric = 0.0
    for y in sequences(3, 2):
        s, q = stu.token_logps(y, ps), tea.token_logps(y, pq)
        out = opd_loss(s[None], q[None], torch.ones(1, 2), divergence="chi2")
        exp_metric += s.sum().exp() * out.metrics["divergence"]
    truth = true_objective(stu, tea, "chi2", "token").detach()
    assert math.isclose(float(exp_metric), float(truth), rel_tol=1e-5)


def test_masking_and_errors():
    s = torch.randn(2, 4, requires_grad=True)
    q = torch.randn(2, 4)
    m = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
    out = opd_loss(s, q, m, divergence="forward_kl")
    out.loss.backward()
    assert torch.isfinite(out.loss) and (s.grad[:, 2:] == 0).all() and (s.grad[1] == 0).all()
    z = opd_loss(s, q, torch.zeros(2, 4))
    assert z.loss.item() == 0.0
    with pytest.raises(ValueError, match="valid: opd, opd_plus"):
        opd_loss(s, q, m, estimator="opdx")
    with pytest.raises(ValueError, match="valid: reverse_kl"):
        opd_loss(s, q, m, divergence="kl")
    with pytest.raises(ValueError, match="discount"):
        opd_loss(s, q, m, discount=1.5)
    with pytest.raises(ValueError, match="max_abs_log_ratio"):
        opd_loss(s, q, m, max_abs_log_ratio=0.0)
