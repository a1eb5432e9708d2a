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


def _sweep_with_history(tmp_path):
    """Two estimators x two seeds; each job logged val/acc at steps 24 and 49 and train/time/update_s."""
    acc = {("a", 1): (0.2, 0.4), ("a", 2): (0.4, 0.6), ("b", 1): (0.1, 0.2), ("b", 2): (0.3, 0.2)}
    for j, ((est, seed), (v1, v2)) in enumerate(acc.items()):
        d = tmp_path / "sweep" / str(j)
        (d / "csv").mkdir(parents=True)
        rec = {"overrides": {"estimator": est, "seed": str(seed)}, "metrics": {"val/acc": v2}}
        (d / "metrics.json").write_text(json.dumps(rec))
        (d / "csv" / "metrics.csv").write_text(
            f"epoch,step,train/time/update_s,val/acc\n0,10,{seed}.0,\n0,24,,{v1}\n0,30,{seed + 2}.0,\n0,49,,{v2}\n"
        )
    return tmp_path / "sweep"


def test_curves_and_means_over_the_logged_history(tmp_path):
    from src.report import curves, export_records, metric_value

    sweep = _sweep_with_history(tmp_path)
    recs = load_records(sweep)
    table = curves(recs, group=["estimator"], metric="val/acc")
    (s1, m1, sd1, n1), (s2, m2, sd2, n2) = table[("a",)]
    assert (
        (s1, s2, n1) == (24, 49, 2) and m1 == pytest.approx(0.3) and sd1 == pytest.approx(statistics.stdev([0.2, 0.4]))
    )
    assert table[("b",)][1][1:3] == pytest.approx((0.2, 0.0))
    assert metric_value(recs[0], "mean:train/time/update_s") == pytest.approx(2.0)  # (1 + 3) / 2
    rows = summarise(recs, group=["estimator"], metrics=["mean:train/time/update_s"])
    assert rows[0]["mean:train/time/update_s"] == pytest.approx((2.5, statistics.stdev([2.0, 3.0])))
    # committed as JSONL with the history: the same curves without the job folders
    out = export_records(sweep, tmp_path / "rec.jsonl", series=["val/acc", "train/time/update_s"])
    again = load_records(out)
    assert curves(again, group=["estimator"], metric="val/acc") == table
    assert not any(k.startswith("_") for k in json.loads(out.read_text().splitlines()[0]))
    with pytest.raises(KeyError, match="no logged history of 'val/nope'"):
        curves(again, group=["estimator"], metric="val/nope")
