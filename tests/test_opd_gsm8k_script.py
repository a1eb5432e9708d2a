"""scripts/opd_gsm8k_table.py rebuilds the README's SmolLM2/GSM8K table from its shipped results
(``docs/results/opd_gsm8k_results.jsonl``) with ``--resume``, running nothing: every cell is
already there. The per-token columns are computed as the README says (forward KL and JS: the
per-sequence estimate over the mean sample length)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_table_rebuilds_from_the_shipped_results(tmp_path):
    shutil.copy(ROOT / "docs" / "results" / "opd_gsm8k_results.jsonl", tmp_path / "results.jsonl")
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "opd_gsm8k_table.py"),
            "--train",
            "unused",
            "--test",
            "unused",
            "--resume",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in out.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| run")
    }
    assert rows["student before (SFT)"][0] == "1.616 ± 0.027"
    assert rows["js opd"][:3] == ["0.674 ± 0.096", "0.587 ± 0.219", "0.107 ± 0.010"]
    assert rows["forward_kl opd_plus"][0] == "1.161 ± 0.033"
    assert len(rows) == 8  # teacher, before, 3 divergences x 2 estimators
