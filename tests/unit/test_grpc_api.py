"""The gRPC API on a real server (port 0) over the embedded SQLite bus and store, through WinnowClient."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from winnow.core.access.tokens import issue
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.errors import InvalidInput, NotFound, PermissionDenied, WinnowError
from winnow.core.domain.codecs import ITEMS_SCORED
from winnow.core.domain.records import Item, ModelVersion, Scored, Task
from winnow.core.domain.settings import LoopConfig
from winnow.core.domain.validation import MAX_TEXT_BYTES
from winnow.core.loop.close import StreamStatus
from winnow.core.loop.selector import Selector
from winnow.core.loop.topics import topic
from winnow.services.api.convert import to_message
from winnow.services.api.auth import Authenticator
from winnow.services.api.server import create_server
from winnow.services.api.servicers import SERVICES
from winnow.services.client import WinnowClient, channel
from winnow.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    labeling_pb2,
    labeling_pb2_grpc,
    records_pb2,
)

P = "reviews"
CLASSES = ("pos", "neg")
GRACE_S = 1.0


@dataclass
class Served:
    client: WinnowClient  # the admin's
    channel: grpc.Channel  # carries the admin's token
    bus: SqliteBus
    store: SqliteStore
    target: str
    members: list[WinnowClient]

    def member(self, name: str, role: str = "annotator") -> WinnowClient:
        """A client acting as ``name``, a ``role`` of project P."""
        token, _ = issue(self.store, "test", role, P, name, time.time())
        self.members.append(WinnowClient(self.target, token))
        return self.members[-1]


@contextmanager
def _serve(tmp_path: Path, services: tuple[str, ...] = tuple(SERVICES)) -> Iterator[Served]:
    bus, store = SqliteBus(tmp_path / "bus.sqlite"), SqliteStore(tmp_path / "store.sqlite")
    server, port = create_server(bus, store, Authenticator(store), services=services)
    server.start()
    admin, _ = issue(store, "test", "admin", None, "admin", time.time())
    target = f"127.0.0.1:{port}"
    served = Served(WinnowClient(target, admin), channel(target, admin), bus, store, target, [])
    try:
        yield served
    finally:
        for client in (served.client, *served.members):
            client.close()
        served.channel.close()
        server.stop(GRACE_S).wait()
        bus.close()
        store.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with _serve(tmp_path) as served:
        yield served


@pytest.fixture
def project(served: Served) -> Served:
    served.client.create_project(P, CLASSES, overlap=2, budget_labels=10, strategy="uncertainty")
    return served


def _published(bus: SqliteBus, stage: str) -> list[str]:
    """Keys on the project's ``stage`` topic (read by a fresh consumer group)."""
    consumer = bus.consumer([topic(P, stage)], f"check-{stage}")
    try:
        return [m.key for m in consumer.poll(1000)]
    finally:
        consumer.close()


def _items(*ids: str) -> list[Item]:
    return [Item(P, i, f"text of {i}") for i in ids]


# -- health and reflection ----------------------------------------------------------------------
def test_health_says_serving_for_every_service(served: Served) -> None:
    stub = health_pb2_grpc.HealthStub(served.channel)
    for name in ["", *(f"winnow.v1.{s}" for s in ("Ingest", "Labeling", "Projects", "Models"))]:
        response = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING, name


def test_reflection_lists_and_describes_the_services(served: Served) -> None:
    database = ProtoReflectionDescriptorDatabase(served.channel)
    assert {"winnow.v1.Ingest", "winnow.v1.Labeling", "winnow.v1.Projects", "winnow.v1.Models",
            "grpc.health.v1.Health"} <= set(database.get_services())
    labeling = DescriptorPool(database).FindServiceByName("winnow.v1.Labeling")
    assert set(labeling.methods_by_name) == {"LeaseTasks", "SubmitLabel", "Skip", "Heartbeat"}


def test_a_server_serves_only_the_chosen_services(tmp_path: Path) -> None:
    with _serve(tmp_path, services=("Ingest",)) as served:
        health = health_pb2_grpc.HealthStub(served.channel)
        assert health.Check(health_pb2.HealthCheckRequest(service="winnow.v1.Ingest"), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as raised:
            labeling_pb2_grpc.LabelingStub(served.channel).Skip(labeling_pb2.SkipRequest(project=P), timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(InvalidInput) as bad:
            create_server(served.bus, served.store, Authenticator(served.store), services=("billing",))
        assert bad.value.field == "services"
    (tmp_path / "worker").mkdir()
    with _serve(tmp_path / "worker", services=()) as worker:  # a worker process: health and reflection only
        health = health_pb2_grpc.HealthStub(worker.channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        assert "winnow.v1.Ingest" not in ProtoReflectionDescriptorDatabase(worker.channel).get_services()


# -- projects -----------------------------------------------------------------------------------
def test_create_project_is_idempotent_and_validates_settings(served: Served) -> None:
    created = served.client.create_project(P, CLASSES, precision_target=0.9)
    assert (created.name, created.classes, created.precision_target, created.budget_labels) == (P, CLASSES, 0.9, 25)
    assert served.client.create_project(P, CLASSES, precision_target=0.9) == created
    assert served.store.get_project(P) == created
    with pytest.raises(InvalidInput, match="other settings") as taken:
        served.client.create_project(P, ("pos", "neg", "mixed"))
    assert taken.value.field == "name"
    for settings, field in [({"strategy": "psychic"}, "strategy"), ({"precision_target": 1.5}, "precision_target"),
                            ({"budget_labels": 200}, "budget_labels"), ({"overlap": 0}, "overlap")]:
        with pytest.raises(InvalidInput) as bad:
            served.client.create_project("other", CLASSES, **settings)
        assert bad.value.field == field
    with pytest.raises(InvalidInput) as no_classes:
        served.client.create_project("other", ())
    assert no_classes.value.field == "classes"
    assert [p.name for p in served.store.list_projects()] == [P]


# -- ingest -------------------------------------------------------------------------------------
def test_ingest_stores_and_publishes_items(project: Served) -> None:
    ids = [f"i{n}" for n in range(5)]
    assert project.client.ingest(_items(*ids), batch_size=2) == 5
    assert project.client.ingest(_items(*ids), batch_size=5) == 0  # ids are idempotent
    assert project.store.count_items(P) == 5
    stored = project.store.get_items(P, ids)
    assert [i.text for i in stored] == [f"text of {i}" for i in ids] and all(i.ingested_at > 0 for i in stored)
    assert sorted(_published(project.bus, "items.raw")) == sorted(ids * 2)


def test_ingest_batch_reports_received_and_new(project: Served) -> None:
    stub = ingest_pb2_grpc.IngestStub(project.channel)
    batch = ingest_pb2.ItemBatch(items=[to_message(i, records_pb2.Item) for i in _items("a", "b")])
    assert stub.IngestBatch(batch, timeout=5) == ingest_pb2.IngestSummary(received=2, new_items=2)
    assert stub.IngestBatch(batch, timeout=5) == ingest_pb2.IngestSummary(received=2, new_items=0)


@pytest.mark.parametrize(("bad", "code", "field"), [
    (Item(P, "", "no id"), grpc.StatusCode.INVALID_ARGUMENT, "item_id"),
    (Item(P, "big", "x" * (MAX_TEXT_BYTES + 1)), grpc.StatusCode.INVALID_ARGUMENT, "text"),
    (Item("nosuchproject", "c", "hello"), grpc.StatusCode.NOT_FOUND, "project"),
])
def test_a_bad_item_fails_the_whole_stream_and_writes_nothing(project: Served, bad: Item, code: grpc.StatusCode,
                                                              field: str) -> None:
    stream = [*_items("a", "b"), bad]
    with pytest.raises(grpc.RpcError) as raised:
        ingest_pb2_grpc.IngestStub(project.channel).Ingest(iter([to_message(i, records_pb2.Item) for i in stream]),
                                                           timeout=5)
    assert raised.value.code() == code
    assert raised.value.details().startswith(f"{field}: ")
    with pytest.raises((InvalidInput, NotFound)) as mapped:
        project.client.ingest(stream)
    assert mapped.value.field == field and str(mapped.value) == raised.value.details()
    assert project.store.count_items(P) == 0
    assert _published(project.bus, "items.raw") == []


# -- labeling -----------------------------------------------------------------------------------
def test_lease_submit_consensus_and_export(project: Served) -> None:
    client, store = project.client, project.store
    alice, bob = project.member("alice"), project.member("bob")
    client.ingest(_items("a", "b"))
    store.add_tasks([Task(P, "a", 2.0, None, 1.0), Task(P, "b", 1.0, None, 1.0)])
    leases = alice.lease(P, "", 5)  # the annotator is the caller: "" or her own name
    assert [(lease.item_id, lease.text, lease.kind, lease.annotator) for lease in leases] == \
        [("a", "text of a", "label", "alice"), ("b", "text of b", "label", "alice")]
    assert alice.heartbeat(P, "alice", ["a", "b", "unknown"]) == 2
    alice.skip(P, "alice", "b")
    assert [lease.item_id for lease in alice.lease(P, "alice", 5)] == ["a"]  # her own live lease, handed back

    assert alice.submit(P, "alice", "a", "pos") is True
    assert alice.submit(P, "alice", "a", "pos") is False  # one answer per annotator
    assert list(client.export_labels(P)) == []  # overlap 2: one answer is not a final label yet
    assert [lease.item_id for lease in bob.lease(P, "bob", 5)] == ["a", "b"]
    assert bob.submit(P, "bob", "a", "pos") is True

    [label] = client.export_labels(P)
    assert (label.item_id, label.label, label.source, label.source_id, label.guideline_version) == \
        ("a", "pos", "human", "alice,bob", "v1")
    assert label.aggregation and label.idempotency_key and 0 < label.confidence <= 1 and label.threshold is None
    assert store.labels(P) == [label]
    assert _published(project.bus, "labels") == ["a"]
    trail = store.audit_trail(P)  # every change and every reveal, by whom, on what
    assert [(r.actor, r.action) for r in trail if r.action.startswith("token_")] == [("test", "token_create")] * 2
    trail = [r for r in trail if not r.action.startswith("token_")]
    assert [(r.actor, r.action, r.objects) for r in trail] == [
        ("admin", "project_create", (P,)), ("admin", "ingest", ("a", "b")), ("alice", "lease", ("a", "b")),
        ("alice", "skip", ("b",)), ("alice", "lease", ("a",)), ("alice", "submit", ("a",)),
        ("alice", "submit", ("a",)), ("admin", "export_labels", ()), ("bob", "lease", ("a", "b")),
        ("bob", "submit", ("a",)), ("admin", "export_labels", ())]
    assert [json.loads(r.detail)["recorded"] for r in trail if r.action == "submit"] == [True, False, True]
    assert "text of" not in str(trail)  # never an item's text
    stats = client.stats(P)
    assert (stats.items, stats.labels_by_source, stats.human_fraction, stats.open_tasks) == (2, {"human": 1}, 0.5, 1)
    assert (stats.current_model_version, stats.threshold) == (None, None)


def test_a_label_outside_the_schema_is_refused_and_writes_nothing(project: Served) -> None:
    project.client.ingest(_items("a"))
    request = labeling_pb2.SubmitLabelRequest(project=P, item_id="a", label="meh")
    with pytest.raises(grpc.RpcError) as raised:
        labeling_pb2_grpc.LabelingStub(project.channel).SubmitLabel(request, timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("label: ") and "'meh'" in raised.value.details()
    with pytest.raises(InvalidInput) as mapped:
        project.client.submit(P, "", "a", "meh")
    assert mapped.value.field == "label"
    assert project.store.annotations(P) == [] and project.store.labels(P) == []


def test_labeling_errors_name_the_field(project: Served) -> None:
    client = project.client
    cases = [(lambda: client.lease(P, "", 0), InvalidInput, "max_tasks"),
             (lambda: client.lease("nosuchproject", "", 1), NotFound, "project"),
             (lambda: client.submit(P, "", "ghost", "pos"), NotFound, "item_id"),
             (lambda: client.skip(P, "", "ghost"), NotFound, "item_id"),
             (lambda: client.stats("nosuchproject"), NotFound, "project"),
             (lambda: list(client.export_labels("nosuchproject")), NotFound, "project")]
    for call, error, field in cases:
        with pytest.raises(error) as raised:
            call()
        assert raised.value.field == field


# -- close of stream ----------------------------------------------------------------------------
def test_close_stream_is_served_by_the_selector_and_shown_in_stats(project: Served) -> None:
    client, store, bus = project.client, project.store, project.bus
    assert client.stats(P).stream == StreamStatus(P, "open")
    client.ingest(_items("a", "b"))
    store.put_embeddings(P, ["a", "b"], np.eye(2, 8, dtype=np.float32))  # what the prelabel worker does
    with bus.producer() as producer:
        producer.publish_many(topic(P, "items.scored"), ITEMS_SCORED.keyed(Scored(i) for i in ("a", "b")))

    asked = client.close_stream(P)
    assert asked.state == "closing" and asked.requested_at is not None
    assert client.close_stream(P) == asked  # one pending request, however often it is asked
    assert client.stats(P).stream == asked
    assert store.audit_log(P)[-1][2] == "close_stream"

    selector = Selector(bus, store, store.get_project(P), LoopConfig())
    try:
        selector.step()
    finally:
        selector.close()
    closed = client.wait_closed(P, timeout_s=5.0)
    # no model exists: the close invents no label, the items stay unlabeled and the status says so
    assert (closed.state, closed.requested_at, closed.tasks + closed.low_confidence, closed.unlabeled) == (
        "closed", asked.requested_at, 0, 2)
    assert closed.closed_at is not None and client.stats(P).stream == closed
    assert store.labels(P) == [] and store.unlabeled_ids(P) == ["a", "b"]


def test_close_stream_of_an_unknown_project_is_not_found(served: Served) -> None:
    with pytest.raises(NotFound) as raised:
        served.client.close_stream("nosuchproject")
    assert raised.value.field == "project"
    with pytest.raises(WinnowError, match="still open"):
        served.client.create_project(P, CLASSES)
        served.client.wait_closed(P, timeout_s=0.2, poll_s=0.05)


# -- models -------------------------------------------------------------------------------------
def test_list_and_promote_versions(project: Served) -> None:
    for n, version in enumerate(("v0001", "v0002"), start=1):
        project.store.register_model(ModelVersion(P, version, f"/models/{version}", float(n), 100 * n, 1.5, 0.8 + n / 100,
                                                  {"heldout_accuracy": 0.9, "classes": ["pos", "neg"]}))
    versions = project.client.list_versions(P)
    assert versions == project.store.models(P)
    assert project.client.stats(P).current_model_version == "v0002"
    promoted = project.client.promote(P, "v0001")
    assert promoted == versions[0]
    stats = project.client.stats(P)
    assert (stats.current_model_version, stats.threshold) == ("v0001", pytest.approx(0.81))
    assert _published(project.bus, "models") == [P]
    assert project.store.audit_log(P)[-1][2:] == ("promote", "v0001")
    with pytest.raises(NotFound) as missing:
        project.client.promote(P, "v0009")
    assert missing.value.field == "version"


def test_an_unreachable_server_raises_winnow_error() -> None:
    with WinnowClient("127.0.0.1:1", timeout_s=2.0) as client, pytest.raises(WinnowError, match="UNAVAILABLE"):
        client.stats(P)


# -- review -------------------------------------------------------------------------------------
def test_a_reviewer_sets_gold_and_sees_quality_and_disagreements(project: Served) -> None:
    client, store = project.client, project.store
    reviewer, alice, bob = project.member("rita", "reviewer"), project.member("alice"), project.member("bob")
    client.ingest(_items("g1", "g2", "x"))
    store.add_tasks([Task(P, "x", 1.0, None, 1.0)])
    assert reviewer.set_gold(P, {"g1": "pos", "g2": "neg"}) == 2
    with pytest.raises(NotFound):
        reviewer.set_gold(P, {"ghost": "pos"})
    with pytest.raises(InvalidInput) as bad:
        reviewer.set_gold(P, {"g1": "meh"})
    assert bad.value.field == "label"
    assert {label.item_id: (label.source, label.label) for label in client.export_labels(P)} == {
        "g1": ("gold", "pos"), "g2": ("gold", "neg")}
    for person, answers in ((alice, {"g1": "pos", "g2": "neg", "x": "pos"}), (bob, {"g1": "neg", "g2": "neg",
                                                                                  "x": "neg"})):
        leased = {lease.item_id for lease in person.lease(P, "", 10)}
        assert leased == set(answers)  # gold first, to every annotator once
        for item_id, answer in answers.items():
            person.submit(P, "", item_id, answer)
    quality = reviewer.annotator_quality(P)
    assert quality["alice"]["gold_accuracy"] == 1.0 and quality["bob"]["gold_accuracy"] == 0.5
    assert quality["alice"]["answers"] == 3
    split = reviewer.disagreements(P)
    assert [(i, answers) for i, answers, _, _ in split] == [("g1", {"alice": "pos", "bob": "neg"}),
                                                            ("x", {"alice": "pos", "bob": "neg"})]
    assert dict((i, final) for i, _, final, _ in split)["g1"] == "pos"
    actions = [r.action for r in store.audit_trail(P)]
    assert "gold" in actions and "disagreements" in actions
    with pytest.raises(PermissionDenied):
        alice.annotator_quality(P)


# -- settings -----------------------------------------------------------------------------------
def test_an_owner_changes_settings_and_the_workers_take_them(project: Served) -> None:
    client, store, bus = project.client, project.store, project.bus
    owner, alice, bob = project.member("olga", "owner"), project.member("alice"), project.member("bob")
    client.ingest(_items(*[f"s{k}" for k in range(20)]))
    store.put_embeddings(P, [f"s{k}" for k in range(20)], np.eye(20, 8, dtype=np.float32))
    with bus.producer() as producer:
        producer.publish_many(topic(P, "items.scored"), ITEMS_SCORED.keyed(Scored(f"s{k}") for k in range(20)))
    selector = Selector(bus, store, store.get_project(P), LoopConfig())
    try:
        selector.step()
        before = float(selector.budget.credit) + store.count_open_tasks(P)  # 10 labels per 100 items
        with pytest.raises(PermissionDenied):
            alice.update_project(P, budget_labels=100)
        updated = owner.update_project(P, budget_labels=100, guideline_version="v2")
        assert (updated.budget_labels, updated.guideline_version, updated.classes) == (100, "v2", CLASSES)
        selector.check_project(force=True)  # a worker reads its settings again every few seconds
        assert float(selector.budget.credit) + store.count_open_tasks(P) == pytest.approx(20 * 100 / 100)
        assert before == pytest.approx(20 * 10 / 100)
    finally:
        selector.close()
    client.ingest(_items("late"))
    store.add_tasks([Task(P, "late", 99.0, None, 1.0)])
    for person in (alice, bob):  # overlap 2: the label is made by the second answer, under the new guideline
        assert "late" in [lease.item_id for lease in person.lease(P, "", 50)]
        person.submit(P, "", "late", "pos")
    [label] = [x for x in store.labels(P) if x.item_id == "late"]
    assert label.guideline_version == "v2"
    assert [r.action for r in store.audit_trail(P)].count("project_update") == 1
    with pytest.raises(InvalidInput) as bad:
        owner.update_project(P, budget_labels=500)
    assert bad.value.field == "budget_labels"


# -- preference projects -------------------------------------------------------------------------
def test_a_preference_project_carries_its_comparisons_through_ingest_lease_submit_and_the_dpo_export(
        served: Served) -> None:
    from winnow.core.data.formats import to_dpo
    from winnow.core.domain.records import Label, Response

    made = served.client.create_project(P, (), kind="preference", overlap=1)
    assert made.kind == "preference" and made.classes == ("A", "B", "tie")
    replies = tuple(Response(f"reply {k}", f"model-{k}") for k in range(3))
    assert served.client.ingest([Item(P, "q1", "a prompt", responses=replies)]) == 3  # its three pairs
    with pytest.raises(InvalidInput) as bad:  # a prompt with one response compares nothing
        served.client.ingest([Item(P, "q2", "a prompt", responses=replies[:1])])
    assert bad.value.field == "responses"
    with pytest.raises(InvalidInput) as bad:
        served.client.ingest([Item(P, "q3", "no responses")])
    assert bad.value.field == "responses"
    served.store.add_tasks([Task(P, "q1#0-2", 1.0, None, time.time())])
    annotator = served.member("ann")
    [lease] = annotator.lease(P, "ann", 5)
    assert lease.text == "a prompt" and lease.responses == (replies[0], replies[2])
    for label, strength, field in (("C", "", "label"), ("B", "huge", "strength"), ("tie", "much", "strength")):
        with pytest.raises(InvalidInput) as bad:
            annotator.submit(P, "ann", "q1#0-2", label, strength=strength)
        assert bad.value.field == field
    with pytest.raises(InvalidInput) as bad:
        annotator.submit(P, "ann", "q1#0-2", "B", reason="x" * 5000)
    assert bad.value.field == "reason"
    assert annotator.submit(P, "ann", "q1#0-2", "B", strength="much", reason="B answers the question")
    now = time.time()
    served.store.put_labels([Label(P, "q1#0-1", "A", "model", "v0001", 0.99, 0.95, "auto_accept", "v1", now,
                                   "q1#0-1:selector:v0001", 0.1),
                             Label(P, "q1#1-2", "tie", "human", "ann", 1.0, None, "single", "v1", now, "k")])
    rows = served.client.export_rows(P)
    assert {row["item_id"]: row["responses"][1]["text"] for row in rows} == {
        "q1#0-1": "reply 1", "q1#0-2": "reply 2", "q1#1-2": "reply 2"}
    lines = {line["id"]: line for line in to_dpo(rows)}  # the tie has no chosen response
    assert sorted(lines) == ["q1#0-1", "q1#0-2"]
    model, human = lines["q1#0-1"], lines["q1#0-2"]
    assert (model["prompt"], model["chosen"], model["rejected"]) == ("a prompt", "reply 0", "reply 1")
    assert (model["chosen_model"], model["rejected_model"]) == ("model-0", "model-1")
    assert model["provenance"]["source"] == "model" and model["provenance"]["aggregation"] == "auto_accept"
    assert (human["chosen"], human["rejected"]) == ("reply 2", "reply 0")  # the person said B
    assert human["provenance"]["answers"] == {"ann": "B"}
    assert human["provenance"]["answer_details"] == {"ann": {"strength": "much", "reason": "B answers the question"}}
    assert model["provenance"]["answer_details"] == {}
