"""Score every gold solution of a math data set against its own answer key with ``math_reward``.

A verifier that gives a gold solution 0 trains RL against a wrong reward, so this is the check to
run on any new answer format. Also runs the hand-built list of equivalent / non-equivalent answer
pairs in ``tests/fixtures/math_answer_pairs.jsonl``.

    python scripts/check_answer_keys.py --gsm8k <gsm8k test.jsonl or openai/gsm8k> \\
        --math500 <MATH-500 test.jsonl or HuggingFaceH4/MATH-500>

Paths are local json/jsonl(.gz)/parquet files or hub names (``datasets``). Exits 1 if a target is
missed: every GSM8K solution, >= ``--math-target`` of MATH-500 solutions, every pair.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.datamodules.records import load_records  # noqa: E402
from src.datamodules.tasks.math import gsm8k_answer, math_reward  # noqa: E402

PAIRS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "math_answer_pairs.jsonl"


def score_file(
    path: str, *, solution_key: str, answer_of, name: str | None = None, split: str = "test", fast_path: bool = True
) -> dict:
    """``answer_of(record) -> gold``; returns counts, failures and time per record."""
    rows = load_records(path, split=split, name=name)
    golds = [answer_of(r) for r in rows]
    fails, t0 = [], time.perf_counter()
    for i, r in enumerate(tqdm(rows, desc=Path(path).name, unit="row")):
        if math_reward(r[solution_key], golds[i], fast_path=fast_path) != 1.0:
            fails.append({"row": i, "gold": golds[i], "tail": r[solution_key][-120:]})
    dt = time.perf_counter() - t0
    # the other direction: solution i against the next row's key, where the two keys differ as numbers
    # or strings; a match here is a false positive (keys that are equal in value are skipped)
    false_pos, n_neg = [], 0
    for i, r in enumerate(tqdm(rows, desc=f"{Path(path).name} (wrong keys)", unit="row")):
        other = golds[(i + 1) % len(rows)]
        if math_reward(str(other), golds[i]) == 1.0:
            continue
        n_neg += 1
        if math_reward(r[solution_key], other, fast_path=fast_path) == 1.0:
            false_pos.append({"row": i, "gold": other, "tail": r[solution_key][-120:]})
    return {
        "n": len(rows),
        "ok": len(rows) - len(fails),
        "fails": fails,
        "ms_per_row": 1e3 * dt / max(len(rows), 1),
        "n_neg": n_neg,
        "false_pos": false_pos,
    }


def check_pairs(path: Path = PAIRS) -> tuple[list[dict], int]:
    """Pairs whose verdict is wrong (empty when all are right), and the number of pairs."""
    pairs = [json.loads(line) for line in path.read_text().splitlines()]
    wrong = [p for p in pairs if (math_reward(p["completion"], p["gold"]) == 1.0) != p["equivalent"]]
    return wrong, len(pairs)


def report_errors(res: dict) -> None:
    """False positives against other rows' keys, then gold solutions that failed their own key."""
    print(f"  against another row's (different) key: {len(res['false_pos'])}/{res['n_neg']} score 1 (false positives)")
    for f in res["false_pos"][:20]:
        print(f"  FALSE POSITIVE row {f['row']}: key {f['gold']!r}, solution ends {f['tail']!r}")
    for f in res["fails"][:20]:
        print(f"  row {f['row']}: gold {f['gold']!r}, solution ends {f['tail']!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gsm8k", help="GSM8K file or hub name (config 'main', split 'test')")
    ap.add_argument("--math500", help="MATH-500 file or hub name (split 'test')")
    ap.add_argument("--math-target", type=float, default=0.995)
    ap.add_argument(
        "--symbolic-only",
        action="store_true",
        help="skip the exact-match fast path, so every row goes through math-verify",
    )
    args = ap.parse_args(argv)
    ok = True
    wrong, n_pairs = check_pairs()
    print(f"answer pairs: {n_pairs - len(wrong)}/{n_pairs} right")
    for p in wrong:
        print(
            f"  WRONG ({'equivalent' if p['equivalent'] else 'different'}: {p['note']}): "
            f"{p['completion']!r} vs {p['gold']!r}"
        )
    ok &= not wrong
    if args.gsm8k:
        name = None if Path(args.gsm8k).exists() else "main"
        res = score_file(
            args.gsm8k,
            solution_key="answer",
            answer_of=lambda r: gsm8k_answer(r["answer"]),
            name=name,
            fast_path=not args.symbolic_only,
        )
        print(f"GSM8K: {res['ok']}/{res['n']} gold solutions score 1 ({res['ms_per_row']:.1f} ms/row)")
        ok &= res["ok"] == res["n"] and not res["false_pos"]
        report_errors(res)
    if args.math500:
        res = score_file(
            args.math500, solution_key="solution", answer_of=lambda r: r["answer"], fast_path=not args.symbolic_only
        )
        rate = res["ok"] / res["n"]
        print(
            f"MATH-500: {res['ok']}/{res['n']} = {rate:.1%} gold solutions score 1 "
            f"(target {args.math_target:.1%}; {res['ms_per_row']:.1f} ms/row)"
        )
        ok &= rate >= args.math_target and not res["false_pos"]
        report_errors(res)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
