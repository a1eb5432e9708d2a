"""Data errors that are true: each case below was seen with ``datasets``' JSON reader or whole-text
tokenisation (a column cast because of one integer, a valid row blamed, blank reasons, a bare
``UnicodeDecodeError`` that ``skip`` did not catch, 18 GB for a 50 MB record, skips never logged)."""

import gzip
import json
import logging
from pathlib import Path

import pytest

from src.datamodules.base import encode_bounded
from src.datamodules.errors import BadRecordError, DataError
from src.datamodules.preference import PreferenceDataModule
from src.datamodules.prompt import PromptDataModule
from src.datamodules.records import check_source, read_records
from tests.helpers.cli import run_script

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOOD = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(20)]


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _pairs(path, tok, **kw):
    dm = PreferenceDataModule(tokenizer=tok, batch_size=2, path=str(path), val_path=str(path), **kw)
    dm.setup("fit")
    return dm


def test_one_integer_does_not_retype_a_column_or_blame_another_row(tmp_path, char_tok):
    rows = [dict(r) for r in GOOD]
    rows[6]["chosen"] = " 72"  # line 7: a string with a leading space, valid
    rows[10]["chosen"] = 123  # line 11: the one bad value
    path = _jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(BadRecordError, match=r"p\.jsonl line 11: field 'chosen' must be a string.*got int") as e:
        _pairs(path, char_tok)
    assert "data.on_bad_record=skip" in str(e.value)  # the fix is named
    dm = _pairs(path, char_tok, on_bad_record="skip")
    assert len(dm.val_set) == 19  # one record dropped, not all 20
    assert " 72" in [r["chosen"] for r in dm.val_set.rows]  # not cast to 72


def test_malformed_json_is_a_bad_record_on_its_line(tmp_path, char_tok, caplog):
    lines = (
        [json.dumps(r) for r in GOOD] * 5 + ['{"prompt": "q", "chosen": "a" "rejected": "b"}'] + [json.dumps(GOOD[0])]
    )
    path = _jsonl(tmp_path / "m.jsonl", lines)
    with pytest.raises(BadRecordError, match=r"m\.jsonl line 101: not valid JSON \(Expecting ',' delimiter"):
        _pairs(path, char_tok)
    with caplog.at_level(logging.WARNING):
        dm = _pairs(path, char_tok, on_bad_record="skip")
    assert dm.skipped == {"not valid JSON (Expecting ',' delimiter at column N)": 2}  # in train and in val
    # 102 records in train, 102 in val
    assert "skipped 2 of 204 records" in caplog.text and "m.jsonl line 101" in caplog.text


def test_a_non_utf8_byte_is_a_skippable_record_naming_file_and_line(tmp_path, char_tok):
    path = tmp_path / "u.jsonl"
    body = "".join(json.dumps(r) + "\n" for r in GOOD[:4]).encode()
    path.write_bytes(body + b'{"prompt": "q\xff", "chosen": "a", "rejected": "b"}\n' + json.dumps(GOOD[5]).encode())
    with pytest.raises(BadRecordError, match=r"u\.jsonl line 5: not UTF-8 text \(byte 0xff at column 14\)"):
        _pairs(path, char_tok)
    assert _pairs(path, char_tok, on_bad_record="skip").num_skipped == 2


def test_empty_binary_and_gzip_files_say_what_is_wrong(tmp_path, char_tok):
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"e\.jsonl: no records \(empty file\)"):
        _pairs(empty, char_tok)
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(128, 256)) * 8)  # a PNG
    # no record of it is usable: one error for the file (skipping would drop them all), under either setting
    for setting in ("error", "skip"):
        with pytest.raises(
            DataError, match=r"b\.jsonl: none of the first 3 records .*b\.jsonl line 1: not UTF-8 text"
        ):
            _pairs(binary, char_tok, on_bad_record=setting)
    cut = tmp_path / "c.jsonl.gz"
    cut.write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in GOOD))[:-30])
    with pytest.raises(BadRecordError, match=r"c\.jsonl\.gz: could not be read"):
        _pairs(cut, char_tok)


def test_a_null_field_is_not_called_missing(tmp_path, char_tok):
    path = _jsonl(tmp_path / "n.jsonl", [*GOOD[:3], {"prompt": "q", "chosen": "a", "rejected": None}])
    with pytest.raises(BadRecordError, match=r"n\.jsonl line 4: field 'rejected' is null\. "):
        _pairs(path, char_tok)


def test_json_array_and_csv_records_are_located_and_not_typed(tmp_path):
    arr = tmp_path / "a.json"
    arr.write_text('[\n  {"question": "1+1", "answer": "007"},\n\n  {"question": "2+2", "answer": 4}\n]\n')
    recs = read_records(str(arr))
    assert [(r.where.split()[-2:], r.record["answer"]) for r in recs] == [(["line", "2"], "007"), (["line", "4"], 4)]
    broken = tmp_path / "x.json"
    broken.write_text('[\n {"question": "1+1", "answer": "2"},\n {"question": oops}\n]')
    with pytest.raises(BadRecordError, match=r"x\.json line 3: not valid JSON"):
        read_records(str(broken))
    table = tmp_path / "t.csv"
    table.write_text('question,answer\n"multi\nline",007\nplain, 72\n')
    recs = read_records(str(table))
    assert [(r.where.split()[-1], r.record["answer"]) for r in recs] == [("2", "007"), ("4", " 72")]


class Spy:
    """A tokenizer that records the longest text it was asked to encode."""

    def __init__(self, tok):
        self.tok, self.longest = tok, 0

    def __call__(self, text, **kw):
        self.longest = max(self.longest, len(text))
        return self.tok(text, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_a_huge_record_is_tokenised_only_as_far_as_its_budget(tmp_path, char_tok):
    """A 5 MB reply and a 5 MB prompt: the tokenizer sees a few thousand characters, and the ids equal those
    of truncating the whole text."""
    huge = "abc " * 1_250_000
    path = _jsonl(tmp_path / "h.jsonl", [*GOOD[:3], {"prompt": "short q", "chosen": huge, "rejected": "no"}])
    spy = Spy(char_tok)
    dm = _pairs(path, spy, max_length=64, max_prompt_length=16)
    assert spy.longest < 20_000
    row = [r for r in dm.val_set.rows if r["rejected"] == "no"][0]
    full = char_tok(huge, add_special_tokens=False)["input_ids"]
    assert row["chosen_ids"] == full[: len(row["chosen_ids"])] and len(row["chosen_ids"]) == 64 - len(
        row["prompt_ids"]
    )
    qpath = _jsonl(tmp_path / "q.jsonl", [{"question": "1+1", "answer": "2"}, {"question": huge, "answer": "3"}])
    spy = Spy(char_tok)
    dm = PromptDataModule(tokenizer=spy, batch_size=1, path=str(qpath), val_path=str(qpath), max_prompt_length=32)
    with pytest.raises(
        BadRecordError, match=r"q\.jsonl line 2: prompt has more than 32 tokens.*raise data.max_prompt"
    ):
        dm.setup("fit")
    assert spy.longest < 20_000


def _texts():
    hh = [json.loads(line) for line in (FIXTURES / "hh_rlhf_harmless_base_sample.jsonl").read_text().splitlines()]
    gsm = [json.loads(line) for line in (FIXTURES / "gsm8k_test_sample.jsonl").read_text().splitlines()]
    return [r["chosen"] for r in hh] + [r["question"] + "\n" + r["answer"] for r in gsm]


def _real_tokenizers():
    from src.models.tokenizer import train_bpe_tokenizer

    toks = [train_bpe_tokenizer(_texts(), vocab_size=600)]
    try:
        from transformers import AutoTokenizer

        from src.models.hf import SMOLLM2_GGUF, smollm2_dir

        toks.append(AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF))
    except (ModuleNotFoundError, ImportError, OSError):
        pass  # the trained byte-level BPE still covers the pre-tokenised case
    return toks


@pytest.mark.parametrize("keep", ["start", "end"])
def test_bounded_encoding_equals_truncating_the_whole_text(keep):
    texts = _texts()
    long = "\n\n".join(texts)  # ~20k characters of real text
    for tok in _real_tokenizers():
        for text in [long, *texts[:6]]:
            full = tok(text, add_special_tokens=False)["input_ids"]
            for limit in (1, 7, 33, 150, 700):
                ids, total = encode_bounded(tok, text, limit, keep=keep, chars_per_token=2)
                want = full[:limit] if keep == "start" else full[-limit:]
                assert ids == want, (type(tok).__name__, limit, keep)
                assert total in (None, len(full))


def test_hh_preset_skips_its_known_empty_replies_and_logs_them(char_tok, caplog):
    """The real file has 4 pairs with an empty chosen reply; the preset used to stop at the first (row 516)."""
    from tests.conftest import compose_cfg

    path = FIXTURES / "hh_rlhf_harmless_base_defects.jsonl"
    cfg = compose_cfg(["data=hh_rlhf", f"data.path={path}", "data.val_fraction=0.3"])
    assert list(cfg.data.known_defects) == ["empty chosen response", "empty rejected response"]
    assert cfg.data.on_bad_record == "error"
    import hydra

    dm = hydra.utils.instantiate(cfg.data, tokenizer=char_tok)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert dm.skipped == {"empty chosen response": 2} and len(dm.train_set) + len(dm.val_set) == 7
    assert "skipped 2 of 9 records" in caplog.text and "2 x empty chosen response" in caplog.text
    assert "defects.jsonl line 4)" in caplog.text or "defects.jsonl line 8)" in caplog.text
    # any other defect still stops the run
    bad = [json.loads(x) for x in path.read_text().splitlines()]
    bad[0]["rejected"] = bad[0]["chosen"]
    with pytest.raises(BadRecordError, match="chosen == rejected"):
        dm2 = hydra.utils.instantiate(cfg.data, tokenizer=char_tok, path=None, generator=lambda seed: bad)
        dm2.setup("fit")


def test_a_file_whose_first_records_all_miss_a_field_says_what_they_hold_and_how_to_map_it(tmp_path, char_tok):
    """Every record lacks ``chosen``: it used to be reported as one bad record somewhere after the shuffle
    ("line 26") with the hint ``on_bad_record=skip``, which would have dropped them all."""
    rows = [{"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in GOOD]
    path = _jsonl(tmp_path / "w.jsonl", rows)
    with pytest.raises(DataError) as e:
        _pairs(path, char_tok)
    msg = str(e.value)
    assert msg.startswith(f"{path}: none of the first 20 records can be used (first, {path} line 1: missing field")
    assert "['bad', 'good', 'question']" in msg and "data.chosen_key=<field>" in msg and "on_bad_record" not in msg
    assert "\n" not in msg
    dm = _pairs(path, char_tok, prompt_key="question", chosen_key="good", rejected_key="bad")  # TRL-style mapping
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in dm.val_set.rows][:2] == [
        ("q0", "good 0", "bad 0"),
        ("q1", "good 1", "bad 1"),
    ]
    # one usable record among the first ones: the file fits, the bad ones are bad records (skip hint and all)
    mixed = _jsonl(tmp_path / "mixed.jsonl", [*rows[:5], *GOOD])
    with pytest.raises(BadRecordError, match="data.on_bad_record=skip"):
        _pairs(mixed, char_tok)


def test_prompt_files_name_their_own_mapping_keys(tmp_path, char_tok):
    path = _jsonl(tmp_path / "p.jsonl", [{"problem": f"{i}+1", "solution": str(i + 1)} for i in range(5)])
    dm = PromptDataModule(tokenizer=char_tok, batch_size=1, path=str(path), val_path=str(path))
    with pytest.raises(DataError, match=r"data\.question_key=<field> data\.answer_key=<field> \(now 'question'"):
        dm.setup("fit")
    dm = PromptDataModule(
        tokenizer=char_tok,
        batch_size=1,
        path=str(path),
        val_path=str(path),
        question_key="problem",
        answer_key="solution",
    )
    dm.setup("fit")
    assert dm.val_set.rows[0]["answer"] == "1"


def test_missing_local_file_and_unreachable_hub_dataset_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file or folder$"):
        check_source(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match=r"^someone/no-such-data: not a local file or folder.*hub is off here"):
        check_source("someone/no-such-data")
    check_source(str(FIXTURES / "gsm8k_test_sample.jsonl"))  # exists: nothing to say


def test_a_huge_prompt_is_cut_to_max_prompt_length_and_said_so(tmp_path, char_tok, caplog):
    rows = [dict(r) for r in GOOD]
    rows[3]["prompt"] = "x" * 5_000_000 + " sort 3"  # 5 MB
    path = _jsonl(tmp_path / "big.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        dm = _pairs(path, char_tok, max_prompt_length=16, max_length=32)
    assert max(len(r["prompt_ids"]) for r in dm.val_set.rows) == 16
    assert "2 of 40 prompts were longer than data.max_prompt_length=16 tokens and were cut" in caplog.text
    assert f"first: {path} line 4" in caplog.text


CUT = '{"prompt": "q", "cho'  # a JSONL file whose last line was cut by a full disk
ONE_LINE = [
    ("missing", lambda d: ["data=preference_file", f"data.path={d / 'nope.jsonl'}"], "nope.jsonl: no such file"),
    ("unset", lambda d: ["data=preference_file"], "config error: data.path must be set"),
    ("empty", lambda d: ["data=preference_file", f"data.path={_jsonl(d / 'e.jsonl', [])}"], "no records (empty file)"),
    (
        "truncated",
        lambda d: ["data=preference_file", f"data.path={_jsonl(d / 't.jsonl', [*map(json.dumps, GOOD), CUT])}"],
        "t.jsonl line 21: not valid JSON",
    ),
    (
        "fields",
        lambda d: ["data=preference_file", f"data.path={_jsonl(d / 'f.jsonl', [{'a': 1}] * 30)}"],
        "none of the first 20 records can be used",
    ),
    ("hub", lambda d: ["data=preference_file", "data.path=someone/no-such-data"], "hub is off here"),
]


@pytest.mark.parametrize("case, args, words", ONE_LINE, ids=[c[0] for c in ONE_LINE])
def test_data_errors_are_one_line_before_any_model_and_leave_no_run_folder(tmp_path, case, args, words):
    run = tmp_path / "run"
    r = _cli("train.py", [*args(tmp_path), "trainer.max_steps=2", f"hydra.run.dir={run}"], tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert words in last and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "instantiating callback" not in r.stdout + r.stderr  # stopped before the module and the callbacks
    assert not run.exists()  # nothing that looks like a run
    if case == "missing":  # once: HYDRA_FULL_ERROR=1 shows the traceback
        r = _cli("train.py", [*args(tmp_path), "trainer.max_steps=2", f"hydra.run.dir={run}"], tmp_path, full=True)
        assert r.returncode == 1 and "Traceback" in r.stderr


def test_eval_on_another_benchmarks_file_names_that_benchmark(tmp_path):
    math500 = FIXTURES / "math500_sample.jsonl"
    r = _cli(
        "eval.py",
        ["task=gsm8k", "model=tiny_causal", f"task.path={math500}", f"hydra.run.dir={tmp_path / 'e'}"],
        tmp_path,
    )
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("data error: ") and "did you mean task=math500?" in last and "on_bad_record" not in last
    assert "task.question_key=<field>" in last


def _cli(script, args, cwd, full=False):
    return run_script(script, args, cwd, HF_DATASETS_OFFLINE="1", **({"HYDRA_FULL_ERROR": "1"} if full else {}))
