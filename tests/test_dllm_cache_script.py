"""scripts/dllm_cache_accuracy.py: the README's cache-accuracy table rebuilds from its shipped raw
results (``--resume``, no decoding), and a fresh run decodes end to end on a tiny saved model."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

from src.models.tiny import tiny_masked_lm
from src.models.tokenizer import char_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "scripts" / "dllm_cache_accuracy.py")


def _rows(stdout: str) -> dict[tuple[str, str, str], list[str]]:
    return {
        tuple(c.strip() for c in line.split("|")[1:4]): [c.strip() for c in line.split("|")[4:-1]]
        for line in stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| block")
    }


def test_table_rebuilds_from_the_shipped_results(tmp_path):
    shutil.copy(ROOT / "docs" / "results" / "dllm_cache_accuracy.jsonl", tmp_path / "r.jsonl")
    out = subprocess.run(
        [sys.executable, SCRIPT, "--resume", "--out", str(tmp_path / "r.jsonl")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = _rows(out.stdout)
    assert len(rows) == 27  # 3 blocks x 3 decoders x 3 cache modes
    assert rows[("8", "threshold 0.9", "none")] == ["0.863 ± 0.075", "1.379 ± 0.181", "1.000 ± 0.000"]
    assert rows[("8", "low-confidence, 1 token a step", "dual")] == ["0.871 ± 0.076", "8.000 ± 0.000", "0.967 ± 0.026"]
    assert "3 models (SFT seeds), 80 held-out prompts each" in out.stdout


def test_fresh_run_decodes_every_cell(tmp_path):
    tok = char_tokenizer()
    model_dir = tmp_path / "m"
    tiny_masked_lm(tok, hidden_size=32, num_layers=1, num_heads=2).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    out = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            "--models",
            str(model_dir),
            "--blocks",
            "4",
            "--limit",
            "6",
            "--out",
            str(tmp_path / "r.jsonl"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    raw = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(raw) == 9 and all(r["n"] == 6 for r in raw)
    assert all(r["same_as_none"] == 1.0 for r in raw if r["cache"] == "none")
    # one token a step in blocks of 4 over a completion of 8: 8 forwards per prompt, whatever the cache
    assert all(r["nfe"] == 8.0 for r in raw if r["mode"] == "low_confidence")
    assert len(_rows(out.stdout)) == 9
