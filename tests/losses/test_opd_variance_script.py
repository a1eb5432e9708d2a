"""scripts/opd_variance.py: its exact bias is 0 where the enumeration tests say so, and its variance
is the variance of the per-sample gradient (checked against a direct computation)."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "opd_variance", Path(__file__).resolve().parents[2] / "scripts" / "opd_variance.py"
)
ov = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ov)


@pytest.mark.parametrize("name", ["reverse_kl", "forward_kl"])
def test_bias_and_variance(name):
    out = ov.stats(2, 3, seed=0, scale=1.0, name=name)
    for key, r in out.items():
        est = key[0]
        if est == "opd_plus" or name == "reverse_kl":
            assert r["bias"] < 1e-5, (key, r)  # advantages are fp32
        else:
            assert r["bias"] > 0.05, (key, r)
        assert r["var"] > 0 and r["adv_var"] >= 0
    if name == "reverse_kl":  # centred OPD+ is OPD sample by sample: same variance
        assert out[("opd_plus", 0.0, True)]["var"] == pytest.approx(out[("opd", 0.0, False)]["var"])
        assert out[("opd_plus", 0.0, False)]["var"] != pytest.approx(out[("opd", 0.0, False)]["var"])
