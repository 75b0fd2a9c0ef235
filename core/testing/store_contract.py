"""The contract of ``winnow.core.ports.store.Store``, run against every adapter (SQLite, PostgreSQL).

Subclass ``StoreContract`` as ``Test<Adapter>Store`` and provide an ``open_store`` fixture: a
function that opens a store on one fresh, empty database each time it is called (a new connection
each time, so that concurrent stores can be tested; the contract closes them). Times are explicit
``now`` values: nothing here sleeps.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Callable, Iterator

import numpy as np
import pytest
from winnow.core.access.tokens import TokenInfo
from winnow.core.domain.errors import InvalidInput, NotFound
from winnow.core.domain.records import (
    PREFERENCE_CLASSES,
    ArrivalDraw,
    Response,
    Annotation,
    Item,
    Label,
    ModelVersion,
    Project,
    Task,
)
from winnow.core.ports.store import ERASURE_DIGEST_S, Erasure, Store
from winnow.core.testing.store_input_contract import StoreInputContract
from winnow.core.testing.store_queue_contract import TaskQueueContract
from winnow.core.testing.store_records import CLASSES, LEASE_S, P, items, label, lease_ids, model, task

__all__ = ["CLASSES", "LEASE_S", "P", "StoreContract", "items", "label", "lease_ids", "model", "task"]


class StoreContract(TaskQueueContract, StoreInputContract):
    """Every method of ``Store``: idempotent writes, validation before writing, close requests; the
    task queue (:class:`TaskQueueContract`), concurrency and bad input (:class:`StoreInputContract`)."""

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

    # -- tokens -----------------------------------------------------------------------------
    def test_tokens_are_kept_as_records_and_revoked_once(self, s: Store) -> None:
        admin = TokenInfo("a" * 12, "h1", "admin", None, "root", 1.0)
        owner = TokenInfo("b" * 12, "h2", "owner", P, "olga", 2.0, expires_at=50.0)
        s.add_token(admin)
        s.add_token(owner)
        assert s.token(owner.token_id) == owner and s.tokens() == [admin, owner] and s.tokens(P) == [owner]
        with pytest.raises(InvalidInput) as taken:
            s.add_token(owner)
        assert taken.value.field == "token_id"
        revoked = s.revoke_token(owner.token_id, 10.0)
        assert revoked.revoked_at == 10.0 and s.revoke_token(owner.token_id, 20.0).revoked_at == 10.0
        assert not revoked.live(5.0) and s.token(admin.token_id).live(1e9)
        with pytest.raises(NotFound):
            s.revoke_token("c" * 12, 1.0)
        with pytest.raises(NotFound):
            s.token("c" * 12)
        for bad, field, error in [(TokenInfo("d" * 12, "h", "owner", "nosuch", "x", 1.0), "project", NotFound),
                                  (TokenInfo("d" * 12, "h", "owner", None, "x", 1.0), "project", InvalidInput),
                                  (TokenInfo("d" * 12, "h", "admin", P, "x", 1.0), "project", InvalidInput),
                                  (TokenInfo("d" * 12, "h", "boss", P, "x", 1.0), "role", InvalidInput),
                                  (TokenInfo("d" * 12, "h", "viewer", P, "nul\x00", 1.0), "name", InvalidInput)]:
            with pytest.raises(error) as raised:
                s.add_token(bad)
            assert raised.value.field == field
        assert len(s.tokens()) == 2

    # -- projects ---------------------------------------------------------------------------
    def test_update_project_changes_settings_audited_never_classes(self, store: Store) -> None:
        store.create_project(Project(P, CLASSES, created_at=1.0, guideline="Pick the customer's intent."))
        assert store.get_project(P).guideline == "Pick the customer's intent."
        updated = store.update_project(Project(P, CLASSES, budget_labels=10, guideline_version="v2", created_at=9.0,
                                               guideline="Pick the customer's intent."), "olga", 5.0)
        assert (updated.budget_labels, updated.guideline_version, updated.created_at) == (10, "v2", 1.0)
        assert store.get_project(P) == updated
        [record] = [r for r in store.audit_trail(P) if r.action == "project_update"]
        assert record.actor == "olga" and json.loads(record.detail) == {"budget_labels": [25, 10],
                                                                        "guideline_version": ["v1", "v2"]}
        assert store.update_project(updated, "olga", 6.0) == updated  # nothing changed: nothing audited
        assert len([r for r in store.audit_trail(P) if r.action == "project_update"]) == 1
        for bad, field, error in [(Project(P, ("x", "y")), "classes", InvalidInput),
                                  (Project(P, CLASSES[:-1]), "classes", InvalidInput),
                                  (Project(P, CLASSES + CLASSES[:1]), "classes", InvalidInput),
                                  (Project(P, CLASSES, budget_labels=200), "budget_labels", InvalidInput),
                                  (Project("nope", CLASSES), "project", NotFound)]:
            with pytest.raises(error) as raised:
                store.update_project(bad, "olga", 7.0)
            assert raised.value.field == field
        assert store.get_project(P) == updated

    def test_classes_are_only_appended_and_audited(self, store: Store) -> None:
        store.create_project(Project(P, CLASSES, created_at=1.0))
        grown = store.update_project(Project(P, CLASSES + ("refund",), created_at=1.0), "olga", 5.0)
        assert grown.classes == CLASSES + ("refund",) and store.get_project(P) == grown
        [record] = [r for r in store.audit_trail(P) if r.action == "project_update"]
        assert json.loads(record.detail) == {"classes": [list(CLASSES), list(CLASSES) + ["refund"]]}

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
            lambda s: s.erase_items("nope", ["a"], "op", 0.0),
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

    def test_a_preference_projects_comparisons_and_arrival_draws_round_trip(self, store: Store) -> None:
        project = Project("prefs", PREFERENCE_CLASSES, kind="preference")
        store.create_project(project)
        pair = (Response("first reply", "model-x"), Response("second reply", ""))
        store.add_items([Item("prefs", "c1", "a prompt", 0.0, pair), Item("prefs", "c0", "another", 0.0, pair)])
        assert store.get_project("prefs").kind == "preference"
        assert store.get_items("prefs", ["c1"])[0].responses == pair
        with pytest.raises(InvalidInput) as bad:  # a comparison has two responses
            store.add_items([Item("prefs", "c2", "a prompt", 0.0, pair[:1])])
        assert bad.value.field == "responses"
        store.record_draws("prefs", [ArrivalDraw("c0", 0.2, False, 0.5), ArrivalDraw("c1", 0.3, True, 0.7)])
        store.record_draws("prefs", [ArrivalDraw("c0", 0.25, True, 0.4)])  # a look redone replaces the first
        assert store.arrival_draws("prefs") == [ArrivalDraw("c1", 0.3, True, 0.7), ArrivalDraw("c0", 0.25, True, 0.4)]
        for draw, field in ((ArrivalDraw("c0", 1.5, True, 0.5), "probability"),
                            (ArrivalDraw("c0", 0.5, True, float("nan")), "expected")):
            with pytest.raises(InvalidInput) as bad:
                store.record_draws("prefs", [ArrivalDraw("c1", 0.1, False, 0.5), draw])
            assert bad.value.field == field
        with pytest.raises(NotFound):
            store.record_draws("prefs", [ArrivalDraw("nope", 0.1, False, 0.5)])
        assert store.arrival_draws("prefs")[0] == ArrivalDraw("c1", 0.3, True, 0.7)  # nothing half-written
        store.erase_items("prefs", ["c1"], "owner", 1.0)  # the draw goes with the item
        assert [d.item_id for d in store.arrival_draws("prefs")] == ["c0"]

    def test_the_first_encoder_bound_to_a_project_stays(self, s: Store) -> None:
        assert s.project_encoder(P) is None
        assert s.bind_encoder(P, "minilm@abc") == "minilm@abc"
        assert s.bind_encoder(P, "bge@def") == "minilm@abc" and s.project_encoder(P) == "minilm@abc"
        with pytest.raises(InvalidInput) as bad:
            s.bind_encoder(P, " ")
        assert bad.value.field == "encoder"
        with pytest.raises(NotFound):
            s.bind_encoder("no-such-project", "minilm@abc")

    def test_retention_drops_the_vectors_of_old_model_labels_only(self, s: Store) -> None:
        """Vectors of items the model labeled before the cut-off, in the given aggregations, go; people's
        labels, later model labels and undecided items keep theirs."""
        s.put_embeddings(P, ["i0", "i1", "i2", "i3", "i4"], np.ones((5, 4), np.float32))
        s.put_labels([label("i0", created_at=1.0), label("i1", aggregation="low_confidence", created_at=1.0),
                      label("i2", source="human", key="i2:h", created_at=1.0), label("i3", created_at=10.0)])
        assert s.drop_model_embeddings(P, 5.0, ()) == 0
        assert s.drop_model_embeddings(P, 5.0, ("low_confidence",)) == 1
        assert s.embedded_ids(P, ["i0", "i1", "i2", "i3", "i4"]) == ["i0", "i2", "i3", "i4"]
        assert s.drop_model_embeddings(P, 5.0, ("auto_accept", "low_confidence")) == 1
        assert s.embedded_ids(P, ["i0", "i1", "i2", "i3", "i4"]) == ["i2", "i3", "i4"]
        assert s.drop_model_embeddings(P, 5.0, ("auto_accept",)) == 0  # done: nothing twice
        for args, field in (((math.nan, ("auto_accept",)), "labeled_before"), ((5.0, "auto_accept"), "aggregations")):
            with pytest.raises(InvalidInput) as err:
                s.drop_model_embeddings(P, *args)
            assert err.value.field == field

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
    def test_erase_items_removes_everything_and_for_ever(self, s: Store) -> None:
        s.put_embeddings(P, ["i0", "i1"], np.ones((2, 4), np.float32))
        s.add_tasks([task("i0"), task("i1")])
        lease_ids(s, "x", overlap=2)
        s.add_annotation(Annotation(P, "i0", "y", "card", 1.0))
        s.set_gold(P, {"i0": "card"})
        s.register_model(model("v1", 0.5))
        s.put_label(label("i0", source="human", created_at=1.0))
        s.register_model(model("v2", 2.0))  # trained after i0's label: may have learned it
        with pytest.raises(NotFound) as unknown:  # one id that never existed: nothing is erased
            s.erase_items(P, ["i0", "ghost"], "owner", 3.0)
        assert unknown.value.field == "item_id" and s.count_items(P) == 5
        erasure = s.erase_items(P, ["i0"], "owner", 3.0)
        assert erasure == Erasure(("i0",), (), ("v2",))
        assert s.count_items(P) == 4
        with pytest.raises(NotFound):
            s.get_items(P, ["i0"])
        with pytest.raises(NotFound):
            s.get_embeddings(P, ["i0"])
        assert s.get_embeddings(P, ["i1"]).shape == (1, 4)
        assert [t.item_id for t in s.open_tasks(P)] == ["i1"]
        assert s.annotations(P) == [] and s.gold(P) == {} and s.labels(P) == []
        assert s.unlabeled_ids(P) == ["i1", "i2", "i3", "i4"]
        [record] = [r for r in s.audit_trail(P) if r.action == "erase"]
        assert (record.actor, record.objects) == ("owner", ("i0",)) and "text of i0" not in record.detail
        assert s.heartbeat(P, "x", ["i0"], LEASE_S, 1.0) == 0
        assert s.erase_items(P, ["i0", "i1"], "owner", 4.0) == Erasure(("i1",), ("i0",), ())  # idempotent
        assert s.add_items(items("i0", "i5")) == 1  # an erased id is never added again
        assert s.find_items(P, ["i5", "i0", "i1"]) == items("i0", "i5")[1:]
        assert s.erased_among(P, ["i0", "i2", "i1"]) == {"i0", "i1"}
        digest = hashlib.sha256(b"text of i0").hexdigest()
        assert [(item_id, d) for _, item_id, d in s.erasures(P)] == [("i0", digest), ("i1", hashlib.sha256(
            b"text of i1").hexdigest())]
        first_seq = s.erasures(P)[0][0]
        assert [item_id for _, item_id, _ in s.erasures(P, after=first_seq)] == ["i1"]
        s.erase_items(P, ["i2"], "owner", 4.0 + ERASURE_DIGEST_S + 1)  # a week later: old digests go
        assert [d is None for _, _, d in s.erasures(P)] == [True, True, False]

    def test_audit_log_oldest_first_per_project(self, s: Store) -> None:
        s.create_project(Project("other", CLASSES))
        s.audit(P, "op", "export", "labels.jsonl", 2.0)
        s.audit(P, "ann", "label", "i0", 1.0)
        assert s.audit_log(P) == [(1.0, "ann", "label", "i0"), (2.0, "op", "export", "labels.jsonl")]
        assert s.audit_log("other") == []

    # -- counting without loading -----------------------------------------------------------
    def test_counts(self, s: Store) -> None:
        assert s.count_labels(P) == {} and s.count_open_tasks(P) == 0
        s.add_tasks([task("i0"), task("i1"), task("i2")])
        s.put_labels([label("i0", source="human"), label("i3"), label("i4", source="gold")])
        s.put_label(label("i1", source="human"))
        assert s.count_labels(P) == {"human": 2, "model": 1, "gold": 1}
        assert s.count_open_tasks(P) == 1

    # -- close-of-stream requests -----------------------------------------------------------
    def test_close_requests_are_idempotent_while_pending_and_served_once(self, s: Store) -> None:
        first = s.request_close(P, "r1", "op", 5.0)
        assert (first.request_id, first.actor, first.requested_at, first.items, first.served_at) == \
            ("r1", "op", 5.0, 5, None)
        assert s.request_close(P, "r2", "op2", 6.0) == first  # one pending request at a time
        assert s.close_requests(P) == s.close_requests(P, pending_only=True) == [first]
        assert s.mark_closed(P, ["r1", "ghost"], "selector", 3, 2, 7.0) == 1
        assert s.mark_closed(P, ["r1"], "selector", 9, 9, 8.0) == 0  # served once: the outcome stays
        [served] = s.close_requests(P)
        assert (served.served_at, served.tasks, served.low_confidence) == (7.0, 3, 2)
        assert s.close_requests(P, pending_only=True) == []
        assert s.request_close(P, "r1", "op", 9.0) == served  # a used request id is that request
        second = s.request_close(P, "r3", "op", 10.0)
        assert (second.request_id, second.served_at) == ("r3", None)
        assert [r.request_id for r in s.close_requests(P)] == ["r1", "r3"]
        log = [(actor, action) for _, actor, action, _ in s.audit_log(P)]
        assert log == [("op", "close_stream"), ("selector", "stream_closed"), ("op", "close_stream")]
