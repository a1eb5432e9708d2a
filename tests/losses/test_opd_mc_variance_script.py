"""scripts/opd_mc_variance.py on tiny random models: reverse-KL OPD and centred OPD+ are the same
estimator sample by sample (so identical statistics), while the uncentred paper OPD+ differs by
the constant f'(1) = 1 times the score (different variance, same mean up to sampling noise);
and for forward KL the two estimators really differ."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "opd_mc_variance", Path(__file__).resolve().parents[2] / "scripts" / "opd_mc_variance.py"
)
mc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mc)


def test_mc_variance_statistics_on_tiny_models():
    rows = mc.stats(12, 0, ["reverse_kl", "forward_kl"], overrides=("model=tiny_causal", "teacher=tiny_causal"))
    by = {(r["divergence"], r["estimator"], r["center"]): r for r in rows}
    assert len(rows) == 6
    opd, plus_c, plus = (
        by["reverse_kl", "opd", False],
        by["reverse_kl", "opd_plus", True],
        by["reverse_kl", "opd_plus", False],
    )
    for k in ("trace_cov", "mean_sq", "adv_var"):
        assert plus_c[k] == pytest.approx(opd[k], rel=1e-4, abs=1e-10), k
    assert plus["trace_cov"] != pytest.approx(opd["trace_cov"], rel=1e-3)
    assert by["forward_kl", "opd", False]["trace_cov"] != pytest.approx(
        by["forward_kl", "opd_plus", True]["trace_cov"], rel=1e-3
    )
    assert all(r["trace_cov"] > 0 and r["mean_sq"] > 0 for r in rows)
