"""Reading records so that every error is true: no type coercion, and every record knows where it came from.

``datasets`` builds a typed Arrow table from JSON: one integer in a string column cast the whole column
(``" 72"`` became ``72``), the error it raised named a valid row, and a non-UTF-8 byte gave a bare
``UnicodeDecodeError``. So local text files are read here, with the standard library:

* ``.jsonl`` / ``.json`` (JSON lines, or one JSON array) and ``.csv`` (every value a string), optionally
  ``.gz``: each record is a :class:`Located` with ``where`` = ``"<file> line <n>"`` (1-based, the line the
  record starts on). A line that is not UTF-8 or not valid JSON becomes a located :class:`BadRecordError`:
  a bad record like any other, which ``data.on_bad_record=skip`` can drop and count;
* ``.parquet`` (typed by its own schema): ``"<file> row <i>"`` (0-based, as parquet tools count);
* a folder: its files in name order; a hub dataset (``datasets.load_dataset``): ``"<name> [<split>] row <i>"``.

A file that cannot be read at all (a broken gzip stream, a JSON array cut short, no records) is an error
naming the file, not a record to skip.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src.datamodules.errors import BadRecordError, DataError

SUFFIXES = ("jsonl", "json", "csv", "parquet")


@dataclass(frozen=True)
class Located:
    """A record and the place a user can find it; ``record`` is a ``BadRecordError`` when it could not be read."""

    where: str
    record: Any


def file_format(path: Path) -> str:
    """``jsonl | json | csv | parquet`` from the suffix (through ``.gz``), or a clear error."""
    suffixes = path.suffixes
    suffix = suffixes[-2] if path.suffix == ".gz" and len(suffixes) > 1 else path.suffix
    fmt = suffix.lstrip(".")
    if fmt not in SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {suffix!r}; use .json, .jsonl, .parquet or .csv (optionally .gz)"
        )
    return fmt


def _bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a cut stream raises EOFError
        raise BadRecordError(f"{path}: could not be read ({type(e).__name__}: {e})") from None


def _json_line(raw: bytes, where: str) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return BadRecordError(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        return BadRecordError(f"{where}: not valid JSON ({e.msg} at column {e.colno})")


def _json_lines(path: Path, data: bytes) -> list[Located]:
    out = []
    for n, raw in enumerate(data.split(b"\n"), 1):
        if raw.strip():  # blank lines (a trailing newline) are not records
            where = f"{path} line {n}"
            out.append(Located(where, _json_line(raw.rstrip(b"\r"), where)))
    return out


def _json_array(path: Path, text: str) -> list[Located]:
    """Each element of a top-level JSON array, located at the line it starts on."""
    dec, out = json.JSONDecoder(), []
    i, line, last = text.index("[") + 1, 1, 0

    def skip(j: int) -> int:
        while j < len(text) and text[j] in " \t\r\n":
            j += 1
        return j

    while True:
        i = skip(i)
        if i < len(text) and text[i] == "]":
            return out
        line += text.count("\n", last, i)
        last = i
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise BadRecordError(f"{path} line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        out.append(Located(f"{path} line {line}", obj))
        i = skip(i)
        if i < len(text) and text[i] == ",":
            i += 1
        elif i >= len(text) or text[i] != "]":
            raise BadRecordError(f"{path} line {line + text.count(chr(10), last, i)}: JSON array not closed")


def _decode(path: Path, data: bytes, encoding: str = "utf-8") -> str:
    """A whole file as text (formats whose records may span lines); a bad byte is an error naming its line."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise BadRecordError(f"{path} line {line}: not UTF-8 text (byte 0x{data[e.start]:02x})") from None


def _csv(path: Path, data: bytes) -> list[Located]:
    text = _decode(path, data, "utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    out, start = [], 2  # line 1 is the header
    for row in reader:  # every value a string: nothing is cast
        out.append(Located(f"{path} line {start}", dict(row)))
        start = reader.line_num + 1
    return out


def read_file(path: Path) -> list[Located]:
    fmt = file_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return [Located(f"{path} row {i}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
    data = _bytes(path)
    if fmt == "csv":
        return _csv(path, data)
    if fmt == "json":
        head = data.lstrip()[:1]
        if head == b"[":
            return _json_array(path, _decode(path, data))
    return _json_lines(path, data)


def read_records(path: str, *, split: str = "train", name: str | None = None) -> list[Located]:
    """Located records of a local file or folder (read here) or of a hub dataset (``datasets``)."""
    p = Path(path)
    if p.exists():
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")) if p.is_dir() else [p]
        if not files:
            raise DataError(f"{path}: empty folder")
        out = [loc for f in files for loc in read_file(f)]
        if not out:
            raise DataError(f"{path}: no records (empty file)")
        return out
    if looks_local(path):
        raise DataError(f"{path}: no such file or folder")
    return _hub_records(path, split=split, name=name)


def check_source(path: str, *, split: str = "train", name: str | None = None) -> None:
    """Cheap, before any model or tokenizer loads: a local path exists and has a readable type; a hub dataset,
    with the hub switched off, is in the local cache (loaded once; ``datasets`` caches it for the real read)."""
    p = Path(path)
    if p.exists():
        if p.is_file():
            file_format(p)
        return
    if looks_local(path):
        raise DataError(f"{path}: no such file or folder")
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        _hub_records(path, split=split, name=name)


def looks_local(path: str) -> bool:
    """A path a user meant as a local file (``./x``, ``/abs``, ``~``, a data-file suffix), not a hub name
    (``owner/name``): such a path that does not exist is a missing file, not a hub lookup."""
    p = Path(path)
    return path.startswith((".", "/", "~")) or any(s.lstrip(".") in (*SUFFIXES, "gz") for s in p.suffixes)


def _hub_records(path: str, *, split: str, name: str | None) -> list[Located]:
    import datasets

    try:
        ds = datasets.load_dataset(path, name, split=split)
    except Exception as e:  # offline, a typo, a missing split: one line, not datasets' 50-line traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = (
            "the hub is off here (HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1): only datasets already in the local cache "
            "load; pass a local file or folder instead"
            if offline
            else "check the name, data.name (its config) and data.split, or pass a local file or folder"
        )
        raise DataError(f"{path}: not a local file or folder, and not loadable from the hub ({first}); {hint}") from e
    return [Located(f"{path} [{split}] row {i}", r) for i, r in enumerate(ds.to_list())]


def load_records(path: str, *, split: str = "train", name: str | None = None) -> list[dict[str, Any]]:
    """The records alone (scripts that read a data file); an unreadable record is raised."""
    out = []
    for loc in read_records(path, split=split, name=name):
        if isinstance(loc.record, BadRecordError):
            raise loc.record
        out.append(loc.record)
    return out
