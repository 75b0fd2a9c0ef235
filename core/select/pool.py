"""Pool selection for datasets at rest: read a pool (embeddings, or texts to encode, some rows perhaps
labeled already) and pick the ``n`` rows people should label next with one of the strategies.

Formats, by extension:

- ``.npy``: float ``[N, D]`` embeddings, one row per item; ids are the row numbers; nothing labeled.
- ``.csv`` (or ``.tsv``), ``.jsonl``: one item per row; ``.parquet`` (pyarrow): one per table row. The vector is
  the ``embedding_col`` column when the file has it (a list of floats; in a CSV, its JSON text),
  else the ``text_col`` column through the encoder. ``id_col`` names rows (else their row number);
  a non-empty ``label_col`` value marks a row labeled already.

Labeled rows are never picked. They are the anchors diversity strategies (``kcenter``) spread away
from, and the training data of the head that uncertainty strategies (``uncertainty``,
``cluster_margin``, ``badge``) score the other rows with; those strategies need labeled rows of at
least two classes.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from winnow.core.data.files import csv_rows, read_text, split_lines
from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.settings import TrainConfig
from winnow.core.select.index import as_vectors
from winnow.core.select.strategies import Candidates, make_strategy

MODEL_STRATEGIES = ("uncertainty", "cluster_margin", "badge")  # need a head, so labeled rows
FORMATS = (".npy", ".csv", ".tsv", ".jsonl", ".parquet")


@dataclass(frozen=True, eq=False)
class Pool:
    """``ids`` [N] row ids, ``embeddings`` float32 ``[N, D]``, ``labels`` [N] (None: not labeled)."""

    ids: list[str]
    embeddings: np.ndarray
    labels: list[str | None]


def _records(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):  # the header says the delimiter (``files.delimiter``)
        try:
            return csv_rows(read_text(path, "pool"))[1]
        except csv.Error as e:
            raise InvalidInput("pool", f"{path.name} is not a readable CSV file: {e}") from e
    if suffix == ".jsonl":
        out = []
        for number, line in enumerate(split_lines(read_text(path, "pool")), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InvalidInput("pool", f"{path.name} line {number}: not JSON ({e.msg})") from e
                if not isinstance(row, dict):
                    raise InvalidInput("pool", f"{path.name} line {number}: expected an object")
                out.append(row)
        return out
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow is a dependency
        raise InvalidInput("pool", "reading Parquet needs pyarrow") from e
    return pq.read_table(path).to_pylist()


def _vector(value: object, row: int, column: str) -> list:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise InvalidInput(column, f"row {row}: not a JSON list of numbers") from e
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise InvalidInput(column, f"row {row}: expected a list of numbers, got {type(value).__name__}")
    if not all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in value):
        raise InvalidInput(column, f"row {row}: expected a list of numbers")
    return list(value)


def read_pool(path: Path, encode: Callable[[Sequence[str]], np.ndarray] | None = None, text_col: str = "text",
              id_col: str | None = "id", label_col: str | None = "label",
              embedding_col: str = "embedding") -> Pool:
    """The pool in ``path`` (module doc); ``encode`` turns texts into embeddings when the file has no
    ``embedding_col`` (None: such a file is refused). InvalidInput names the field at fault."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InvalidInput("pool", f"{path.name}: expected one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise InvalidInput("pool", f"{path} is not a file")
    if suffix == ".npy":
        try:
            x = as_vectors("pool", np.load(path, allow_pickle=False))
        except (ValueError, EOFError) as e:  # not an array file (or an empty one), objects, or values not numbers
            raise InvalidInput("pool", f"{path.name}: not a numeric .npy array ({e})") from e
        return Pool([str(i) for i in range(len(x))], x, [None] * len(x))
    rows = _records(path)
    if not rows:
        raise InvalidInput("pool", f"{path.name} holds no rows")
    columns = set(rows[0])
    if embedding_col in columns:
        vectors = [_vector(r.get(embedding_col), k, embedding_col) for k, r in enumerate(rows)]
        short = next((k for k, v in enumerate(vectors) if len(v) != len(vectors[0])), None)
        if short is not None:
            raise InvalidInput(embedding_col, f"row {short}: {len(vectors[short])} numbers, row 0 has "
                                              f"{len(vectors[0])}")
        x = as_vectors(embedding_col, vectors)
    elif text_col in columns:
        texts = [r.get(text_col) for r in rows]
        bad = next((k for k, t in enumerate(texts) if not isinstance(t, str) or not t.strip()), None)
        if bad is not None:
            raise InvalidInput(text_col, f"row {bad}: expected a non-empty text")
        if encode is None:
            raise InvalidInput("encoder", "the pool holds texts: an encoder is needed")
        x = as_vectors("embeddings", encode(texts))
    else:
        raise InvalidInput(text_col, f"{path.name} has neither a {embedding_col!r} nor a {text_col!r} column "
                                     f"(it has {sorted(columns)[:10]})")
    ids = [str(r[id_col]) if id_col and r.get(id_col) not in (None, "") else str(k) for k, r in enumerate(rows)]
    if len(set(ids)) != len(ids):
        raise InvalidInput(id_col or "id", f"{path.name}: ids repeat")
    labels = [None if not label_col or r.get(label_col) in (None, "") else str(r[label_col]) for r in rows]
    return Pool(ids, x, labels)


def select_rows(pool: Pool, n: int, strategy: str, seed: int = 0, train: TrainConfig = TrainConfig()) -> np.ndarray:
    """Rows of ``pool`` (int64, pick order) people should label next: ``n`` of the unlabeled ones
    (fewer when fewer are left) by ``strategy``, labeled rows as anchors and training data."""
    from winnow.core.ml.scoring import margin_uncertainty, mean_probs
    from winnow.core.ml.training import fit_head, head_logits

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InvalidInput("n", f"must be an integer >= 1, got {n!r}")
    chooser = make_strategy(strategy)
    labeled = np.array([label is not None for label in pool.labels], bool)
    free = np.flatnonzero(~labeled)
    if not free.size:
        raise InvalidInput("pool", "every row is labeled already: nothing to select")
    x = pool.embeddings
    probs, unc = np.full((free.size, 1), 1.0), np.zeros(free.size)
    if strategy in MODEL_STRATEGIES:
        classes = sorted({label for label in pool.labels if label is not None})
        if len(classes) < 2:
            raise InvalidInput("label_col", f"strategy {strategy!r} scores rows with a model: it needs labeled rows "
                                            f"of at least two classes, the pool has {len(classes)}")
        index = {c: k for k, c in enumerate(classes)}
        y = np.array([index[pool.labels[k]] for k in np.flatnonzero(labeled)])
        head = fit_head(x[labeled], y, len(classes), train)
        probs = mean_probs(head_logits(head, x[free]), 1.0)
        unc = margin_uncertainty(probs)
    candidates = Candidates(x[free], probs, unc, x[labeled] if labeled.any() else None)
    return free[chooser.select(candidates, int(n), np.random.default_rng(seed))]
