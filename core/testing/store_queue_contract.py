"""The store contract's task queue rules: tasks, priorities, leases (overlap, expiry, heartbeats,
skips, handing an annotator its own leases back), answers and gold. Part of
:class:`~winnow.core.testing.store_contract.StoreContract`."""

from __future__ import annotations

import pytest
from winnow.core.domain.errors import InvalidInput, LeaseRequired, NotFound
from winnow.core.domain.records import Annotation, Task
from winnow.core.ports.store import Store
from winnow.core.testing.store_records import LEASE_S, P, items, label, lease_ids, task


class TaskQueueContract:
    """Needs the ``s`` fixture of :class:`StoreContract` (project ``P`` with items i0..i4, overlap 2)."""

    # -- tasks and leases -------------------------------------------------------------------
    def test_a_lease_suggests_the_models_label_on_ordinary_tasks_only(self, s: Store) -> None:
        s.add_tasks([Task(P, item_id, 1.0 - k / 10, "v1", 0.0, kind, 1.0, "card")
                     for k, (item_id, kind) in enumerate([("i0", "label"), ("i1", "holdout"), ("i2", "audit"),
                                                          ("i3", "gold")])])
        s.add_tasks([Task(P, "i4", 0.1, None, 0.0)])  # no model yet: nothing to suggest
        leases = s.lease_tasks(P, "ann", 5, LEASE_S, 1.0, 1)
        assert {x.item_id: x.suggestion for x in leases} == {"i0": "card", "i1": None, "i2": None, "i3": None,
                                                            "i4": None}
        again = s.lease_tasks(P, "ann", 5, LEASE_S, 2.0, 1)  # its own leases handed back carry it too
        assert {x.item_id: x.suggestion for x in again}["i0"] == "card"

    def test_an_answer_or_skip_that_needs_a_lease_needs_a_live_one(self, s: Store) -> None:
        s.add_tasks([task("i0"), task("i1")])
        with pytest.raises(LeaseRequired):  # never leased
            s.add_annotation(Annotation(P, "i0", "ann", "card", 10.0), leased=True)
        with pytest.raises(LeaseRequired):
            s.skip(P, "ann", "i0", leased_at=10.0)
        assert s.annotations(P) == [] and lease_ids(s, "ann", 2, 100.0, 2) == ["i0", "i1"]
        with pytest.raises(LeaseRequired):  # leased, but answered after the lease ran out
            s.add_annotation(Annotation(P, "i0", "ann", "card", 100.0 + LEASE_S), leased=True)
        with pytest.raises(LeaseRequired):  # another annotator's lease is not this one's
            s.add_annotation(Annotation(P, "i0", "other", "card", 101.0), leased=True)
        assert s.add_annotation(Annotation(P, "i0", "ann", "card", 101.0), leased=True)
        assert not s.add_annotation(Annotation(P, "i0", "ann", "card", 102.0), leased=True)  # answered: idempotent
        s.skip(P, "ann", "i1", leased_at=102.0)
        with pytest.raises(LeaseRequired):  # skipped: the lease is gone
            s.add_annotation(Annotation(P, "i1", "ann", "card", 103.0), leased=True)
        assert [(a.item_id, a.annotator) for a in s.annotations(P)] == [("i0", "ann")]

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

    def test_a_task_asks_for_its_wanted_answers_which_only_rise(self, s: Store) -> None:
        """Adaptive overlap: a task that wants one answer is full after one lease, whatever the
        project's overlap; raising ``wanted`` opens a slot for another person (never lowered)."""
        s.add_tasks([Task(P, "i0", 0.5, None, 1.0, "audit", 0.1, "card", "auto_accept", 1)])
        assert [(t.wanted, t.probability, t.model_label, t.family) for t in s.open_tasks(P)] == [
            (1, 0.1, "card", "auto_accept")]
        assert lease_ids(s, "x", overlap=3) == ["i0"]
        assert lease_ids(s, "y", overlap=3) == []  # one answer wanted: its slot is taken
        assert s.want_answers(P, "i0", 2) is True
        assert lease_ids(s, "y", overlap=3) == ["i0"]
        assert s.want_answers(P, "i0", 1) is False and s.open_tasks(P)[0].wanted == 2  # never lowered
        assert s.want_answers(P, "ghost", 2) is False
        with pytest.raises(InvalidInput) as err:
            s.want_answers(P, "i0", 0)
        assert err.value.field == "wanted"
        with pytest.raises(InvalidInput) as err:
            s.add_tasks([Task(P, "i1", 0.5, None, 1.0, "label", 2.0)])
        assert err.value.field == "probability"

    def test_audit_record_groups_model_labels_and_joins_audits_to_answers(self, s: Store) -> None:
        """What the certified bounds read: model labels grouped by (aggregation, probability), and
        each audit task with whether people's final label contradicts its model label."""
        s.add_tasks([Task(P, "i0", 0.5, "m1", 0.0, "audit", 0.1, "card", "auto_accept", 1),
                     Task(P, "i1", 0.5, "m1", 0.0, "audit", 0.1, "card", "auto_accept", 1),
                     Task(P, "i2", 0.5, "m1", 0.0, "audit", 0.3, "card", "low_confidence", 1),
                     task("i3")])
        s.put_labels([label("i0", "card", source="human", key="i0:h"), label("i1", "other", source="human", key="i1:h"),
                      label("i3", probability=0.1), label("i4", probability=0.1)])
        kept, audits = s.audit_record(P)
        assert kept == [("auto_accept", 0.1, 2)]
        assert audits == [("auto_accept", 0.1, False), ("auto_accept", 0.1, True), ("low_confidence", 0.3, None)]
        assert s.audit_record(P) == (kept, audits)  # a read: nothing changes
        # one version's record: the labels it gave and the audits of its labels
        s.add_items(items("i5", "i6"))
        s.add_tasks([Task(P, "i5", 0.5, "m2", 0.0, "audit", 0.2, "card", "auto_accept", 1)])
        s.put_labels([label("i6", probability=0.2, source_id="m2", key="i6:m2")])
        assert s.audit_record(P, "m2") == ([("auto_accept", 0.2, 1)], [("auto_accept", 0.2, None)])
        assert s.audit_record(P, "m1") == (kept, audits)
        assert s.audit_record(P, "m3") == ([], [])

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

    # -- leases handed back -----------------------------------------------------------------
    def test_own_live_leases_are_handed_back_first_and_renewed(self, s: Store) -> None:
        """A client that lost a lease reply gets its tasks again (the slot is not taken twice)."""
        s.add_tasks([task("i0", 0.9), task("i1", 0.5), task("i2", 0.1)])
        assert lease_ids(s, "x", n=2, now=0.0) == ["i0", "i1"]
        assert lease_ids(s, "x", n=1, now=10.0) == ["i0"]  # n caps the handed-back leases too
        again = s.lease_tasks(P, "x", 3, LEASE_S, 20.0, 1)
        assert [(x.item_id, x.expires_at) for x in again] == [("i0", 80.0), ("i1", 80.0), ("i2", 80.0)]
        assert lease_ids(s, "y", now=LEASE_S + 5) == []  # renewed: still held after the first expiry
        assert s.add_annotation(Annotation(P, "i0", "x", "card", 21.0))
        s.skip(P, "x", "i1")
        assert lease_ids(s, "x", now=30.0) == ["i2"]  # neither an answered nor a skipped item
        assert lease_ids(s, "y", now=90.0) == ["i1", "i2"]  # x's lease on i2 lapsed at 90
