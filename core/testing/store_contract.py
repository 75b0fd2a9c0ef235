"""The contract of ``winnow.core.ports.store.Store``, run against every adapter (SQLite, PostgreSQL).

Subclass ``StoreContract`` as ``Test<Adapter>Store`` and provide an ``open_store`` fixture: a
function that opens a store on one fresh, empty database each time it is called (a new connection
each time, so that concurrent stores can be tested; the contract closes them). Times are explicit
``now`` values: nothing here sleeps.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from typing import Callable, Iterator

import numpy as np
import pytest
from winnow.core.domain.errors import InvalidInput, NotFound
from winnow.core.domain.records import (
    Annotation,
    Item,
    Label,
    ModelVersion,
    Project,
    Task,
)
from winnow.core.ports.store import Store

P = "proj"
CLASSES = ("billing", "card", "other")
LEASE_S = 60.0


def items(*ids: str, project: str = P) -> list[Item]:
    return [Item(project, i, f"text of {i}", ingested_at=float(n)) for n, i in enumerate(ids)]


def task(item_id: str, priority: float = 0.5, created_at: float = 0.0, kind: str = "label") -> Task:
    return Task(P, item_id, priority, "m1", created_at, kind)  # type: ignore[arg-type]


def label(item_id: str, value: str = "card", key: str | None = None, **kw: object) -> Label:
    fields: dict = dict(
        project=P, item_id=item_id, label=value, source="model", source_id="m1", confidence=0.99,
        threshold=0.9, aggregation="auto_accept", guideline_version="v1", created_at=1.0,
        idempotency_key=key or f"{item_id}:prelabel:m1",
    )
    return Label(**(fields | kw))


def model(version: str, created_at: float) -> ModelVersion:
    return ModelVersion(P, version, f"/models/{version}.onnx", created_at, 100, 1.3, 0.87, {"accuracy": 0.9})


def lease_ids(store: Store, annotator: str, n: int = 10, now: float = 0.0, overlap: int = 1) -> list[str]:
    return [lease.item_id for lease in store.lease_tasks(P, annotator, n, LEASE_S, now, overlap)]


class StoreContract:
    """Every method of ``Store``: idempotent writes, validation before writing, leasing rules."""

    @pytest.fixture
    def store(self, open_store: Callable[[], Store]) -> Iterator[Store]:
        """An empty store."""
        store = open_store()
        yield store
        store.close()

    @pytest.fixture
    def s(self, store: Store) -> Store:
        """The store with project ``P`` and items i0..i4 ingested."""
        store.create_project(Project(P, CLASSES, overlap=2))
        store.add_items(items("i0", "i1", "i2", "i3", "i4"))
        return store

    # -- projects ---------------------------------------------------------------------------
    def test_create_project_is_idempotent_and_names_are_unique(self, store: Store) -> None:
        project = Project(P, CLASSES, overlap=3, precision_target=0.95, created_at=5.0)
        store.create_project(project)
        store.create_project(project)
        assert store.get_project(P) == project
        assert store.list_projects() == [project]
        with pytest.raises(InvalidInput) as err:
            store.create_project(Project(P, ("x", "y")))
        assert err.value.field == "name"
        assert store.get_project(P) == project

    def test_project_without_classes_is_refused(self, store: Store) -> None:
        with pytest.raises(InvalidInput) as err:
            store.create_project(Project(P, ()))
        assert err.value.field == "classes"
        assert store.list_projects() == []

    @pytest.mark.parametrize(
        ("settings", "field"),
        [
            ({"budget_per_items": 0}, "budget_per_items"),
            ({"budget_labels": 101}, "budget_labels"),
            ({"budget_labels": -1}, "budget_labels"),
            ({"precision_target": 1.0}, "precision_target"),
            ({"precision_target": 0.0}, "precision_target"),
            ({"strategy": "psychic"}, "strategy"),
        ],
    )
    def test_project_with_bad_settings_is_refused(self, store: Store, settings: dict, field: str) -> None:
        with pytest.raises(InvalidInput) as err:
            store.create_project(Project(P, CLASSES, **settings))
        assert err.value.field == field
        assert store.list_projects() == []

    @pytest.mark.parametrize(
        "call",
        [
            lambda s: s.get_project("nope"),
            lambda s: s.add_items(items("a", project="nope")),
            lambda s: s.get_items("nope", ["a"]),
            lambda s: s.count_items("nope"),
            lambda s: s.delete_item("nope", "a"),
            lambda s: s.put_embeddings("nope", ["a"], np.zeros((1, 2), np.float32)),
            lambda s: s.get_embeddings("nope", ["a"]),
            lambda s: s.add_tasks([Task("nope", "a", 1.0, None, 0.0)]),
            lambda s: s.set_priorities("nope", {"a": 1.0}),
            lambda s: s.lease_tasks("nope", "ann", 1, LEASE_S, 0.0, 1),
            lambda s: s.heartbeat("nope", "ann", ["a"], LEASE_S, 0.0),
            lambda s: s.skip("nope", "ann", "a"),
            lambda s: s.add_annotation(Annotation("nope", "a", "ann", "card", 0.0)),
            lambda s: s.annotations("nope"),
            lambda s: s.task_ids("nope", "label"),
            lambda s: s.count_open_tasks("nope"),
            lambda s: s.open_tasks("nope"),
            lambda s: s.set_gold("nope", {"a": "card"}),
            lambda s: s.gold("nope"),
            lambda s: s.put_label(label("a", project="nope")),
            lambda s: s.labels("nope"),
            lambda s: s.count_labels("nope"),
            lambda s: s.unlabeled_ids("nope"),
            lambda s: s.register_model(ModelVersion("nope", "m1", "/m", 0.0, 1, 1.0, 0.5)),
            lambda s: s.models("nope"),
            lambda s: s.current_model("nope"),
            lambda s: s.promote("nope", "m1"),
            lambda s: s.audit("nope", "op", "export", "all", 0.0),
            lambda s: s.audit_log("nope"),
            lambda s: s.request_close("nope", "r1", "op", 0.0),
            lambda s: s.close_requests("nope"),
            lambda s: s.mark_closed("nope", ["r1"], "selector", 0, 0, 0.0),
        ],
    )
    def test_unknown_project_is_not_found(self, s: Store, call: Callable[[Store], object]) -> None:
        with pytest.raises(NotFound) as err:
            call(s)
        assert err.value.field == "project"

    # -- items ------------------------------------------------------------------------------
    def test_add_items_is_idempotent(self, s: Store) -> None:
        assert s.add_items(items("i3", "i4", "i5", "i5")) == 1
        assert s.add_items(items("i5")) == 0
        assert s.count_items(P) == 6
        assert s.get_items(P, ["i5"]) == [Item(P, "i5", "text of i5", 2.0)]

    def test_get_items_in_asked_order_and_names_missing_id(self, s: Store) -> None:
        assert [i.item_id for i in s.get_items(P, ["i3", "i0", "i3"])] == ["i3", "i0", "i3"]
        with pytest.raises(NotFound) as err:
            s.get_items(P, ["i1", "ghost"])
        assert err.value.field == "item_id" and "ghost" in err.value.message

    @pytest.mark.parametrize(("bad", "field"), [(Item(P, "", "text"), "item_id"), (Item(P, "x", " "), "text")])
    def test_bad_item_writes_nothing(self, s: Store, bad: Item, field: str) -> None:
        with pytest.raises(InvalidInput) as err:
            s.add_items([*items("new1"), bad])
        assert err.value.field == field
        assert s.count_items(P) == 5

    def test_projects_are_isolated(self, s: Store) -> None:
        s.create_project(Project("other", CLASSES))
        s.add_items(items("i0", project="other"))
        assert s.put_label(label("i0"))
        assert s.unlabeled_ids("other") == ["i0"]
        assert s.count_items("other") == 1
        with pytest.raises(NotFound):
            s.get_items("other", ["i1"])

    def test_unlabeled_ids_in_ingest_order_without_labelled(self, store: Store) -> None:
        store.create_project(Project(P, CLASSES))
        store.add_items(items("z", "a", "m"))
        store.add_items(items("b"))
        store.put_label(label("a"))
        assert store.unlabeled_ids(P) == ["z", "m", "b"]
        assert store.unlabeled_ids(P, among=["b", "a", "z", "unknown"]) == ["z", "b"]

    # -- embeddings -------------------------------------------------------------------------
    def test_embeddings_round_trip_exactly(self, s: Store) -> None:
        vectors = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)  # [3, 8]
        s.put_embeddings(P, ["i0", "i1", "i2"], vectors)
        got = s.get_embeddings(P, ["i2", "i0"])
        assert s.embedded_ids(P, ["i2", "nope", "i0"]) == ["i2", "i0"]
        assert got.dtype == np.float32 and got.shape == (2, 8)
        assert np.array_equal(got, vectors[[2, 0]])
        s.put_embeddings(P, ["i0"], np.ones((1, 8), np.float64))
        assert np.array_equal(s.get_embeddings(P, ["i0", "i1"]), np.vstack([np.ones(8), vectors[1]]).astype(np.float32))

    def test_embedding_errors(self, s: Store) -> None:
        with pytest.raises(NotFound) as err:
            s.get_embeddings(P, ["i3"])
        assert err.value.field == "item_id" and "i3" in err.value.message
        with pytest.raises(NotFound):
            s.put_embeddings(P, ["i0", "ghost"], np.zeros((2, 4), np.float32))
        with pytest.raises(InvalidInput) as bad:
            s.put_embeddings(P, ["i0", "i1"], np.zeros((3, 4), np.float32))
        assert bad.value.field == "vectors"
        with pytest.raises(NotFound):
            s.get_embeddings(P, ["i0"])  # nothing was written

    # -- tasks and leases -------------------------------------------------------------------
    def test_add_tasks_is_idempotent(self, s: Store) -> None:
        assert s.add_tasks([task("i0", 0.2), task("i1", 0.3)]) == 2
        assert s.add_tasks([task("i0", 0.9), task("i2", 0.1)]) == 1
        assert [(t.item_id, t.priority) for t in s.open_tasks(P)] == [("i1", 0.3), ("i0", 0.2), ("i2", 0.1)]
        assert [t.item_id for t in s.open_tasks(P, among=["i2", "i0", "i3", "ghost"])] == ["i0", "i2"]
        s.put_label(label("i0"))
        assert [t.item_id for t in s.open_tasks(P, among=["i0", "i2"])] == ["i2"]
        assert s.open_tasks(P, among=[]) == []
        with pytest.raises(NotFound):
            s.add_tasks([task("ghost")])

    def test_task_ids_by_kind_include_closed_tasks(self, s: Store) -> None:
        s.add_tasks([task("i0"), Task(P, "i1", 0.5, None, 1.0, "holdout"), Task(P, "i2", 0.5, None, 2.0, "holdout")])
        s.put_label(label("i1"))
        assert s.task_ids(P, "holdout") == ["i1", "i2"]
        assert s.task_ids(P, "label") == ["i0"]

    def test_lease_by_priority_then_created_order(self, s: Store) -> None:
        s.add_tasks([task("i0", 0.1, 0.0), task("i1", 0.9, 1.0), task("i2", 0.5, 2.0), task("i3", 0.5, 1.5)])
        leases = s.lease_tasks(P, "ann", 3, LEASE_S, 100.0, 1)
        assert [x.item_id for x in leases] == ["i1", "i3", "i2"]
        first = leases[0]
        assert (first.annotator, first.text, first.kind, first.expires_at) == ("ann", "text of i1", "label", 160.0)
        # its own live leases first (renewed), then new ones; never one item twice
        again = s.lease_tasks(P, "ann", 10, LEASE_S, 110.0, 1)
        assert [(x.item_id, x.expires_at) for x in again] == [("i1", 170.0), ("i3", 170.0), ("i2", 170.0), ("i0", 170.0)]

    def test_set_priorities_reranks(self, s: Store) -> None:
        s.add_tasks([task("i0", 0.9), task("i1", 0.5), task("i2", 0.1)])
        s.set_priorities(P, {"i2": 2.0, "i0": 0.0, "ghost": 1.0})
        assert [t.item_id for t in s.open_tasks(P)] == ["i2", "i1", "i0"]
        assert lease_ids(s, "ann", n=1) == ["i2"]

    def test_overlap_never_exceeded(self, s: Store) -> None:
        s.add_tasks([task("i0")])
        assert lease_ids(s, "x", overlap=2) == ["i0"]
        assert lease_ids(s, "y", overlap=2) == ["i0"]
        assert lease_ids(s, "z", overlap=2) == []
        assert lease_ids(s, "x", overlap=2) == ["i0"]  # its own lease handed back, not a third slot
        assert lease_ids(s, "z", overlap=2) == []

    def test_answers_take_overlap_slots(self, s: Store) -> None:
        s.add_tasks([task("i0")])
        for who in ("x", "y"):
            lease_ids(s, who, overlap=2)
            assert s.add_annotation(Annotation(P, "i0", who, "card", 1.0))
        assert lease_ids(s, "z", now=10 * LEASE_S, overlap=2) == []
        assert lease_ids(s, "x", now=10 * LEASE_S, overlap=3) == []  # never an answered item again
        assert lease_ids(s, "z", now=10 * LEASE_S, overlap=3) == ["i0"]

    def test_gold_task_open_to_every_annotator_once(self, s: Store) -> None:
        s.add_tasks([task("i0", kind="gold"), task("i1", priority=0.1)])
        for who in ("x", "y", "z"):
            assert s.lease_tasks(P, who, 1, LEASE_S, 0.0, 1)[0].kind == "gold"
            assert s.add_annotation(Annotation(P, "i0", who, "card", 1.0))
        assert lease_ids(s, "x") == ["i1"]
        assert lease_ids(s, "y") == []

    def test_expired_lease_is_handed_out_again(self, s: Store) -> None:
        s.add_tasks([task("i0")])
        assert lease_ids(s, "x", now=0.0) == ["i0"]
        assert lease_ids(s, "y", now=LEASE_S - 1) == []
        assert lease_ids(s, "y", now=LEASE_S) == ["i0"]
        assert lease_ids(s, "x", now=LEASE_S + 1) == []

    def test_skip_releases_and_is_final_for_the_annotator(self, s: Store) -> None:
        s.add_tasks([task("i0")])
        assert lease_ids(s, "x") == ["i0"]
        s.skip(P, "x", "i0")
        assert lease_ids(s, "y") == ["i0"]
        assert lease_ids(s, "x", now=10 * LEASE_S) == []
        assert lease_ids(s, "z", now=10 * LEASE_S) == ["i0"]

    def test_heartbeat_extends_live_leases(self, s: Store) -> None:
        s.add_tasks([task("i0"), task("i1", 0.1)])
        assert lease_ids(s, "x", n=1, now=0.0) == ["i0"]
        assert s.heartbeat(P, "x", ["i0", "i1"], LEASE_S, LEASE_S / 2) == 1
        assert s.heartbeat(P, "y", ["i0"], LEASE_S, LEASE_S / 2) == 0
        assert lease_ids(s, "y", n=1, now=LEASE_S + 1) == ["i1"]  # i0 still held
        assert lease_ids(s, "z", n=1, now=1.5 * LEASE_S) == ["i0"]
        assert s.heartbeat(P, "x", ["i0"], LEASE_S, 1.5 * LEASE_S) == 0  # lapsed

    def test_annotations_per_item_and_idempotent(self, s: Store) -> None:
        first = Annotation(P, "i0", "x", "card", 1.0)
        assert s.add_annotation(first)
        assert s.add_annotation(Annotation(P, "i1", "x", "other", 2.0))
        assert s.add_annotation(Annotation(P, "i0", "y", "billing", 3.0))
        assert not s.add_annotation(Annotation(P, "i0", "x", "billing", 4.0))
        assert s.annotations(P, ["i0"]) == [first, Annotation(P, "i0", "y", "billing", 3.0)]
        assert [a.item_id for a in s.annotations(P)] == ["i0", "i1", "i0"]
        assert s.annotations(P, []) == []

    def test_bad_annotation_writes_nothing(self, s: Store) -> None:
        with pytest.raises(InvalidInput) as err:
            s.add_annotation(Annotation(P, "i0", "x", "cat", 1.0))
        assert err.value.field == "label" and "schema" in err.value.message
        with pytest.raises(NotFound) as missing:
            s.add_annotation(Annotation(P, "ghost", "x", "card", 1.0))
        assert missing.value.field == "item_id"
        assert s.annotations(P) == []

    def test_final_label_removes_task_from_queue_and_leasing(self, s: Store) -> None:
        s.add_tasks([task("i0", 0.9), task("i1", 0.1)])
        assert lease_ids(s, "x", n=1) == ["i0"]
        assert s.put_label(label("i0"))
        assert [t.item_id for t in s.open_tasks(P)] == ["i1"]
        assert s.heartbeat(P, "x", ["i0"], LEASE_S, 1.0) == 0
        assert lease_ids(s, "x", now=2.0) == ["i1"]  # a lease on a closed task is not handed back
        assert lease_ids(s, "y", now=10 * LEASE_S) == ["i1"]

    # -- gold -------------------------------------------------------------------------------
    def test_gold_round_trip_and_schema(self, s: Store) -> None:
        s.set_gold(P, {"i0": "card", "i1": "other"})
        s.set_gold(P, {"i1": "billing"})
        assert s.gold(P) == {"i0": "card", "i1": "billing"}
        with pytest.raises(InvalidInput) as err:
            s.set_gold(P, {"i2": "card", "i3": "cat"})
        assert err.value.field == "label"
        assert s.gold(P) == {"i0": "card", "i1": "billing"}

    # -- final labels -----------------------------------------------------------------------
    def test_put_label_is_idempotent_and_final(self, s: Store) -> None:
        s.add_tasks([task("i0")])
        first = label("i0")
        assert s.put_label(first)
        assert not s.put_label(first)
        assert not s.put_label(label("i0", "other", key="i0:human:m2", source="human"))
        assert not s.put_label(label("i1", key=first.idempotency_key))
        assert s.labels(P) == [first]
        assert s.open_tasks(P) == []
        assert lease_ids(s, "x") == []

    def test_label_outside_schema_writes_nothing(self, s: Store) -> None:
        with pytest.raises(InvalidInput) as err:
            s.put_label(label("i0", "cat"))
        assert err.value.field == "label"
        with pytest.raises(NotFound):
            s.put_label(label("ghost"))
        assert s.labels(P) == []
        assert s.put_label(label("i0"))

    def test_put_labels_writes_a_batch_idempotently(self, s: Store) -> None:
        s.add_tasks([task("i0"), task("i1"), task("i2"), task("i3")])
        lease_ids(s, "x", overlap=2)
        first = label("i0")
        assert s.put_label(first)
        batch = [
            label("i0", "other", key="i0:selector:m2"),  # the item already has a final label
            label("i1", created_at=2.0),
            label("i2", key=first.idempotency_key),  # the key was seen
            label("i3", "billing", created_at=3.0),
            label("i1", "other", key="i1:selector:m2"),  # a second label for an item of this batch
            label("i4", key="i3:prelabel:m1"),  # a key of this batch
        ]
        assert s.put_labels(batch) == [False, True, False, True, False, False]
        assert s.labels(P) == [first, batch[1], batch[3]]
        assert [t.item_id for t in s.open_tasks(P)] == ["i2"]
        assert s.heartbeat(P, "x", ["i0", "i1", "i2", "i3"], LEASE_S, 1.0) == 1  # leases of labelled items lapsed
        assert s.put_labels(batch) == [False] * len(batch)  # redelivered
        assert s.put_labels([]) == []
        assert len(s.labels(P)) == 3

    @pytest.mark.parametrize(
        ("bad", "error", "field"),
        [
            (label("i2", "cat"), InvalidInput, "label"),
            (label("i2", source="oracle"), InvalidInput, "source"),
            (label("i2", confidence=1.5), InvalidInput, "confidence"),
            (label("i2", idempotency_key=""), InvalidInput, "idempotency_key"),
            (label("ghost"), NotFound, "item_id"),
            (label("i2", project="nope"), NotFound, "project"),
        ],
    )
    def test_bad_label_in_a_batch_writes_nothing(self, s: Store, bad: Label, error: type, field: str) -> None:
        s.add_tasks([task("i0"), task("i1")])
        with pytest.raises(error) as err:
            s.put_labels([label("i0"), label("i1"), bad])
        assert err.value.field == field
        assert s.labels(P) == []
        assert [t.item_id for t in s.open_tasks(P)] == ["i0", "i1"]
        assert s.put_labels([label("i0"), label("i1")]) == [True, True]

    def test_labels_by_source_oldest_first_and_threshold_round_trip(self, s: Store) -> None:
        s.put_label(label("i2", created_at=3.0, threshold=math.inf))
        s.put_label(label("i0", created_at=1.0, source="human", source_id="x,y", threshold=None))
        s.put_label(label("i1", created_at=2.0, aggregation="low_confidence"))
        assert [lb.item_id for lb in s.labels(P)] == ["i0", "i1", "i2"]
        assert [lb.item_id for lb in s.labels(P, "model")] == ["i1", "i2"]
        assert s.labels(P, "human")[0].threshold is None
        assert s.labels(P)[2].threshold == math.inf

    # -- models -----------------------------------------------------------------------------
    def test_register_promote_current(self, s: Store) -> None:
        assert s.current_model(P) is None
        v1, v2 = model("v1", 1.0), model("v2", 2.0)
        s.register_model(v1)
        assert s.current_model(P) == v1
        s.register_model(v2)
        assert s.current_model(P) == v2
        assert s.promote(P, "v1") == v1
        assert s.current_model(P) == v1
        s.register_model(v2)  # a redelivered registration changes nothing
        assert s.current_model(P) == v1
        assert s.models(P) == [v1, v2]
        with pytest.raises(NotFound) as err:
            s.promote(P, "v9")
        assert err.value.field == "version"
        assert s.current_model(P) == v1

    # -- deletion and audit -----------------------------------------------------------------
    def test_delete_item_removes_everything(self, s: Store) -> None:
        s.put_embeddings(P, ["i0", "i1"], np.ones((2, 4), np.float32))
        s.add_tasks([task("i0"), task("i1")])
        lease_ids(s, "x", overlap=2)
        s.add_annotation(Annotation(P, "i0", "y", "card", 1.0))
        s.set_gold(P, {"i0": "card"})
        s.put_label(label("i0"))
        s.delete_item(P, "i0")
        assert s.count_items(P) == 4
        with pytest.raises(NotFound):
            s.get_items(P, ["i0"])
        with pytest.raises(NotFound):
            s.get_embeddings(P, ["i0"])
        assert s.get_embeddings(P, ["i1"]).shape == (1, 4)
        assert [t.item_id for t in s.open_tasks(P)] == ["i1"]
        assert s.annotations(P) == [] and s.gold(P) == {} and s.labels(P) == []
        assert s.unlabeled_ids(P) == ["i1", "i2", "i3", "i4"]
        assert any("delete" in action and detail == "i0" for _, _, action, detail in s.audit_log(P))
        assert s.heartbeat(P, "x", ["i0"], LEASE_S, 1.0) == 0
        with pytest.raises(NotFound) as err:
            s.delete_item(P, "i0")
        assert err.value.field == "item_id"
        assert s.add_items(items("i0")) == 1
        assert s.unlabeled_ids(P)[-1] == "i0"

    def test_audit_log_oldest_first_per_project(self, s: Store) -> None:
        s.create_project(Project("other", CLASSES))
        s.audit(P, "op", "export", "labels.jsonl", 2.0)
        s.audit(P, "ann", "label", "i0", 1.0)
        assert s.audit_log(P) == [(1.0, "ann", "label", "i0"), (2.0, "op", "export", "labels.jsonl")]
        assert s.audit_log("other") == []
