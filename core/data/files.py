"""Reading people's data files the same way in every command: a file's bytes to text (a UTF-8 byte-order
mark dropped, as spreadsheet programs write one), its JSON lines and its CSV rows.

Lines are split at ``\\n`` (``\\r\\n`` too) and nowhere else: ``str.splitlines`` also splits at
characters that may sit inside a text (U+2028 LINE SEPARATOR, which JSON writes unescaped, form feeds,
``\\x1c``-``\\x1e``), and would turn one row into two. CSV rows come from the csv module reading the
whole text, so a quoted field keeps its line breaks; a header with tabs, semicolons or bars and no comma
says the file's delimiter."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

from winnow.core.domain.errors import InvalidInput

MAX_FILE_BYTES = 2 << 30


def read_text(path: Path | str, field: str = "FILE", max_bytes: int = MAX_FILE_BYTES) -> str:
    """The file's text (gunzipped when its name ends in ``.gz``), decoded as UTF-8 with a leading
    byte-order mark dropped. InvalidInput(``field``) for a file that is missing, unreadable, over
    ``max_bytes``, not gzip where its name says so, or not UTF-8."""
    path = Path(path)
    try:
        if path.stat().st_size > max_bytes:
            raise InvalidInput(field, f"{path.name} is over {max_bytes} bytes")
        raw = path.read_bytes()
    except OSError as e:
        raise InvalidInput(field, f"cannot read {str(path)[:200]!r}: {e}") from None
    if path.suffix.lower() == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
            raise InvalidInput(field, f"{path.name} is not a whole gzip file: {e}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InvalidInput(field, f"{path.name} is not UTF-8 text: {e}") from None


def unzipped(path: Path | str) -> Path:
    """The file's path without a ``.gz`` suffix (``rows.jsonl.gz``: ``rows.jsonl``); others unchanged."""
    path = Path(path)
    return path.with_suffix("") if path.suffix.lower() == ".gz" else path


def data_suffix(path: Path | str) -> str:
    """The suffix that says a file's format, under a ``.gz`` (``rows.jsonl.gz``: ``.jsonl``), lower case."""
    return unzipped(path).suffix.lower()


def split_lines(text: str) -> list[str]:
    """The text's lines, split at ``\\n`` only (a ``\\r`` before it dropped); no empty last line for a
    text that ends in a newline."""
    out = text.split("\n")
    if out and out[-1] == "":
        out.pop()
    return [line[:-1] if line.endswith("\r") else line for line in out]


def delimiter(header: str) -> str:
    """The field delimiter a CSV's header line says: a comma, unless the header has no comma and one
    (only one) of tab, semicolon or bar, as tab-separated files and spreadsheets in locales whose decimal
    mark is a comma write them (a one-column header is read with a comma, the same either way)."""
    if "," in header:
        return ","
    found = [d for d in ("\t", ";", "|") if d in header]
    return found[0] if len(found) == 1 else ","


def csv_rows(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV text's header and its rows as dicts (``csv.DictReader``: a short row's missing cells are
    None), delimited as its header line says (:func:`delimiter`). Quoted fields keep their line breaks.
    Raises csv.Error for text the csv module cannot parse."""
    header = text.split("\n", 1)[0]
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter(header))
    rows = list(reader)
    return list(reader.fieldnames or []), rows
