"""Erasure that erases, on the SQLite store and the SQLite bus: after an owner's erase, no file the
system wrote (store, bus log, write-ahead logs, the embedding cache, an export made afterwards) holds
the erased text, the selector has forgotten the items, and nothing brings them back."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from winnow.core.access.tokens import issue
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.codecs import ITEMS_RAW
from winnow.core.domain.errors import InvalidInput, NotFound, PermissionDenied
from winnow.core.domain.records import Item
from winnow.core.domain.settings import LoopConfig
from winnow.core.loop.prelabel import PrelabelWorker
from winnow.core.loop.selector import Selector
from winnow.core.loop.topics import topic
from winnow.core.ml.encoder import CachedEncoder, EmbeddingCache
from winnow.core.ml.runtime import OnnxRuntime
from winnow.core.testing.fakes import CrcEncoder
from winnow.services.api.auth import Authenticator
from winnow.services.api.server import create_server
from winnow.services.client import WinnowClient

P = "erasing"


def files_holding(root: Path, needle: bytes) -> list[str]:
    """Every file under ``root`` whose bytes contain ``needle``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes())


def test_an_erase_leaves_no_trace_of_the_text_anywhere(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    bus, store = SqliteBus(data / "bus.sqlite"), SqliteStore(data / "store.sqlite")
    cache = EmbeddingCache(data / "cache" / "embeddings.sqlite", CrcEncoder.encoder_id, dim=8)
    runtime = OnnxRuntime(CachedEncoder(CrcEncoder(), cache))
    server, port = create_server(bus, store, Authenticator(store), config=LoopConfig())
    server.start()
    target = f"127.0.0.1:{port}"
    admin, _ = issue(store, "test", "admin", None, "admin", time.time())
    secrets = {f"s{k}": f"secret {k} {uuid.uuid4().hex}" for k in range(8)}
    with WinnowClient(target, admin) as operator:
        operator.create_project(P, ("a", "b"), budget_labels=50, budget_per_items=100, strategy="random")
        owner = WinnowClient(target, operator.create_token("owner", P, "olga")[0])
        person = WinnowClient(target, operator.create_token("annotator", P, "ann")[0])
    config = LoopConfig(seed=3, erasure_check_s=0.0)
    prelabel = PrelabelWorker(bus, store, store.get_project(P), config, runtime, overlap=False)
    selector = Selector(bus, store, store.get_project(P), config)
    try:
        owner.ingest([Item(P, item_id, text) for item_id, text in secrets.items()])
        with bus.producer() as producer:  # a producer that writes items.raw itself puts the text on the bus
            producer.publish_many(topic(P, "items.raw"), ITEMS_RAW.keyed([Item(P, "direct", secrets["s7"] + " d")]))
        prelabel.step()
        selector.step()
        for lease in person.lease(P, "", 50):
            person.submit(P, "", lease.item_id, "a")
        labeled = [label.item_id for label in owner.export_labels(P)]
        in_backlog = selector.backlog.ids
        assert labeled and in_backlog  # some items went to people, some wait in the backlog
        doomed = [labeled[0], in_backlog[0], "direct"]
        needles = [secrets[i].encode() if i != "direct" else (secrets["s7"] + " d").encode() for i in doomed]
        assert all(files_holding(data, n) for n in needles)  # the search finds them before the erase
        with pytest.raises(PermissionDenied):
            person.erase(P, doomed)
        erasure = owner.erase(P, doomed)
        assert erasure.erased == tuple(doomed) and erasure.already == ()
        assert owner.erase(P, doomed).already == tuple(doomed)  # idempotent
        with pytest.raises(NotFound):
            owner.erase(P, ["never-was"])
        with pytest.raises(InvalidInput):
            owner.erase(P, [])

        selector.step()  # the workers learn of the erase from the store
        prelabel.step()
        assert not set(doomed) & set(selector.backlog.ids)
        export = data / "export.jsonl"
        export.write_text("\n".join(json.dumps(label.__dict__) for label in owner.export_labels(P)))
        assert not set(doomed) & {label.item_id for label in owner.export_labels(P)}
        for needle in needles:
            assert files_holding(data, needle) == [], needle
        assert cache.get_many([secrets[doomed[0]], secrets[doomed[1]]])[1].tolist() == [False, False]
        kept = next(i for i in secrets if i not in doomed)
        assert files_holding(data, secrets[kept].encode()) == ["store.sqlite"]  # the others stay in the store
        assert cache.get_many([secrets[kept]])[1].tolist() == [True]

        # nothing brings them back: not an ingest again, not a redelivery; the stream still closes
        assert owner.ingest([Item(P, doomed[0], "a new text")]) == 0
        prelabel.step()
        selector.step()
        assert store.find_items(P, doomed) == []
        trail = [r for r in store.audit_trail(P) if r.action == "erase"]
        assert trail[0].actor == "olga" and trail[0].objects == tuple(doomed)
        owner.close_stream(P)
        selector.close_if_requested()
    finally:
        for client in (owner, person):
            client.close()
        prelabel.close()
        selector.close()
        server.stop(1.0).wait()
        bus.close()
        store.close()


def test_the_bus_keeps_no_payload_of_an_erased_key(tmp_path: Path) -> None:
    bus = SqliteBus(tmp_path / "bus.sqlite")
    try:
        bus.create_topic("winnow.p.items.raw", 2, compact=True)
        with bus.producer() as producer:
            producer.publish_many("winnow.p.items.raw", [("k1", b"first secret"), ("k2", b"kept"), ("k1", b"again")])
        bus.erase("winnow.p.items.raw", ["k1"])
        with bus.consumer(["winnow.p.items.raw"], "reader") as reader:
            records = [(m.key, m.value) for m in reader.poll(100, timeout_s=0.5)]
        assert sorted(records) == [("k1", b""), ("k1", b""), ("k2", b"kept")]  # offsets stay, payloads go
        assert files_holding(tmp_path, b"secret") == []
    finally:
        bus.close()
