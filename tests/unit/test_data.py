"""CSV loading: bad files get an error naming the problem; good ones load whole."""

from __future__ import annotations

from pathlib import Path

import pytest
from collections import Counter

from winnow.core.data.datasets import Dataset, banking77, class_skewed, load_csv
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


def _balanced(classes: int = 20, rows: int = 400) -> Dataset:
    labels = tuple(f"c{k % classes:02d}" for k in range(classes * rows))
    return Dataset(tuple(f"text {k}" for k in range(len(labels))), labels, tuple(sorted(set(labels))), "balanced")


def test_a_class_skew_keeps_shares_falling_linearly_from_all_rows_to_one_in_ratio() -> None:
    data = _balanced()
    for seed in range(5):
        skewed = class_skewed(data, 10.0, seed)
        counts = Counter(skewed.labels)
        kept = sorted(counts.values())
        assert skewed.classes == data.classes and len(counts) == 20
        # shares 1, ..., 0.1 of 400 rows, each row its own coin: the rarest near 40, the most common near 400
        assert 20 <= kept[0] <= 65 and 370 <= kept[-1] <= 400
        assert abs(len(skewed) - 0.55 * len(data)) < 0.03 * len(data)
        # rows keep their text with their label, in the dataset's order
        rows = dict(zip(data.texts, data.labels))
        assert all(rows[t] == label for t, label in zip(skewed.texts, skewed.labels))
        assert [int(t.split()[1]) for t in skewed.texts] == sorted(int(t.split()[1]) for t in skewed.texts)
        assert class_skewed(data, 10.0, seed) == skewed  # seeded

    def rare_first(seed: int) -> tuple[str, ...]:
        counts = Counter(class_skewed(data, 10.0, seed).labels)
        return tuple(sorted(counts, key=counts.get))

    assert len({rare_first(s) for s in range(3)}) == 3  # the seed chooses which classes are rare
    assert class_skewed(data, 1.0) is data


@pytest.mark.parametrize("ratio", [0.5, float("nan"), float("inf"), True, "10"])
def test_a_class_skew_refuses_a_ratio_that_is_not_a_finite_number_at_least_one(ratio) -> None:
    with pytest.raises(InvalidInput) as err:
        class_skewed(_balanced(2, 5), ratio)
    assert err.value.field == "class_skew"


def test_a_class_skew_needs_labels() -> None:
    data = Dataset(("a", "b"), None, (), "unlabeled")
    with pytest.raises(InvalidInput) as err:
        class_skewed(data, 2.0)
    assert err.value.field == "labels"
