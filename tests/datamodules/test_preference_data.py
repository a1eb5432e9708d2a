"""Preference data: file formats, chat records, truncation, and clear errors on bad records."""

import functools
import json
from pathlib import Path

import pytest

from src.datamodules.base import per_device_batch
from src.datamodules.preference import BadRecordError, PreferenceDataModule, collate_pairs, tokenize_pair
from src.datamodules.tasks.synthetic import kendall_pairwise_win, mallows_bandit, sorting_preferences

GOOD = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(10)]


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def dm_for(path, char_tok, **kw):
    kw = {"max_length": 24, "max_prompt_length": 8, **kw}
    dm = PreferenceDataModule(tokenizer=char_tok, batch_size=2, path=path, **kw)
    dm.setup()
    return dm


def test_jsonl_and_parquet_load(tmp_path, char_tok):
    import pandas as pd

    dm = dm_for(write_jsonl(tmp_path / "p.jsonl", GOOD), char_tok)
    assert len(dm.train_set) + len(dm.val_set) == 10
    pq = tmp_path / "p.parquet"
    pd.DataFrame(GOOD).to_parquet(pq)
    dm2 = dm_for(str(pq), char_tok)
    assert len(dm2.train_set) == len(dm.train_set)
    b = next(iter(dm.train_dataloader()))
    assert b["input_ids"].shape[0] == 4  # [chosen; rejected]
    assert (b["loss_mask"].sum(-1) > 0).all()


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"prompt": "q", "chosen": "a"}, "missing field 'rejected'"),
        ({"prompt": "q", "chosen": "  ", "rejected": "b"}, "empty chosen"),
        ({"prompt": "q", "chosen": "same", "rejected": "same"}, "chosen == rejected"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "empty prompt"),
        ({"prompt": "q", "chosen": 3, "rejected": "b"}, "must be a string"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "dispersion": -1}, "dispersion must be"),
    ],
)
def test_bad_record_errors_name_file_and_row(tmp_path, char_tok, bad, match):
    rows = GOOD[:5] + [bad] + GOOD[5:]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(BadRecordError, match=match) as e:
        dm_for(path, char_tok, val_path=path)
    assert "bad.jsonl line 6:" in str(e.value)  # 1-based, as an editor shows it
    dm = dm_for(path, char_tok, val_path=path, on_bad_record="skip")
    assert dm.num_skipped == 2 and len(dm.train_set) == 10  # skipped in train and in val


def test_unparseable_file_and_bad_options(tmp_path, char_tok):
    p = tmp_path / "x.jsonl"
    p.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{not json\n')
    with pytest.raises(BadRecordError, match="x.jsonl"):
        dm_for(str(p), char_tok)
    with pytest.raises(ValueError, match="unsupported file type"):
        dm_for(str(tmp_path / "x.txt") if (tmp_path / "x.txt").write_text("hi") else "", char_tok)
    with pytest.raises(ValueError, match="exactly one of"):
        PreferenceDataModule(tokenizer=char_tok, batch_size=2)
    with pytest.raises(ValueError, match="max_prompt_length"):
        PreferenceDataModule(tokenizer=char_tok, batch_size=2, path="x", max_length=8, max_prompt_length=8)
    with pytest.raises(ValueError, match="on_bad_record"):
        PreferenceDataModule(tokenizer=char_tok, batch_size=2, path="x", on_bad_record="warn")


def test_chat_format_records(tmp_path, char_tok):
    rows = [
        {
            "chosen": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello!"}],
            "rejected": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "go away"}],
        }
        for i in range(6)
    ]
    dm = dm_for(write_jsonl(tmp_path / "chat.jsonl", rows), char_tok, max_prompt_length=16, max_length=40)
    r = dm.train_set[0]
    assert r["prompt"].startswith("user: hi") and r["prompt"].endswith("assistant: ")
    assert r["chosen"] == "hello!"


def test_truncation_never_empties_prompt(char_tok):
    rec = {"prompt": "x" * 100 + "QUESTION", "chosen": "y" * 50, "rejected": "z" * 50}
    ids = tokenize_pair(rec, char_tok, max_length=20, max_prompt_length=10)
    assert len(ids["prompt_ids"]) == 10
    assert ids["prompt_ids"][0] == char_tok.bos_token_id
    assert char_tok.decode(ids["prompt_ids"][1:]) == "xQUESTION"  # keeps the end
    assert len(ids["prompt_ids"]) + len(ids["chosen_ids"]) == 20
    short = tokenize_pair(
        {"prompt": "q", "chosen": "a", "rejected": "b"}, char_tok, max_length=20, max_prompt_length=10
    )
    assert short["chosen_ids"][-1] == char_tok.eos_token_id
    assert ids["prompt_cut"] and ids["response_cut"] and not short["prompt_cut"] and not short["response_cut"]
    # the boundary: BOS + 9 characters fill max_prompt_length=10 exactly; a 10th character is cut
    fits = {"prompt": "q" * 9, "chosen": "a", "rejected": "b"}
    assert not tokenize_pair(fits, char_tok, max_length=20, max_prompt_length=10)["prompt_cut"]
    assert tokenize_pair({**fits, "prompt": "q" * 10}, char_tok, max_length=20, max_prompt_length=10)["prompt_cut"]
    # a response that fills the budget with its EOS is whole; one more character is cut
    whole = {"prompt": "q" * 9, "chosen": "a" * 9, "rejected": "b"}  # 10 + 9 + EOS = 20
    assert not tokenize_pair(whole, char_tok, max_length=20, max_prompt_length=10)["response_cut"]
    assert tokenize_pair({**whole, "chosen": "a" * 10}, char_tok, max_length=20, max_prompt_length=10)["response_cut"]


def test_collate_masks():
    rows = [{"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5], "index": 0, "prompt": "p"}]
    b = collate_pairs(rows, pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3, 0], [1, 2, 4, 5]]
    assert b["loss_mask"].tolist() == [[0, 0, 1, 0], [0, 0, 1, 1]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


def test_per_device_batch():
    assert per_device_batch(32, 1) == (32, 1)
    assert per_device_batch(32, 4, 2) == (2, 4)
    with pytest.raises(ValueError, match="not divisible by the world size 3"):
        per_device_batch(32, 3)
    with pytest.raises(ValueError, match="micro_batch_size=3 must divide"):
        per_device_batch(32, 2, 3)


def test_generators_seeded_and_valid():
    a, b = sorting_preferences(seed=1, num_examples=50), sorting_preferences(seed=1, num_examples=50)
    assert a == b and all(r["chosen"] == "".join(sorted(r["chosen"])) != r["rejected"] for r in a)
    assert sorted(a[0]["rejected"]) == sorted(a[0]["chosen"])
    rows = mallows_bandit(seed=0, num_contexts=2, num_arms=4, pairs_per_context=4000, phis=(0.2, 0.8))
    # empirical win rate of the adjacent pair (a beats b) matches the Kendall marginal 1/(1+phi)
    for c, phi in ((0, 0.2), (1, 0.8)):
        ab = [r for r in rows if r["context"] == c and {r["chosen"], r["rejected"]} == {"a", "b"}]
        rate = sum(r["chosen"] == "a" for r in ab) / len(ab)
        assert rate == pytest.approx(1 / (1 + phi), abs=0.05)
    assert kendall_pairwise_win(1, 0.5) == pytest.approx(1 / 1.5)


def test_too_little_data_for_a_batch_is_an_error(char_tok):
    dm = PreferenceDataModule(
        tokenizer=char_tok,
        batch_size=64,
        max_length=32,
        max_prompt_length=16,
        generator=functools.partial(sorting_preferences, num_examples=20),
    )
    dm.setup()
    with pytest.raises(ValueError, match=r"fewer than one global batch \(64 per device x 1 devices"):
        dm.train_dataloader()


def test_sampler_shards_one_global_order_and_resumes_mid_epoch(char_tok):
    """The ResumableSampler: W ranks with batch b see, per step, exactly the examples one process
    with batch W*b sees; a new epoch reshuffles; ``start`` skips what a resumed rank already used."""
    from src.datamodules.base import ResumableSampler

    ds = list(range(24))
    one = ResumableSampler(ds, num_replicas=1, rank=0, seed=3)
    two = [ResumableSampler(ds, num_replicas=2, rank=r, seed=3) for r in range(2)]
    o, t = list(one), [list(s) for s in two]
    for step in range(3):  # global batch 8 = 2 ranks x 4
        assert sorted(o[8 * step : 8 * step + 8]) == sorted(
            t[0][4 * step : 4 * step + 4] + t[1][4 * step : 4 * step + 4]
        )
    one.set_epoch(1)
    assert list(one) != o and sorted(one) == ds
    one.set_epoch(0)
    one.start = 5
    assert list(one) == o[5:]
    assert list(one) == o  # the skip applies to one iteration only


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bad_record_names_its_row_in_the_file_after_the_shuffled_split(tmp_path, char_tok, seed):
    """Line 5 of the file is named, wherever the seeded shuffle and split put it."""
    rows = (GOOD * 4)[:4] + [{"prompt": "q", "chosen": "a"}] + (GOOD * 4)[4:30]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(BadRecordError, match="missing field 'rejected'") as e:
        dm_for(path, char_tok, seed=seed)
    assert "bad.jsonl line 5:" in str(e.value)


FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "hh_rlhf_harmless_base_sample.jsonl"


def test_hh_rlhf_implicit_prompt_transcripts(char_tok):
    """Real HH-RLHF rows (no prompt field): the prompt is the shared prefix ending at the last
    'Assistant:'; the responses are the two last replies."""
    from src.datamodules.preference import normalize_record

    rows = [json.loads(x) for x in FIXTURE.read_text().splitlines()]
    for i, rec in enumerate(rows):
        out = normalize_record(rec, tokenizer=char_tok, where=f"row {i}")
        assert out["prompt"].startswith("\n\nHuman:") and out["prompt"].endswith("\n\nAssistant:")
        assert out["prompt"] + out["chosen"] == rec["chosen"] and out["prompt"] + out["rejected"] == rec["rejected"]
        assert "\n\nAssistant:" not in out["chosen"] and "\n\nHuman:" not in out["chosen"]
    # by hand: multi-turn, responses sharing their first word
    rec = {
        "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?\n\nAssistant: I can help",
        "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?\n\nAssistant: I cannot",
    }
    out = normalize_record(rec, tokenizer=char_tok, where="x")
    assert out["prompt"] == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?\n\nAssistant:"
    assert (out["chosen"], out["rejected"]) == (" I can help", " I cannot")
    with pytest.raises(BadRecordError, match="x: no prompt field.*'Assistant:'"):
        normalize_record({"chosen": "a b", "rejected": "a c"}, tokenizer=char_tok, where="x")


def test_hh_rlhf_as_chat_messages(char_tok):
    from src.datamodules.preference import normalize_record, transcript_messages

    rec = {
        "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?\n\nAssistant: yes",
        "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?\n\nAssistant: no",
    }
    assert transcript_messages("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?\n\nAssistant:", where="x") == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and?"},
    ]
    out = normalize_record(rec, tokenizer=char_tok, where="x", transcript_format="chat")
    want = char_tok.apply_chat_template(
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "and?"},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert out == {"prompt": want, "chosen": "yes", "rejected": "no"}


def test_ultrafeedback_binarized_record(char_tok):
    """TRL's UltraFeedback-binarized shape (hand-made record): prompt string + full message lists."""
    from src.datamodules.preference import normalize_record

    rec = {
        "prompt": "2+2?",
        "chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
        "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}],
        "score_chosen": 9.0,
        "score_rejected": 2.0,
    }
    out = normalize_record(rec, tokenizer=char_tok, where="x")
    assert out["prompt"] == char_tok.apply_chat_template(
        [{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True
    )
    assert (out["chosen"], out["rejected"]) == ("4", "5")


@pytest.mark.slow
def test_hh_rlhf_trains_from_the_cli(tmp_path):
    """``python train.py data=hh_rlhf data.path=<local .jsonl.gz>`` trains (real rows, gzipped as the source)."""
    import gzip
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    gz = tmp_path / "test.jsonl.gz"
    gz.write_bytes(gzip.compress(FIXTURE.read_bytes()))
    env = {**os.environ, "PROJECT_ROOT": str(tmp_path), "PYTHONPATH": str(ROOT)}
    args = [
        "data=hh_rlhf",
        f"data.path={gz}",
        "data.max_length=160",
        "data.max_prompt_length=96",
        "data.global_batch_size=4",
        "trainer.max_steps=2",
        "trainer.enable_progress_bar=false",
        "callbacks.sample_table=null",
        "export=false",
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
    assert "val/rewards/accuracy" in (r.stdout + r.stderr)


def test_split_seed_fixes_the_held_out_set_across_seeds(tmp_path, char_tok):
    """Seeds 0 and 1 with split_seed=7 hold out the same pairs (and shuffle training differently);
    without split_seed the held-out set follows the seed."""
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(40)])

    def held_out(seed, split_seed):
        dm = dm_for(path, char_tok, seed=seed, split_seed=split_seed)
        return sorted(dm.val_set[i]["prompt_ids"] for i in range(len(dm.val_set)))

    assert held_out(0, 7) == held_out(1, 7)
    assert held_out(0, None) != held_out(1, None)
    assert held_out(0, 7) != held_out(0, 8)
