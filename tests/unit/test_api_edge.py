"""Bad input at the gRPC edge, on a real server (port 0) and a real channel: every one is refused
with a status naming the field, logged as one line, and leaves nothing in the store or on the bus."""

from __future__ import annotations

import logging
import math
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from winnow.core.access.tokens import issue
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain import limits
from winnow.core.domain.errors import InvalidInput, NotFound, WinnowError
from winnow.core.domain.records import Item
from winnow.core.loop.topics import STAGES, topic
from winnow.services.api.convert import to_message
from winnow.services.api.errors import INTERNAL_DETAILS, MAX_DETAILS_CHARS
from winnow.services.api.auth import Authenticator
from winnow.services.api.server import create_server
from winnow.services.api.servicers import SERVICES
from winnow.services.client import WinnowClient
from winnow.services.client import channel as bearer_channel
from winnow.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    labeling_pb2,
    labeling_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
    records_pb2,
)

P = "reviews"
CLASSES = ("pos", "neg")


@dataclass
class Edge:
    client: WinnowClient
    channel: grpc.Channel
    bus: SqliteBus
    store: SqliteStore


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Edge]:
    bus, store = SqliteBus(tmp_path / "bus.sqlite"), SqliteStore(tmp_path / "store.sqlite")
    server, port = create_server(bus, store, Authenticator(store))
    server.start()
    admin, _ = issue(store, "test", "admin", None, "admin", time.time())
    channel = bearer_channel(f"127.0.0.1:{port}", admin)
    client = WinnowClient(f"127.0.0.1:{port}", admin, timeout_s=30.0)
    client.create_project(P, CLASSES)
    try:
        yield Edge(client, channel, bus, store)
    finally:
        client.close()
        channel.close()
        server.stop(1.0).wait()
        bus.close()
        store.close()


def _raw_items(bus: SqliteBus) -> list[str]:
    with bus.consumer([topic(P, "items.raw")], "check-raw") as consumer:
        return [m.key for m in consumer.poll(100_000)]


def _assert_nothing_ingested(edge: Edge) -> None:
    assert edge.store.count_items(P) == 0
    assert _raw_items(edge.bus) == []


def _refused(call, field: str, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    assert raised.value.code() == code, raised.value.details()
    assert raised.value.details().startswith(f"{field}: "), raised.value.details()
    assert len(raised.value.details()) <= MAX_DETAILS_CHARS + 20
    return raised.value


# -- times that are not times -----------------------------------------------------------------------
@pytest.mark.parametrize("ingested_at", [math.nan, math.inf, -math.inf, -1.0, 1e300])
def test_an_item_whose_time_is_not_a_finite_time_is_refused(edge: Edge, ingested_at: float) -> None:
    items = [Item(P, "good", "fine text"), Item(P, "bad", "bad time", ingested_at)]
    stub = ingest_pb2_grpc.IngestStub(edge.channel)
    _refused(lambda: stub.Ingest(iter([to_message(i, records_pb2.Item) for i in items]), timeout=10), "ingested_at")
    batch = ingest_pb2.ItemBatch(items=[to_message(i, records_pb2.Item) for i in items])
    _refused(lambda: stub.IngestBatch(batch, timeout=10), "ingested_at")
    with pytest.raises(InvalidInput) as mapped:
        edge.client.ingest(items)
    assert mapped.value.field == "ingested_at"
    _assert_nothing_ingested(edge)


# -- bytes that are not a request -------------------------------------------------------------------
_UNARY = [f"/{descriptor.full_name}/{method.name}" for _, descriptor in SERVICES.values()  # an empty request
          for method in descriptor.methods if not method.client_streaming and method.input_type.fields  # reads any
          ] + ["/grpc.health.v1.Health/Check"]
# field 1 (a string in every request) holding bytes that are not UTF-8; then wire formats that are corrupt
_BAD_PAYLOADS = [b"\x0a\x04\xff\xfe\xfd\xfc", b"\x0a\x02\xc3\x28", b"\xff\xff\xff\xff", b"\x0a\x7fab", b"\x08"]


@pytest.mark.parametrize("method", _UNARY)
def test_undecodable_requests_are_invalid_argument_logged_as_one_line(edge: Edge, method: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    call = edge.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    rng = random.Random(method)
    payloads = [*_BAD_PAYLOADS, bytes(rng.randrange(256) for _ in range(64))]
    with caplog.at_level(logging.INFO):
        for payload in payloads:
            error = _refused(lambda payload=payload: call(payload, timeout=10), "request")
            assert "not a valid " in error.details() and " message: " in error.details()
    edge_lines = [r for r in caplog.records if r.name == "winnow.services.api.errors"]
    assert len(edge_lines) == len(payloads) and all(r.levelno == logging.INFO for r in edge_lines)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]  # no tracebacks
    _assert_nothing_ingested(edge)


def test_an_undecodable_message_inside_an_ingest_stream_fails_the_whole_stream(edge: Edge) -> None:
    call = edge.channel.stream_unary("/winnow.v1.Ingest/Ingest", request_serializer=None, response_deserializer=None)
    good = to_message(Item(P, "good", "fine text"), records_pb2.Item).SerializeToString()
    for bad in _BAD_PAYLOADS:
        _refused(lambda bad=bad: call(iter([good, bad, good]), timeout=10), "request")
    _assert_nothing_ingested(edge)


def test_undecodable_reflection_requests_are_invalid_argument(edge: Edge) -> None:
    call = edge.channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                      request_serializer=None, response_deserializer=None)
    for bad in _BAD_PAYLOADS:
        _refused(lambda bad=bad: list(call(iter([bad]), timeout=10)), "request")


# -- project names ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../../x", "a b", "a/b", "émoji😀", "semi;colon", "..", ".hidden", "nul\x00",
                                  "x" * (limits.MAX_PROJECT_NAME_CHARS + 1), "x" * 10_000])
def test_a_project_name_no_bus_can_carry_is_refused_and_nothing_is_created(edge: Edge, name: str) -> None:
    stub = projects_pb2_grpc.ProjectsStub(edge.channel)
    _refused(lambda: stub.CreateProject(projects_pb2.CreateProjectRequest(name=name, classes=CLASSES), timeout=10),
             "name")
    assert [p.name for p in edge.store.list_projects()] == [P]
    with pytest.raises(NotFound):
        edge.bus.consumer([topic(name, "items.raw")], "check")
    _refused(lambda: stub.GetStats(projects_pb2.GetStatsRequest(project=name), timeout=10), "project")


def test_the_longest_legal_name_is_created_with_all_its_topics(edge: Edge) -> None:
    name = "n" * limits.MAX_PROJECT_NAME_CHARS
    assert edge.client.create_project(name, CLASSES).name == name
    for stage in STAGES:
        edge.bus.consumer([topic(name, stage)], f"check-{stage}").close()


def test_a_bus_that_refuses_the_topics_leaves_no_project_row(tmp_path: Path) -> None:
    bus, store = SqliteBus(tmp_path / "bus.sqlite"), SqliteStore(tmp_path / "store.sqlite")
    bus.close()  # every write to it now fails
    server, port = create_server(bus, store, Authenticator(store))
    server.start()
    admin, _ = issue(store, "test", "admin", None, "admin", time.time())
    try:
        with WinnowClient(f"127.0.0.1:{port}", admin) as client, pytest.raises(WinnowError):
            client.create_project(P, CLASSES)
        assert store.list_projects() == []
    finally:
        server.stop(1.0).wait()
        store.close()


# -- echoed values ----------------------------------------------------------------------------------
def test_a_huge_bad_value_is_echoed_clipped_so_the_status_survives(edge: Edge) -> None:
    huge = "z" * 10_000
    stub = labeling_pb2_grpc.LabelingStub(edge.channel)
    error = _refused(lambda: stub.LeaseTasks(labeling_pb2.LeaseTasksRequest(project=P, annotator=huge, max_tasks=1),
                                             timeout=10), "annotator")
    assert "(10002 chars)" in error.details()
    for value in ("é" * 3000, "\u2603" * 5000, "\x01" * 5000):  # characters sent percent-encoded: up to 12 bytes each
        _refused(lambda value=value: stub.SubmitLabel(labeling_pb2.SubmitLabelRequest(
            project=P, annotator="alice", item_id="a", label=value), timeout=10), "label")
    with pytest.raises(InvalidInput) as mapped:
        edge.client.lease(P, huge, 1)
    assert mapped.value.field == "annotator" and len(str(mapped.value)) <= MAX_DETAILS_CHARS + 20


# -- upper bounds -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("settings", "field"), [
    ({"overlap": 2 ** 31 - 1}, "overlap"),
    ({"classes": [f"c{k}" for k in range(50_000)]}, "classes"),
    ({"classes": ["a", "b" * 1_000_000]}, "classes"),
    ({"classes": ["a", "nul\x00"]}, "classes"),
    ({"budget_per_items": 2 ** 31 - 1}, "budget_per_items"),
    ({"guideline_version": "g" * 10_000}, "guideline_version"),
    ({"precision_target": math.nan}, "precision_target"),
    ({"precision_target": math.inf}, "precision_target"),
])
def test_project_settings_over_a_limit_are_refused(edge: Edge, settings: dict, field: str) -> None:
    request = projects_pb2.CreateProjectRequest(**{"name": "other", "classes": CLASSES, **settings})
    stub = projects_pb2_grpc.ProjectsStub(edge.channel)
    _refused(lambda: stub.CreateProject(request, timeout=30), field)
    assert [p.name for p in edge.store.list_projects()] == [P]


@pytest.mark.parametrize(("item", "field"), [
    (Item(P, "i" * 1_000_000, "text"), "item_id"),
    (Item(P, "i" * (limits.MAX_KEY_BYTES + 1), "text"), "item_id"),
    (Item(P, "nul\x00id", "text"), "item_id"),
    (Item(P, "a", "nul\x00text"), "text"),
])
def test_items_over_a_limit_are_refused(edge: Edge, item: Item, field: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        edge.client.ingest([Item(P, "good", "fine"), item])
    assert raised.value.field == field
    _assert_nothing_ingested(edge)


def test_more_items_than_one_call_allows_are_refused_without_reading_them_all(edge: Edge) -> None:
    stub = ingest_pb2_grpc.IngestStub(edge.channel)
    sent = 0

    def items() -> Iterator[records_pb2.Item]:
        nonlocal sent
        for k in range(100_000):
            sent += 1
            yield records_pb2.Item(project=P, item_id=f"i{k}", text="t")

    _refused(lambda: stub.Ingest(items(), timeout=60), "items")
    assert sent < 100_000  # the server ended the call; the client stopped streaming
    _assert_nothing_ingested(edge)


@pytest.mark.parametrize(("call", "field"), [
    (lambda c: c.lease(P, "alice", limits.MAX_LEASE_TASKS + 1), "max_tasks"),
    (lambda c: c.lease(P, "alice", -2 ** 31), "max_tasks"),
    (lambda c: c.lease(P, "nul\x00", 1), "annotator"),
    (lambda c: c.heartbeat(P, "alice", [f"i{k}" for k in range(limits.MAX_HEARTBEAT_IDS + 1)]), "item_ids"),
    (lambda c: c.submit(P, "alice", "i" * 1_000_000, "pos"), "item_id"),
    (lambda c: c.skip(P, "alice", "nul\x00"), "item_id"),
    (lambda c: c.promote(P, "v" * 1000), "version"),
    (lambda c: c.close_stream("a/b"), "project"),
    (lambda c: list(c.export_labels("x" * 10_000)), "project"),
    (lambda c: c.list_versions(""), "project"),
])
def test_labeling_and_model_calls_over_a_limit_name_the_field(edge: Edge, call, field: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        call(edge.client)
    assert raised.value.field == field
    assert edge.store.annotations(P) == [] and edge.store.labels(P) == []


# -- a failure nobody planned for -------------------------------------------------------------------
def test_an_unexpected_error_is_internal_with_one_log_line_and_no_payload(edge: Edge,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    edge.store.close()  # the store now fails in a way no rule describes
    secret = "payload-that-must-not-be-logged"
    stub = labeling_pb2_grpc.LabelingStub(edge.channel)
    with caplog.at_level(logging.INFO), pytest.raises(grpc.RpcError) as raised:
        stub.SubmitLabel(labeling_pb2.SubmitLabelRequest(project="fresh", annotator=secret, item_id=secret, label="x"),
                         timeout=10)
    assert raised.value.code() == grpc.StatusCode.INTERNAL and raised.value.details() == INTERNAL_DETAILS
    [line] = [r for r in caplog.records if r.name == "winnow.services.api.errors"]
    assert line.levelno == logging.ERROR and line.exc_info is None
    assert "SubmitLabel" in line.getMessage() and secret not in line.getMessage()
    assert secret not in caplog.text


def test_the_client_does_not_import_the_server() -> None:
    code = ("import sys, winnow.services.client; "
            "print(sorted(m for m in sys.modules if m.startswith('winnow.services.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(loaded) == ["winnow.services.api", "winnow.services.api.convert", "winnow.services.api.errors",
                            "winnow.services.client"]
