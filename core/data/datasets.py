"""Reading labeled or unlabeled CSV files into a validated in-memory dataset; the bundled Banking77; a
class-skewed subsample of a labeled one (for benchmarks on imbalanced streams)."""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

from winnow.core.data.files import csv_rows, read_text
from winnow.core.domain.errors import InvalidInput

MAX_TEXT_CHARS = 20_000


@dataclass(frozen=True)
class Dataset:
    """Rows of one CSV: texts, their labels when known (class names), and the label schema."""

    texts: tuple[str, ...]
    labels: tuple[str, ...] | None
    classes: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def label_ids(self) -> list[int]:
        """Class indices of the labels (the schema order)."""
        if self.labels is None:
            raise InvalidInput("labels", f"{self.source} has no label column")
        index = {c: i for i, c in enumerate(self.classes)}
        return [index[label] for label in self.labels]


def load_csv(
    path: Path | str,
    text_col: str = "text",
    label_col: str | None = "category",
    classes: Sequence[str] | None = None,
) -> Dataset:
    """Read and validate a CSV file; nothing is returned unless every row is good.

    ``classes`` fixes the label schema (a label outside it is an error); without it the schema is the
    sorted set of labels found. Errors name the file, the column or the row.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInput("csv", f"no such file: {path}")
    try:
        columns, rows = csv_rows(read_text(path, "csv"))
    except csv.Error as e:
        raise InvalidInput("csv", f"{path.name} is not a readable CSV file: {e}") from e
    for field_name, col in (("text_col", text_col), ("label_col", label_col)):
        if col is not None and col not in columns:
            raise InvalidInput(field_name, f"column {col!r} not in {path.name} (columns: {', '.join(columns) or 'none'})")
    if not rows:
        raise InvalidInput("csv", f"{path.name} has a header but no rows")
    texts: list[str] = []
    for line, row in enumerate(rows, start=2):
        text = (row.get(text_col) or "").strip()
        if not text:
            raise InvalidInput("text", f"{path.name} line {line}: empty text in column {text_col!r}")
        if len(text) > MAX_TEXT_CHARS:
            raise InvalidInput("text", f"{path.name} line {line}: text of {len(text)} characters exceeds {MAX_TEXT_CHARS}")
        texts.append(text)
    labels: list[str] | None = None
    if label_col is not None:
        labels = [(row.get(label_col) or "").strip() for row in rows]
        for line, label in enumerate(labels, start=2):
            if not label:
                raise InvalidInput("label", f"{path.name} line {line}: empty label in column {label_col!r}")
            if classes is not None and label not in classes:
                raise InvalidInput("label", f"{path.name} line {line}: {label!r} is not in the label schema")
    schema = tuple(classes) if classes is not None else tuple(sorted(set(labels or ())))
    return Dataset(tuple(texts), tuple(labels) if labels is not None else None, schema, str(path))


def banking77() -> tuple[Dataset, Dataset]:
    """The bundled Banking77 train and test sets (Casanueva et al. 2020, CC BY 4.0)."""
    folder = resources.files("winnow.core.data") / "banking77"
    classes = tuple(json.loads((folder / "categories.json").read_text()))
    with resources.as_file(folder) as path:
        return load_csv(path / "train.csv", classes=classes), load_csv(path / "test.csv", classes=classes)


def class_skewed(dataset: Dataset, ratio: float, seed: int = 0) -> Dataset:
    """A class-imbalanced subsample of a labeled dataset, for benchmarks on skewed streams: the classes, in
    a seeded order, keep shares of their rows falling linearly from all of them to ``1 / ratio`` (each row
    kept by its own seeded coin), so rare classes are rare by about ``ratio`` beside common ones on top of
    the dataset's own imbalance. ``ratio`` 1 keeps every row; the schema (``classes``) is unchanged."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 1.0 <= ratio < float("inf"):
        raise InvalidInput("class_skew", f"must be a finite number >= 1, got {ratio!r}")
    if dataset.labels is None:
        raise InvalidInput("labels", f"{dataset.source} has no label column to skew by")
    if ratio == 1.0:
        return dataset
    rng = random.Random(seed)
    order = list(dataset.classes)
    rng.shuffle(order)
    last = max(len(order) - 1, 1)
    share = {c: 1.0 - (1.0 - 1.0 / ratio) * rank / last for rank, c in enumerate(order)}
    kept = [k for k, label in enumerate(dataset.labels) if rng.random() < share[label]]
    if not kept:
        raise InvalidInput("class_skew", f"ratio {ratio:g} keeps no row of {dataset.source}")
    return Dataset(tuple(dataset.texts[k] for k in kept), tuple(dataset.labels[k] for k in kept), dataset.classes,
                   f"{dataset.source} (class skew {ratio:g}, seed {seed})")
