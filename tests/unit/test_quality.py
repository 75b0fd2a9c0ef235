"""A project's certified quality read from the store (core/loop/quality.py): which tasks and labels
form each family's trials, how people's error is counted, and the bound on all final labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.records import Annotation, Item, Label, Project, Task
from winnow.core.loop.quality import certified_quality, family_trials

P = "p"


@pytest.fixture
def store(tmp_path: Path):
    store = SqliteStore(tmp_path / "store.sqlite")
    store.create_project(Project(P, ("a", "b")))
    store.add_items([Item(P, f"i{k}", f"text {k}", 0.0) for k in range(12)])
    yield store
    store.close()


def _label(item: str, label: str, source: str, aggregation: str, probability: float | None = None) -> Label:
    return Label(P, item, label, source, "v1" if source == "model" else "ann", 0.9, 0.8, aggregation, "v1", 1.0,
                 f"{item}:{source}", probability)


def test_each_family_is_its_audits_and_its_kept_labels(store: SqliteStore) -> None:
    # audits of auto-accepted labels: i0 agreed, i1 disagreed, i2 still pending; one of a close label
    store.add_tasks([Task(P, "i0", 1.0, "v1", 0.0, "audit", 0.2, "a", "auto_accept"),
                     Task(P, "i1", 1.0, "v1", 0.0, "audit", 0.2, "a", "auto_accept"),
                     Task(P, "i2", 1.0, "v1", 0.0, "audit", 0.5, "b", "auto_accept"),
                     Task(P, "i3", 1.0, "v1", 0.0, "audit", 0.3, "b", "low_confidence"),
                     Task(P, "i4", 1.0, None, 0.0, "label")])  # a pick: no family
    store.put_labels([_label("i0", "a", "human", "single"), _label("i1", "b", "human", "single"),
                      _label("i3", "b", "human", "single"), _label("i4", "a", "human", "single"),
                      _label("i5", "a", "model", "auto_accept", 0.2), _label("i6", "b", "model", "auto_accept", 0.2),
                      _label("i7", "a", "model", "low_confidence", 0.0)])
    auto = family_trials(*store.audit_record(P), ("auto_accept",))
    assert auto.probability.tolist() == [0.2, 0.2, 0.5, 0.2, 0.2]
    assert auto.drawn.tolist() == [True, True, True, False, False]
    assert auto.error[:2].tolist() == [0.0, 1.0] and np.isnan(auto.error[2])
    q = certified_quality(store, P)
    assert (q.final_labels, q.human_labels, q.model_labels) == (7, 4, 3)
    assert (q.auto_accepted.labels, q.auto_accepted.observed_errors, q.auto_accepted.pending) == (2, 1, 1)
    assert q.low_confidence.labels == 1 and q.low_confidence.hidden_errors_upper == 1  # unchecked: counted wrong
    assert q.model.labels == 3 and q.human_error == "not measured"
    assert q.accuracy_lower_bound == pytest.approx(1 - q.model.hidden_errors_upper / 7)
    d = q.to_dict()
    assert d["accuracy_lower_bound"] == q.accuracy_lower_bound and "precision_lower" in d["auto_accepted"]


def test_gold_answers_charge_people_their_measured_error(store: SqliteStore) -> None:
    store.set_gold(P, {f"i{k}": "a" for k in range(8, 12)})
    for k in range(8, 12):  # one of four gold answers wrong
        store.add_annotation(Annotation(P, f"i{k}", "ann", "b" if k == 8 else "a", 1.0))
    store.put_labels([_label("i0", "a", "human", "single"), _label("i1", "a", "human", "single")])
    q = certified_quality(store, P)
    assert q.human_error == "gold" and 0.25 < q.human_error_rate_upper < 1.0
    assert q.accuracy_lower_bound == pytest.approx(1 - q.human_error_rate_upper * 2 / 2)


def test_no_labels_no_bound(store: SqliteStore) -> None:
    q = certified_quality(store, P)
    assert q.accuracy_lower_bound is None and q.auto_accepted_precision_lower_bound is None
