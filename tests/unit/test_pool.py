"""Pool selection for datasets at rest (core/select/pool.py and `winnow select`): every format reads to
the same pool, labeled rows are anchors and training data and never picked, strategies that need a
model refuse a pool without labels, and bad input names its field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from winnow.core.domain.errors import InvalidInput
from winnow.core.select.pool import read_pool, select_rows
from winnow.services.cli import main


def clusters(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = np.eye(8, dtype=np.float32)[y] * 3 + rng.normal(size=(n, 8)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


def write_all(tmp_path: Path, x: np.ndarray, labels: list[str | None]) -> dict[str, Path]:
    ids = [f"doc-{k}" for k in range(len(x))]
    rows = [{"id": i, "embedding": v.tolist(), "label": label or ""} for i, v, label in zip(ids, x, labels)]
    paths = {ext: tmp_path / f"pool.{ext}" for ext in ("jsonl", "csv", "parquet")}
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths["csv"].write_text("id,embedding,label\n" + "".join(
        f'{r["id"]},"{json.dumps(r["embedding"])}",{r["label"]}\n' for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), paths["parquet"])
    np.save(tmp_path / "pool.npy", x)
    paths["npy"] = tmp_path / "pool.npy"
    return paths


def test_every_format_reads_to_the_same_pool(tmp_path: Path):
    x, y = clusters(40)
    labels = [str(v) if k < 10 else None for k, v in enumerate(y)]
    paths = write_all(tmp_path, x, labels)
    for ext in ("jsonl", "csv", "parquet"):
        pool = read_pool(paths[ext])
        np.testing.assert_allclose(pool.embeddings, x, atol=1e-6)
        assert pool.ids == [f"doc-{k}" for k in range(40)] and pool.labels == labels
    npy = read_pool(paths["npy"])
    assert npy.ids == [str(k) for k in range(40)] and npy.labels == [None] * 40


def test_texts_go_through_the_encoder(tmp_path: Path):
    path = tmp_path / "texts.jsonl"
    path.write_text('{"text": "card arrived"}\n{"text": "top up", "label": "topup"}\n')
    seen = []

    def encode(texts):
        seen.extend(texts)
        return np.eye(2, 4, dtype=np.float32)

    pool = read_pool(path, encode)
    assert seen == ["card arrived", "top up"] and pool.labels == [None, "topup"] and pool.ids == ["0", "1"]


def test_kcenter_spreads_away_from_the_labeled_rows_and_never_picks_them():
    x, y = clusters(300)
    from winnow.core.select.pool import Pool

    labels = [None if c == 2 else str(c) for c in y]  # clusters 0 and 1 are labeled, 2 is not
    labels[int(np.flatnonzero(y == 2)[0])] = None
    pool = Pool([str(k) for k in range(300)], x, labels)
    rows = select_rows(pool, 5, "kcenter")
    assert len(rows) == 5 and len(set(rows.tolist())) == 5
    assert all(labels[r] is None for r in rows) and y[rows[0]] == 2  # the first pick: the unlabeled cluster


def test_uncertainty_strategies_train_on_the_labeled_rows():
    x, y = clusters(300, seed=1)
    from winnow.core.select.pool import Pool

    labels = [str(c) if k < 60 else None for k, c in enumerate(y)]
    pool = Pool([str(k) for k in range(300)], x, labels)
    for strategy in ("uncertainty", "cluster_margin", "badge"):
        rows = select_rows(pool, 20, strategy, seed=3)
        assert len(set(rows.tolist())) == 20 and all(r >= 60 for r in rows)
    with pytest.raises(InvalidInput) as e:
        select_rows(Pool(pool.ids, x, [None] * 300), 5, "uncertainty")
    assert e.value.field == "label_col"
    assert len(select_rows(Pool(pool.ids[:3], x[:3], [None, "0", None]), 10, "random")) == 2  # fewer left


@pytest.mark.parametrize("name, content, field", [
    ("pool.txt", "x", "pool"),
    ("pool.jsonl", "not json\n", "pool"),
    ("pool.jsonl", '{"id": "a"}\n', "text"),
    ("pool.jsonl", '{"embedding": [1, "x"]}\n', "embedding"),
    ("pool.jsonl", '{"embedding": [1, 0]}\n{"embedding": [1]}\n', "embedding"),
    ("pool.jsonl", '{"id": "a", "embedding": [1, 0]}\n{"id": "a", "embedding": [0, 1]}\n', "id"),
    ("pool.jsonl", '{"text": ""}\n', "text"),
    ("pool.jsonl", '{"text": "hi"}\n', "encoder"),
])
def test_bad_pools_name_their_field(tmp_path: Path, name: str, content: str, field: str):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InvalidInput) as e:
        read_pool(path)
    assert e.value.field == field


def test_an_npy_that_is_not_numbers_names_the_pool(tmp_path: Path):
    for name, array in (("words.npy", np.array(["a", "b"])), ("flat.npy", np.zeros(4)),
                        ("nan.npy", np.array([[np.nan, 1.0]]))):
        np.save(tmp_path / name, array)
        with pytest.raises(InvalidInput) as e:
            read_pool(tmp_path / name)
        assert e.value.field == "pool"
    for name, data in (("junk.npy", b"not an array"), ("empty.npy", b"")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InvalidInput) as e:
            read_pool(tmp_path / name)
        assert e.value.field == "pool"


def test_winnow_select_prints_the_picks_and_writes_csv(tmp_path: Path, capsys):
    x, y = clusters(60)
    paths = write_all(tmp_path, x, [str(v) if k < 10 else None for k, v in enumerate(y)])
    assert main(["select", "--pool", str(paths["parquet"]), "--n", "4", "--strategy", "uncertainty"]) == 0
    picks = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["rank"] for p in picks] == [0, 1, 2, 3] and all(p["row"] >= 10 for p in picks)
    assert all(p["id"] == f"doc-{p['row']}" for p in picks)
    out = tmp_path / "picks.csv"
    assert main(["select", "--pool", str(paths["npy"]), "--n", "3", "--out", str(out)]) == 0
    assert out.read_text().splitlines()[0] == "rank,row,id" and len(out.read_text().splitlines()) == 4
    assert main(["select", "--pool", str(paths["npy"]), "--n", "3", "--strategy", "badge"]) == 2
    assert "label_col" in capsys.readouterr().err
    assert main(["select", "--pool", str(paths["npy"])]) == 2  # --n is required
