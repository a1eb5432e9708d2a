"""Data errors that are true: each case below was seen with ``datasets``' JSON reader or whole-text
tokenisation (a column cast because of one integer, a valid row blamed, blank reasons, a bare
``UnicodeDecodeError`` that ``skip`` did not catch, 18 GB for a 50 MB record, skips never logged)."""

import gzip
import json
import logging
from pathlib import Path

import pytest

from src.datamodules.base import encode_bounded
from src.datamodules.errors import BadRecordError
from src.datamodules.preference import PreferenceDataModule
from src.datamodules.prompt import PromptDataModule
from src.datamodules.records import read_records

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
    assert "skipped 2 of 204 records"  # 102 in train, 102 in val in caplog.text and "m.jsonl line 101" in caplog.text


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
    with pytest.raises(BadRecordError, match=r"b\.jsonl line 1: not UTF-8 text"):
        _pairs(binary, char_tok)
    with pytest.raises(ValueError, match=r"no usable records \(.*not UTF-8 text.*first: .*b\.jsonl line 1\)"):
        _pairs(binary, char_tok, on_bad_record="skip")
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
