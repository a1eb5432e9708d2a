"""src.pareto: the non-dominated set by hand, seed averaging, the files it writes, and a real two-job
sweep (train.py -m, offline W&B) whose frontier CSV/PNG and W&B summary run are checked."""

import json
import math
import os
import subprocess
import sys

import pytest

from src.pareto import frontier, load_jobs, main, pareto_mask, parse_axis, points_from_jobs
from tests.conftest import ROOT


def test_pareto_mask_by_hand():
    # x = NFE (min), y = accuracy (max)
    xs = [1.0, 2.0, 2.0, 3.0, 4.0, 1.5]
    ys = [0.5, 0.8, 0.7, 0.8, 0.9, 0.4]
    #      A:on  B:on  C:dominated by B  D:dominated by B  E:on  F:dominated by A
    assert pareto_mask(xs, ys, x_mode="min", y_mode="max") == [True, True, False, False, True, False]
    # both axes maximised: only E (4, 0.9) is undominated
    assert pareto_mask(xs, ys, x_mode="max", y_mode="max") == [False, False, False, False, True, False]
    # ties: two identical points do not dominate each other; NaN is never on the frontier
    assert pareto_mask([1.0, 1.0, math.nan], [0.5, 0.5, 1.0]) == [True, True, False]


def test_parse_axis():
    assert parse_axis("val/nfe", "min") == ("val/nfe", "min")
    assert parse_axis("val/accuracy:max", "min") == ("val/accuracy", "max")
    assert parse_axis("val/kl:min", "max") == ("val/kl", "min")


def _job(root, name, overrides, metrics, failed=False):
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"task_name": "t", "overrides": overrides, "metrics": metrics}))
    if failed:
        (d / "FAILED.txt").write_text("job: boom")


def test_seed_average_series_and_files(tmp_path):
    # 2 variants x 2 betas x 2 seeds; seeds are averaged (mean, s.e.), variant = series, beta = label
    i = 0
    for v, base in (("dpo", 1.0), ("phi", 1.5)):
        for b, kl in (("0.1", 2.0), ("1", 0.5)):
            for seed, noise in (("1", -0.1), ("2", 0.1)):
                _job(
                    tmp_path,
                    str(i),
                    {"module.variant": v, "module.beta": b, "seed": seed},
                    {"kl": kl + noise, "reward": base + kl / 2 + noise},
                )
                i += 1
    _job(
        tmp_path,
        str(i),
        {"module.variant": "dpo", "module.beta": "5", "seed": "1"},
        {"kl": 0.0, "reward": 0.0},
        failed=True,
    )
    assert len(load_jobs(tmp_path)) == 8  # the failed job is left out
    out = frontier(tmp_path, x="kl:min", y="reward:max", series="module.variant", label="module.beta")
    pts = {(p.series, p.label): p for p in out["points"]}
    assert len(pts) == 4 and all(p.n == 2 for p in pts.values())
    p = pts["phi", "0.1"]
    assert p.x == pytest.approx(2.0) and p.y == pytest.approx(2.5)
    assert p.y_se == pytest.approx(0.1)  # stdev of (2.4, 2.6) / sqrt(2)
    # phi dominates dpo at equal KL; both phi points are on the frontier, no dpo point is
    assert {k for k, p in pts.items() if p.pareto} == {("phi", "0.1"), ("phi", "1")}
    rows = out["csv"].read_text().splitlines()
    assert rows[0].startswith("series,label,kl,kl_se,reward,reward_se,n,pareto") and len(rows) == 5
    assert out["png"].stat().st_size > 5000 and out["png"].read_bytes()[:4] == b"\x89PNG"


def test_missing_metric_and_empty_dir_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        frontier(tmp_path, x="a", y="b")
    _job(tmp_path, "0", {}, {"a": 1.0})
    with pytest.raises(KeyError, match="has no metric 'b'"):
        points_from_jobs(load_jobs(tmp_path), x="a", y="b")


def _wandb_records(run_dir):
    """The offline run file as bytes (its protobuf records hold the group and config strings)."""
    return b"".join(p.read_bytes() for p in run_dir.glob("run-*.wandb"))


@pytest.mark.slow
def test_two_job_sweep_writes_frontier_and_wandb_summary(tmp_path):
    """A real ``train.py -m`` sweep (the DiFFPO fixed-threshold sweep, evaluation-only jobs, offline
    W&B): each job writes metrics.json and a W&B run in the sweep's group with its overrides as config;
    the Hydra callback writes the frontier CSV/PNG and one W&B summary run in the same group. Then the
    CLI re-reads the sweep."""
    env = {**os.environ, "PROJECT_ROOT": str(tmp_path), "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    args = [
        "-m",
        "module=diffpo",
        "model=tiny_masked",
        "hparams_search=diffpo_pareto",
        "module.knob=0.5,1.0",
        "logger=wandb",
        "data.generator.num_examples=100",
        "trainer.enable_progress_bar=false",
    ]
    r = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = next((tmp_path / "logs" / "train" / "multiruns").iterdir())
    group = f"train/{sweep.name}".encode()
    for job, thr in (("0", "0.5"), ("1", "1.0")):
        rec = json.loads((sweep / job / "metrics.json").read_text())
        assert rec["overrides"]["module.knob"] == thr and "val/accuracy" in rec["metrics"]
        run_bytes = _wandb_records(next((sweep / job / "wandb").glob("offline-run-*")))
        assert group in run_bytes and b"module.knob" in run_bytes
    csv_rows = (sweep / "pareto_val_accuracy_vs_val_nfe.csv").read_text().splitlines()
    assert len(csv_rows) == 3 and {row.split(",")[1] for row in csv_rows[1:]} == {"0.5", "1.0"}
    assert (sweep / "pareto_val_accuracy_vs_val_nfe.png").read_bytes()[:4] == b"\x89PNG"
    summary = next((sweep / "wandb").glob("offline-run-*"))
    assert group in _wandb_records(summary) and b"pareto" in _wandb_records(summary)
    table = json.loads(next((summary / "files" / "media" / "table" / "pareto").glob("table_*.json")).read_text())
    assert [row[1] for row in table["data"]] == ["0.5", "1.0"] and table["columns"][2:4] == ["val/nfe", "val/accuracy"]
    # the CLI on the same folder gives the same points
    out = main([str(sweep), "--x", "val/nfe", "--y", "val/accuracy", "--label", "module.knob"])
    assert [(p.label, p.x, p.y) for p in out["points"]] == [(row[1], row[2], row[3]) for row in table["data"]]
