"""CSV loading: bad files get an error naming the problem; good ones load whole."""

from __future__ import annotations

from pathlib import Path

import pytest
from winnow.core.data.datasets import banking77, load_csv
from winnow.core.domain.errors import InvalidInput


def write(tmp_path: Path, text: str, name: str = "rows.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_good_csv_loads_with_its_schema(tmp_path: Path) -> None:
    data = load_csv(write(tmp_path, "text,category\nhello,b\nworld,a\n"))
    assert data.texts == ("hello", "world") and data.labels == ("b", "a")
    assert data.classes == ("a", "b") and data.label_ids() == [1, 0]


@pytest.mark.parametrize(
    ("content", "kwargs", "field", "needle"),
    [
        ("body,category\nhi,a\n", {}, "text_col", "column 'text' not in rows.csv (columns: body, category)"),
        ("text,kind\nhi,a\n", {}, "label_col", "column 'category'"),
        ("text,category\nhi,a\n ,b\n", {}, "text", "line 3: empty text"),
        ("text,category\nhi,a\nyo,\n", {}, "label", "line 3: empty label"),
        ("text,category\nhi,a\nyo,zzz\n", {"classes": ("a", "b")}, "label", "line 3: 'zzz' is not in the label schema"),
        ("text,category\n", {}, "csv", "no rows"),
    ],
)
def test_bad_csv_names_the_problem(tmp_path: Path, content: str, kwargs: dict, field: str, needle: str) -> None:
    with pytest.raises(InvalidInput) as err:
        load_csv(write(tmp_path, content), **kwargs)
    assert err.value.field == field
    assert needle in str(err.value)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no such file"):
        load_csv(tmp_path / "nope.csv")
    path = tmp_path / "bin.csv"
    path.write_bytes(b"text,category\n\xff\xfe\x00,a\n")
    with pytest.raises(InvalidInput, match="not UTF-8"):
        load_csv(path)


def test_unlabeled_csv_has_no_labels(tmp_path: Path) -> None:
    data = load_csv(write(tmp_path, "text\nhello\n"), label_col=None)
    assert data.labels is None and data.classes == ()
    with pytest.raises(InvalidInput):
        data.label_ids()


def test_bundled_banking77() -> None:
    train, test = banking77()
    assert (len(train), len(test), len(train.classes)) == (10003, 3080, 77)
    assert set(test.labels) <= set(train.classes)
