"""Every recorded table rebuilds from its committed raw results, running nothing (docs/results/).

The numbers asserted here are cells of the tables in docs/reports/: a changed summariser or a changed
raw file shows up as a failing cell, not as a silently different report."""

import shutil
import subprocess
import sys
from pathlib import Path

from src.report import report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def _cells(table: str) -> dict[tuple[str, ...], list[str]]:
    rows = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.split("|")[1:-1]]
        rows[tuple(cells[:3])] = cells[3:]
    return rows


def test_opd_gsm8k_table():
    """docs/reports/opd_plus.md, SmolLM2 -> half-depth student on GSM8K (per-token forward KL and JS:
    the per-sequence estimate over the mean sample length)."""
    metrics = [
        "val/distill/log_ratio",
        "val/distill/forward_kl / val/rollout/length",
        "val/distill/js / val/rollout/length",
        "val/sampled/pass@1",
    ]
    text = report(
        RESULTS / "opd_gsm8k_records.jsonl", group=["model", "module.divergence", "module.estimator"], metrics=metrics
    )
    rows = _cells(text)
    assert len(rows) == 8  # teacher, student before, 3 divergences x 2 estimators
    assert rows[("hf_causal", "-", "-")] == ["2", "1.616 ± 0.027", "1.058 ± 0.320", "0.224 ± 0.022", "0.031 ± 0.000"]
    assert rows[("-", "js", "opd")][1:4] == ["0.674 ± 0.096", "0.587 ± 0.219", "0.107 ± 0.010"]
    assert rows[("-", "forward_kl", "opd_plus")][1] == "1.161 ± 0.033"


def test_mallowspo_hh_table():
    """docs/reports/mallowspo.md, HH-RLHF harmless with SmolLM2 + LoRA, seeds 1 and 2."""
    text = report(
        RESULTS / "mallowspo_hh_records.jsonl",
        group=["module.variant"],
        metrics=["val/rewards/accuracy", "val/rewards/margin_mean", "val/loss"],
    )
    rows = {k[0]: [k[1], k[2], *v] for k, v in _cells(text).items()}
    assert rows["dpo"] == ["2", "0.621 ± 0.026", "0.187 ± 0.035", "0.675 ± 0.034"]
    assert rows["mallows_phi"][1] == "0.624 ± 0.013" and rows["mallows_theta"][1] == "0.615 ± 0.009"


def test_dllm_cache_accuracy_table(tmp_path):
    """docs/reports/diffpo.md, the block cache's accuracy (scripts/dllm_cache_accuracy.py --resume)."""
    shutil.copy(RESULTS / "dllm_cache_accuracy.jsonl", tmp_path / "r.jsonl")
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "dllm_cache_accuracy.py"),
            "--resume",
            "--out",
            str(tmp_path / "r.jsonl"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {
        tuple(c.strip() for c in line.split("|")[1:4]): [c.strip() for c in line.split("|")[4:-1]]
        for line in out.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| block")
    }
    assert len(rows) == 27  # 3 blocks x 3 decoders x 3 cache modes
    assert rows[("8", "threshold 0.9", "none")] == ["0.863 ± 0.075", "1.379 ± 0.181", "1.000 ± 0.000"]
    assert rows[("8", "low-confidence, 1 token a step", "dual")] == ["0.871 ± 0.076", "8.000 ± 0.000", "0.967 ± 0.026"]
    assert "3 models (SFT seeds), 80 held-out prompts each" in out.stdout


def test_diffpo_estimators_table_and_curves():
    """docs/reports/diffpo.md, "Which likelihood estimator": 6 estimators x 3 seeds, the final table, the paired
    differences to d1 and the learning curve, from the committed records with their logged histories."""
    from src.report import curves, summarise

    recs = RESULTS / "diffpo_estimators_records.jsonl"
    text = report(
        recs,
        group=["estimator"],
        metrics=["val/accuracy", "val/nfe", "mean:train/time/update_s"],
        baseline="estimator=d1",
    )
    table, _, diffs = text.partition("paired by seed")
    rows = {k[0]: [k[1], k[2], *v] for k, v in _cells(table).items()}
    assert rows["d1"][:2] == ["3", "0.242 ± 0.019"] and rows["one_step"][1] == "0.333 ± 0.026"
    assert rows["two_stage_is"][1] == "0.354 ± 0.014" and rows["exact"][1:3] == ["0.383 ± 0.031", "2.263 ± 0.013"]
    assert rows["exact"][3] == "0.191 ± 0.016"
    d = {k[0]: k[1] for k, _ in _cells(diffs.split("\n\n", 1)[1]).items()}
    assert d["two_stage_is"] == "+0.113 ± 0.019 [3/3]" and d["one_step"] == "+0.092 ± 0.004 [3/3]"
    from src.report import load_records

    curve = curves(load_records(recs), group=["estimator"], metric="val/accuracy")
    assert [round(m, 3) for _, m, _, _ in curve[("d1",)]][:3] == [0.225, 0.233, 0.242]
    assert summarise(load_records(recs), group=["estimator"], metrics=["val/accuracy"])[0]["n"] == 3


def test_tool_use_baseline_table_is_the_recorded_metrics():
    """docs/reports/opd_plus.md (tool use): the SmolLM2 rows are the recorded eval.py metrics."""
    import json

    api = json.loads((RESULTS / "tool_use_smollm2_api_bank_level1_100.json").read_text())["metrics"]
    bfcl = json.loads((RESULTS / "tool_use_smollm2_bfcl_simple_python_100.json").read_text())["metrics"]
    assert api["eval/api_bank/num_problems"] == bfcl["eval/bfcl/num_problems"] == 100
    assert api["eval/api_bank/accuracy"] == api["eval/api_bank/level1/accuracy"] == 0.0
    assert api["eval/api_bank/format_valid"] == 0.12
    fails = {k.rsplit("/", 1)[1]: v for k, v in api.items() if "/fail/" in k}
    assert fails == {"decode_failed": 72, "wrong_func_name": 25, "missing_required": 3}
    assert bfcl["eval/bfcl/accuracy"] == bfcl["eval/bfcl/format_valid"] == 0.0
    assert bfcl["eval/bfcl/fail/decode_failed"] == 100
    report = (ROOT / "docs" / "reports" / "opd_plus.md").read_text()
    assert "| API-Bank level 1 (256 new tokens) | 0.00 (0 / 100) | 0.12 | 72 no call read, 25 " in report
    assert "| BFCL simple_python (192 new tokens) | 0.00 (0 / 100) | 0.00 | 100 not a list" in report


def test_opd_tooluse_table():
    """docs/reports/opd_plus.md, tool use: SmolLM2 + LoRA teacher -> SmolLM2 on ToolRL prompts, scored on API-Bank
    level 1 / BFCL after fit; the reference rows, the 18 sweep jobs and TRL's run (one seed)."""
    metrics = [
        "eval/api_bank/accuracy",
        "eval/api_bank/format_valid",
        "eval/bfcl/accuracy",
        "val/distill/log_ratio",
        "val/distill/forward_kl / val/rollout/length",
        "val/distill/js / val/rollout/length",
        "val/rollout/length",
    ]
    text = report(
        RESULTS / "opd_tooluse_records.jsonl",
        group=["model", "module.divergence", "module.estimator"],
        metrics=metrics,
    )
    rows = _cells(text)
    assert rows[("hf_causal", "-", "-")][:3] == ["1", "0.250 ± 0.000", "0.938 ± 0.000"]  # the teacher
    assert rows[("smollm2", "-", "-")][:3] == ["1", "0.000 ± 0.000", "0.125 ± 0.000"]  # the student before
    assert rows[("-", "forward_kl", "opd")][1:3] == ["0.000 ± 0.000", "0.000 ± 0.000"]
    assert rows[("-", "forward_kl", "opd_plus")][2] == "0.271 ± 0.219"
    assert rows[("-", "reverse_kl", "opd_plus")][4] == "0.590 ± 0.113"
    assert rows[("trl", "reverse_kl", "trl_full_vocab")][1:3] == ["0.062 ± 0.000", "0.250 ± 0.000"]
    assert rows[("-", "js", "opd")][:3] == ["3", "0.021 ± 0.036", "0.083 ± 0.144"]
    assert rows[("-", "js", "opd_plus")][:3] == ["3", "0.042 ± 0.036", "0.250 ± 0.165"]
    assert all(rows[k][0] == "3" for k in rows if k[0] == "-")  # every cell of the sweep has its three seeds
