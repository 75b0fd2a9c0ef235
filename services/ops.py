"""The operator's and producer's commands against a running server (``--target``, ``--token``):
projects (create, list, show), ingesting a CSV or JSONL file with a progress bar, uploading gold
answers and reading annotator quality. Each reads its file whole and checks every row (naming the row
and column of the first problem) before it sends anything."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

from winnow.core.data.files import csv_rows, data_suffix, read_text, split_lines, unzipped
from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.records import Item, Response


def read_rows(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a CSV (with a header) or JSONL file (by suffix ``.jsonl``/``.json``; either gzipped
    too, as ``.jsonl.gz``), each with ``columns`` as non-empty strings; InvalidInput naming ``row N`` (1 is
    the first data row) and the column for the first problem."""
    path = Path(path)
    text = read_text(path)
    if data_suffix(path) in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate((line for line in split_lines(text) if line.strip()), start=1):
            try:
                row = json.loads(line)
            except ValueError as e:
                raise InvalidInput(f"row {n}", f"is not JSON: {e}") from None
            if not isinstance(row, dict):
                raise InvalidInput(f"row {n}", "must be a JSON object")
            rows.append(row)
    else:
        try:
            header, rows = csv_rows(text)
        except csv.Error as e:
            raise InvalidInput("FILE", f"{path.name} is not a readable CSV file: {e}") from None
        missing = [c for c in columns if c not in header]
        if missing:
            raise InvalidInput(missing[0], f"no such column in {path.name} (columns: {header})")
    for n, row in enumerate(rows, start=1):
        for column in columns:
            value = row.get(column)
            if not isinstance(value, str) or not value.strip():
                raise InvalidInput(f"row {n}: {column}", "is missing or empty")
    return rows


def _responses(value: object, n: int) -> tuple[Response, ...]:
    """A JSONL row's ``responses``: a list of texts, or of ``{"text", "model"}`` objects."""
    if not isinstance(value, list):
        raise InvalidInput(f"row {n}: responses", "must be a list of texts or of {\"text\", \"model\"} objects")
    out = []
    for k, r in enumerate(value):
        if isinstance(r, str):
            out.append(Response(r))
        elif isinstance(r, dict) and isinstance(r.get("text"), str) and isinstance(r.get("model", ""), str):
            out.append(Response(r["text"], r.get("model", "")))
        else:
            raise InvalidInput(f"row {n}: responses[{k}]", "must be a text or a {\"text\", \"model\"} object")
    return tuple(out)


def items_from(path: Path, project: str, text_col: str, id_col: str | None) -> list[Item]:
    """Items from a file: the text column, and the id column (default: ``<file stem>-<row>``, so the
    same file ingested again adds nothing). A JSONL row of a preference project also has
    ``responses``: its candidate responses, texts or ``{"text", "model"}`` objects (the text column
    is then the prompt)."""
    rows = read_rows(path, (text_col,) + ((id_col,) if id_col else ()))
    stem = unzipped(path).stem  # rows.csv.gz's ids are those of rows.csv
    items = [Item(project, row[id_col] if id_col else f"{stem}-{n}", row[text_col],
                  responses=_responses(row["responses"], n) if "responses" in row else ())
             for n, row in enumerate(rows, start=1)]
    seen: set[str] = set()
    for n, item in enumerate(items, start=1):
        if item.item_id in seen:
            raise InvalidInput(f"row {n}: {id_col or 'id'}", f"{item.item_id[:100]!r} appears twice")
        seen.add(item.item_id)
    return items


def ingest_file(client, items: list[Item], batch: int = 1000, progress: Callable[[int], None] = lambda _: None) -> int:
    """Send the items in batches (each all or nothing; ids are idempotent, so a rerun is safe); how many were new."""
    new = 0
    for start in range(0, len(items), batch):
        new += client.ingest(items[start:start + batch], batch_size=batch)
        progress(min(start + batch, len(items)))
    return new
