"""scripts/dllm_cache_accuracy.py: a fresh run decodes end to end on a tiny saved model (the recorded
table's rebuild is in tests/test_recorded_tables.py)."""

import json
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
