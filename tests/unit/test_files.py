"""Reading people's data files: a byte-order mark, line separators inside texts, quoted line breaks,
CRLF, gzip; every reader of a data file (datasets, ingest and gold files, pools, preference pairs)
gets the same rows from the same bytes, and a file it cannot read is one error naming the field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from winnow.core.data.datasets import load_csv
from winnow.core.data.files import csv_rows, delimiter, read_text, split_lines
from winnow.core.data.formats import write_jsonl
from winnow.core.data.preferences import load_pairs
from winnow.core.domain.errors import InvalidInput
from winnow.core.select.pool import read_pool
from winnow.services.ops import items_from, read_rows

BOM = "\ufeff"
# texts a spreadsheet or a scraper writes: a line separator (which JSON leaves unescaped), a form feed,
# a quoted line break, a group separator
TEXTS = ["hello\u2028there", "form\x0cfeed", "two\nlines", "group\x1dsep"]


def _csv(path: Path, header: str, rows: list[tuple[str, ...]], bom: bool = True, newline: str = "\r\n") -> Path:
    def cell(value: str) -> str:
        return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"\n') else value

    body = newline.join([header] + [",".join(cell(v) for v in row) for row in rows]) + newline
    path.write_bytes(((BOM if bom else "") + body).encode("utf-8"))
    return path


def _jsonl(path: Path, rows: list[dict], bom: bool = True) -> Path:
    body = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"
    path.write_bytes(((BOM if bom else "") + body).encode("utf-8"))
    return path


def test_lines_split_at_newlines_only() -> None:
    assert split_lines("a\u2028b\r\nc\x0cd\n\ne\n") == ["a\u2028b", "c\x0cd", "", "e"]
    assert split_lines("") == [] and split_lines("x") == ["x"] and split_lines("x\r\n") == ["x"]


def test_csv_rows_keep_quoted_line_breaks_and_separators_in_texts() -> None:
    header, rows = csv_rows('text,label\r\n"two\nlines",a\r\nhello\u2028there,b\r\n')
    assert header == ["text", "label"]
    assert rows == [{"text": "two\nlines", "label": "a"}, {"text": "hello\u2028there", "label": "b"}]


@pytest.mark.parametrize("bom", [True, False])
def test_read_text_drops_a_byte_order_mark_and_reads_gzip(tmp_path: Path, bom: bool) -> None:
    text = "text\nhello\u2028there\n"
    raw = ((BOM if bom else "") + text).encode("utf-8")
    (tmp_path / "a.csv").write_bytes(raw)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(raw))
    assert read_text(tmp_path / "a.csv") == text
    assert read_text(tmp_path / "a.jsonl.gz") == text


@pytest.mark.parametrize(("name", "raw", "needle"), [
    ("missing.csv", None, "cannot read"),
    ("latin1.csv", "text\ncaf\xe9\n".encode("latin-1"), "not UTF-8 text"),
    ("cut.jsonl.gz", gzip.compress(b'{"a": 1}\n')[:-6], "not a whole gzip file"),
    ("plain.jsonl.gz", b'{"a": 1}\n', "not a whole gzip file"),
    ("big.csv", b"x" * 101, "over 100 bytes"),
])
def test_read_text_refuses_what_it_cannot_read_naming_the_field(tmp_path: Path, name: str, raw: bytes | None,
                                                                 needle: str) -> None:
    if raw is not None:
        (tmp_path / name).write_bytes(raw)
    with pytest.raises(InvalidInput) as err:
        read_text(tmp_path / name, "csv", max_bytes=100)
    assert err.value.field == "csv" and needle in str(err.value)


def test_every_reader_gets_the_same_rows_from_a_spreadsheets_csv(tmp_path: Path) -> None:
    labels = ["a", "b", "a", "b"]
    path = _csv(tmp_path / "rows.csv", "text,category,id",
                [(t, y, f"r{k}") for k, (t, y) in enumerate(zip(TEXTS, labels))])
    data = load_csv(path)
    assert data.texts == tuple(TEXTS) and data.labels == tuple(labels)
    assert [r["text"] for r in read_rows(path, ("text", "category"))] == TEXTS
    gz = tmp_path / "rows.csv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert [r["text"] for r in read_rows(gz, ("text", "category"))] == TEXTS
    items = items_from(path, "p", "text", None)
    assert [i.text for i in items] == TEXTS and [i.item_id for i in items] == [f"rows-{n}" for n in (1, 2, 3, 4)]
    assert [(i.item_id, i.text) for i in items_from(gz, "p", "text", None)] == [(i.item_id, i.text) for i in items]
    pool = read_pool(path, encode=lambda texts: np.eye(len(texts), 8, dtype=np.float32), id_col="id",
                     label_col="category")
    assert pool.ids == ["r0", "r1", "r2", "r3"] and pool.labels == labels


def test_every_jsonl_reader_keeps_a_line_separator_inside_a_string(tmp_path: Path) -> None:
    rows = [{"text": t, "id": f"r{k}"} for k, t in enumerate(TEXTS)]
    path = _jsonl(tmp_path / "rows.jsonl", rows)
    assert [r["text"] for r in read_rows(path, ("text",))] == TEXTS
    pool = read_pool(path, encode=lambda texts: np.eye(len(texts), 8, dtype=np.float32), label_col=None)
    assert pool.ids == ["r0", "r1", "r2", "r3"]
    gz = tmp_path / "rows.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert [r["text"] for r in read_rows(gz, ("text",))] == TEXTS
    pairs = _jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"say {t}", "chosen": t, "rejected": "no"} for t in TEXTS])
    assert [p.chosen for p in load_pairs(pairs)] == TEXTS


def test_a_pool_or_ingest_file_that_is_not_utf8_is_one_error_naming_its_field(tmp_path: Path) -> None:
    for name in ("pool.csv", "pool.jsonl"):
        path = tmp_path / name
        path.write_bytes("text\ncaf\xe9\n".encode("latin-1"))
        with pytest.raises(InvalidInput) as err:
            read_pool(path, encode=lambda texts: np.eye(len(texts), 8, dtype=np.float32))
        assert err.value.field == "pool" and "not UTF-8 text" in str(err.value)
        with pytest.raises(InvalidInput) as err:
            read_rows(path, ("text",))
        assert err.value.field == "FILE" and "not UTF-8 text" in str(err.value)


def test_an_exported_jsonl_reads_back_row_for_row(tmp_path: Path) -> None:
    # the JSONL export writes U+2028 unescaped (ensure_ascii=False): ingesting it again keeps each row whole
    data = [{"id": f"r{k}", "text": t} for k, t in enumerate(TEXTS)]
    path = tmp_path / "export.jsonl"
    path.write_text(write_jsonl(data), encoding="utf-8")
    assert "\u2028" in path.read_text(encoding="utf-8")
    assert read_rows(path, ("id", "text")) == data


@pytest.mark.parametrize(("header", "expected"), [
    ("text,category", ","), ("text\tcategory", "\t"), ("text;category", ";"), ("text|category", "|"),
    ("text", ","), ("a;b,c", ","), ("a;b\tc", ","),
])
def test_the_header_line_says_the_delimiter(header: str, expected: str) -> None:
    assert delimiter(header) == expected


@pytest.mark.parametrize("sep", ["\t", ";", "|"])
def test_tab_semicolon_and_bar_separated_files_read_like_comma_separated_ones(tmp_path: Path, sep: str) -> None:
    path = tmp_path / "rows.tsv"
    path.write_text(f"text{sep}category\r\nhello, there{sep}a\r\n\"two\nlines\"{sep}b\r\n", encoding="utf-8-sig")
    data = load_csv(path)
    assert data.texts == ("hello, there", "two\nlines") and data.labels == ("a", "b")
    assert [r["category"] for r in read_rows(path, ("text", "category"))] == ["a", "b"]
    pool = read_pool(path, encode=lambda texts: np.eye(len(texts), 8, dtype=np.float32), id_col=None,
                     label_col="category")
    assert pool.labels == ["a", "b"]
