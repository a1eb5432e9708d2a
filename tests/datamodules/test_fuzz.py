"""Fuzzing (hypothesis): loaders and rewards give a clear error or a 0/1 reward, never a crash."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from src.datamodules.errors import BadRecordError
from src.datamodules.preference import normalize_record
from src.datamodules.tasks.math import math_reward

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
records = st.dictionaries(
    st.sampled_from(["prompt", "chosen", "rejected", "dispersion", "x"]), json_values, max_size=5
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rec=records | json_values)
def test_preference_records_fuzz(char_tok, rec):
    try:
        out = normalize_record(rec, tokenizer=char_tok, where="fuzz row 0")
    except BadRecordError as e:
        assert "fuzz row 0" in str(e)
    else:
        assert out["chosen"] != out["rejected"] and out["prompt"].strip()


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=400), st.sampled_from(["19", "0.5", "\\frac{1}{2}", "-3"]))
def test_math_reward_fuzz(text, gold):
    assert math_reward(text, gold) in (0.0, 1.0)
