"""src.report: mean ± std per group over job records, paired differences, clear errors."""

import json
import statistics

import pytest

from src.report import load_records, main, paired_differences, summarise


def _records(tmp_path):
    rows = []
    for seed, (d, t) in enumerate([(0.5, 0.6), (0.7, 0.6), (0.6, 0.9)], 1):
        rows.append({"overrides": {"module.variant": "dpo", "seed": str(seed)}, "metrics": {"r": d, "kl": 1.0}})
        rows.append({"overrides": {"module.variant": "theta", "seed": str(seed)}, "metrics": {"r": t, "kl": 2.0}})
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mean_std_per_group_by_hand(tmp_path):
    rows = summarise(load_records(_records(tmp_path)), group=["module.variant"], metrics=["r", "kl"])
    assert [r["module.variant"] for r in rows] == ["dpo", "theta"] and [r["n"] for r in rows] == [3, 3]
    assert rows[0]["r"] == pytest.approx((0.6, 0.1))  # mean 0.6, sample std of (0.5, 0.7, 0.6) = 0.1
    assert rows[1]["r"] == pytest.approx((0.7, statistics.stdev([0.6, 0.6, 0.9])))
    assert rows[1]["kl"] == (2.0, 0.0)


def test_paired_differences_by_seed(tmp_path):
    recs = load_records(_records(tmp_path))
    (row,) = paired_differences(recs, group=["module.variant"], metrics=["r"], baseline="module.variant=dpo")
    mean, se, wins, n = row["r"]  # theta - dpo per seed: +0.1, -0.1, +0.3
    assert mean == pytest.approx(0.1) and se == pytest.approx(0.2 / 3**0.5) and (wins, n) == (2, 3)


def test_cli_table_and_errors(tmp_path, capsys):
    path = _records(tmp_path)
    out = tmp_path / "t.md"
    text = main(
        [
            str(path),
            "--group",
            "module.variant",
            "--metrics",
            "r",
            "--baseline",
            "module.variant=dpo",
            "--out",
            str(out),
        ]
    )
    assert "| dpo | 3 | 0.600 ± 0.100 |" in text and "+0.100 ± 0.115 [2/3]" in text
    assert out.read_text().strip() == text.strip()
    with pytest.raises(KeyError, match="metric 'typo' missing in job records.jsonl:1"):
        main([str(path), "--group", "module.variant", "--metrics", "typo"])
    with pytest.raises(ValueError, match="not a --group key"):
        main([str(path), "--group", "module.variant", "--metrics", "r", "--baseline", "seed=1"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"overrides": {}}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: not a JSON record"):
        load_records(bad)
