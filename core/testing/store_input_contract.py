"""The store contract's rules for calls made at once and for bad input: concurrent leasers never
take a slot twice, and a refused call (a NUL character in any text, a time that is not finite)
names the field and writes nothing. Part of :class:`~winnow.core.testing.store_contract.StoreContract`."""

from __future__ import annotations

import math
import threading
from collections import Counter
from typing import Callable

import numpy as np
import pytest
from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.records import Annotation, Item, ModelVersion, Project, Task
from winnow.core.ports.store import Store
from winnow.core.testing.store_records import CLASSES, LEASE_S, P, items, label, task


class StoreInputContract:
    """Needs the ``s`` and ``open_store`` fixtures of :class:`StoreContract`."""

    # -- concurrency ------------------------------------------------------------------------
    def test_concurrent_leasers_never_exceed_overlap(self, open_store: Callable[[], Store]) -> None:
        """Four annotators, each with its own store (connection), lease and answer at once; every
        slot goes out exactly once."""
        setup = open_store()
        setup.create_project(Project(P, CLASSES, overlap=2))
        ids = [f"i{n}" for n in range(40)]
        setup.add_items(items(*ids))
        setup.add_tasks([task(i, priority=float(n % 5)) for n, i in enumerate(ids)])
        stores = [open_store() for _ in range(4)]
        start = threading.Barrier(len(stores))
        answered: list[tuple[str, str]] = []
        errors: list[BaseException] = []

        def annotate(store: Store, who: str) -> None:
            try:
                start.wait()
                while got := store.lease_tasks(P, who, 3, LEASE_S, 0.0, 2):
                    for lease in got:
                        assert store.add_annotation(Annotation(P, lease.item_id, who, "card", 1.0))
                        answered.append((who, lease.item_id))
            except BaseException as exc:  # re-raised in the main thread below
                errors.append(exc)

        threads = [threading.Thread(target=annotate, args=(st, f"ann{k}")) for k, st in enumerate(stores)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for st in stores:
            st.close()
        try:
            if errors:
                raise errors[0]
            assert len(set(answered)) == len(answered)
            assert Counter(item_id for _, item_id in answered) == {i: 2 for i in ids}
            assert len(setup.annotations(P)) == 2 * len(ids)
        finally:
            setup.close()

    # -- bad input: nothing half-written ----------------------------------------------------
    @pytest.mark.parametrize(
        ("call", "field"),
        [
            (lambda s: s.create_project(Project("a\x00b", CLASSES)), "name"),
            (lambda s: s.create_project(Project("q", ("ok", "c\x00"))), "classes"),
            (lambda s: s.create_project(Project("q", CLASSES, guideline_version="v\x00")), "guideline_version"),
            (lambda s: s.get_project("p\x00"), "project"),
            (lambda s: s.add_items([*items("n1"), Item(P, "n\x002", "text")]), "item_id"),
            (lambda s: s.add_items([*items("n1"), Item(P, "n2", "te\x00xt")]), "text"),
            (lambda s: s.add_items([*items("n1"), Item(P + "\x00", "n2", "text")]), "project"),
            (lambda s: s.get_items(P, ["i0", "i\x001"]), "item_id"),
            (lambda s: s.erase_items(P, ["i0\x00"], "op", 0.0), "item_id"),
            (lambda s: s.unlabeled_ids(P, ["i\x00"]), "item_id"),
            (lambda s: s.put_embeddings(P, ["i0", "i\x00"], np.zeros((2, 2), np.float32)), "item_id"),
            (lambda s: s.add_tasks([task("i1"), Task(P, "i0", 0.5, "m\x00", 0.0)]), "model_version"),
            (lambda s: s.set_priorities(P, {"i0": 1.0, "i\x00": 2.0}), "item_id"),
            (lambda s: s.lease_tasks(P, "a\x00", 1, LEASE_S, 0.0, 1), "annotator"),
            (lambda s: s.heartbeat(P, "ann", ["i\x00"], LEASE_S, 0.0), "item_id"),
            (lambda s: s.skip(P, "a\x00", "i0"), "annotator"),
            (lambda s: s.add_annotation(Annotation(P, "i0", "a\x00", "card", 0.0)), "annotator"),
            (lambda s: s.add_annotation(Annotation(P, "i0", "ann", "ca\x00rd", 0.0)), "label"),
            (lambda s: s.set_gold(P, {"i0": "card", "i\x00": "card"}), "item_id"),
            (lambda s: s.put_labels([label("i1"), label("i0", source_id="m\x00")]), "source_id"),
            (lambda s: s.put_labels([label("i1"), label("i0", key="k\x00")]), "idempotency_key"),
            (lambda s: s.labels(P, "hu\x00man"), "source"),
            (lambda s: s.register_model(ModelVersion(P, "v\x00", "/m", 0.0, 1, 1.0, 0.5)), "version"),
            (lambda s: s.promote(P, "v\x00"), "version"),
            (lambda s: s.audit(P, "op", "export", "all\x00", 0.0), "detail"),
            (lambda s: s.request_close(P, "r1", "o\x00p", 0.0), "actor"),
            (lambda s: s.mark_closed(P, ["r\x00"], "selector", 0, 0, 0.0), "request_id"),
        ],
    )
    def test_a_nul_character_is_refused_naming_the_field(self, s: Store, call: Callable[[Store], object],
                                                         field: str) -> None:
        self._refused_writing_nothing(s, call, field)

    @pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
    @pytest.mark.parametrize(
        ("call", "field"),
        [
            (lambda s, t: s.create_project(Project("q", CLASSES, created_at=t)), "created_at"),
            (lambda s, t: s.add_items([*items("n1"), Item(P, "n2", "text", t)]), "ingested_at"),
            (lambda s, t: s.add_tasks([task("i1"), task("i0", created_at=t)]), "created_at"),
            (lambda s, t: s.lease_tasks(P, "ann", 1, LEASE_S, t, 1), "now"),
            (lambda s, t: s.lease_tasks(P, "ann", 1, t, 0.0, 1), "lease_s"),
            (lambda s, t: s.heartbeat(P, "ann", ["i0"], LEASE_S, t), "now"),
            (lambda s, t: s.add_annotation(Annotation(P, "i0", "ann", "card", t)), "created_at"),
            (lambda s, t: s.put_labels([label("i1"), label("i0", created_at=t)]), "created_at"),
            (lambda s, t: s.register_model(ModelVersion(P, "v1", "/m", t, 1, 1.0, 0.5)), "created_at"),
            (lambda s, t: s.audit(P, "op", "export", "all", t), "now"),
            (lambda s, t: s.request_close(P, "r1", "op", t), "now"),
        ],
    )
    def test_a_time_that_is_not_finite_is_refused(self, s: Store, call: Callable[[Store, float], object],
                                                  field: str, bad: float) -> None:
        self._refused_writing_nothing(s, lambda store: call(store, bad), field)

    @staticmethod
    def _refused_writing_nothing(s: Store, call: Callable[[Store], object], field: str) -> None:
        s.add_tasks([task("i0")])
        s.lease_tasks(P, "ann", 1, LEASE_S, 0.0, 1)
        before = (s.list_projects(), s.count_items(P), s.open_tasks(P), s.annotations(P), s.labels(P), s.gold(P),
                  s.models(P), s.audit_log(P), s.close_requests(P), s.embedded_ids(P, ["i0", "i1"]))
        with pytest.raises(InvalidInput) as err:
            call(s)
        assert err.value.field == field
        after = (s.list_projects(), s.count_items(P), s.open_tasks(P), s.annotations(P), s.labels(P), s.gold(P),
                 s.models(P), s.audit_log(P), s.close_requests(P), s.embedded_ids(P, ["i0", "i1"]))
        assert after == before
        assert s.heartbeat(P, "ann", ["i0"], LEASE_S, 1.0) == 1  # the lease is as it was
