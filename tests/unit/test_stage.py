"""The stage base on the embedded bus and store: a message whose record fails validation, or whose
item the store does not have, is dead-lettered and the batch goes on (the stage never dies on it)."""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.codecs import ITEMS_RAW, ITEMS_SCORED
from winnow.core.domain.records import Item, Project, Scored
from winnow.core.domain.settings import LoopConfig
from winnow.core.loop.ingest import ingest
from winnow.core.loop.prelabel import PrelabelWorker
from winnow.core.loop.selector import Selector
from winnow.core.loop.topics import create_topics, topic
from winnow.core.ml.encoder import Encoder
from winnow.core.ml.runtime import OnnxRuntime
from winnow.core.ports.bus import Message

PROJECT = Project("p", ("a", "b"))


class CrcEncoder(Encoder):
    """Deterministic pseudo-embeddings [n, 8] per text (no model weights)."""

    encoder_id = "crc/test"
    dim = 8

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        rows = [np.random.default_rng(zlib.crc32(t.encode())).standard_normal(8) for t in texts]
        return np.array(rows, dtype=np.float32).reshape(len(texts), 8)


@pytest.fixture
def env(tmp_path: Path):
    bus, store = SqliteBus(tmp_path / "bus.sqlite"), SqliteStore(tmp_path / "store.sqlite")
    store.create_project(PROJECT)
    create_topics(bus, "p", 1)
    yield bus, store
    bus.close()
    store.close()


def read(bus: SqliteBus, stage: str) -> list[Message]:
    with bus.consumer([topic("p", stage)], f"read-{stage}") as reader:
        return reader.poll(1000, timeout_s=0.5)


def scored_ids(bus: SqliteBus) -> list[str]:
    return [ITEMS_SCORED.decode(m.value).item_id for m in read(bus, "items.scored")]


def test_an_item_with_a_nan_time_on_items_raw_is_dead_lettered_and_the_batch_goes_on(env) -> None:
    """The hard probe's item: on items.raw but refused by the store. Before, every restart of the
    prelabel worker died on it (NotFound from put_embeddings)."""
    bus, store = env
    producer = bus.producer()
    ingest(producer, store, PROJECT, [Item("p", "i0", "first", 0.0), Item("p", "i2", "third", 0.0)])
    producer.publish_many(topic("p", "items.raw"), ITEMS_RAW.keyed([Item("p", "nan", "no time", math.nan)]))
    producer.publish_many(topic("p", "items.raw"), ITEMS_RAW.keyed([Item("p", "i3", "fourth", 0.0)]))  # not stored yet
    producer.flush()
    prelabel = PrelabelWorker(bus, store, PROJECT, LoopConfig(), OnnxRuntime(CrcEncoder()), overlap=False)
    assert prelabel.step() == 4
    assert prelabel.consumer.lag() == 0
    assert scored_ids(bus) == ["i0", "i2", "i3"]
    (dead,) = read(bus, "dead-letter")
    assert dead.key == "nan" and b"ingested_at" in dead.header("error")
    assert dead.header("source") == b"winnow.p.items.raw/0/2"
    assert math.isnan(ITEMS_RAW.decode(dead.value).ingested_at)  # the message as it came
    prelabel.close()


def test_an_item_erased_while_in_the_model_is_dropped_without_a_dead_letter(env) -> None:
    bus, store = env
    ingest(bus.producer(), store, PROJECT, [Item("p", f"i{k}", f"text {k}", 0.0) for k in range(3)])
    prelabel = PrelabelWorker(bus, store, PROJECT, LoopConfig(), OnnxRuntime(CrcEncoder()), overlap=True)
    prelabel.step()  # the batch is in the model
    assert prelabel.in_flight == 3
    store.erase_items("p", ["i1"], "owner", 1.0)
    assert prelabel.drain() == 3
    assert prelabel.consumer.lag() == 0
    assert scored_ids(bus) == ["i0", "i2"]
    assert store.embedded_ids("p", ["i0", "i1", "i2"]) == ["i0", "i2"]
    assert read(bus, "dead-letter") == []  # a dead letter would keep what the erase removed
    prelabel.close()


def test_items_raw_carries_references_the_prelabel_resolves_from_the_store(env) -> None:
    bus, store = env
    ingest(bus.producer(), store, PROJECT, [Item("p", f"i{k}", f"text {k}", 0.0) for k in range(3)])
    assert {ITEMS_RAW.decode(m.value).text for m in read(bus, "items.raw")} == {""}  # no text on the bus
    store.erase_items("p", ["i2"], "owner", 1.0)
    with bus.producer() as producer:  # a producer writing items.raw itself: a reference to nothing
        producer.publish_many(topic("p", "items.raw"), ITEMS_RAW.keyed([Item("p", "ghost", "", 0.0)]))
    prelabel = PrelabelWorker(bus, store, PROJECT, LoopConfig(), OnnxRuntime(CrcEncoder()), overlap=False)
    prelabel.step()
    assert scored_ids(bus) == ["i0", "i1"]  # i2 erased: dropped
    (dead,) = read(bus, "dead-letter")
    assert dead.key == "ghost" and dead.header("error").startswith(b"NotFound: item_id")
    prelabel.close()


def test_a_scored_item_without_an_embedding_is_dead_lettered_by_the_selector(env) -> None:
    bus, store = env
    store.add_items([Item("p", i, f"text {i}", 0.0) for i in ("a", "ghost", "b")])
    store.put_embeddings("p", ["a", "b"], np.eye(2, 8, dtype=np.float32))
    selector = Selector(bus, store, PROJECT, LoopConfig())
    with bus.producer() as producer:
        producer.publish_many(topic("p", "items.scored"), ITEMS_SCORED.keyed(Scored(i) for i in ("a", "ghost", "b")))
    assert selector.step() == 3
    assert selector.consumer.lag() == 0
    assert sorted(selector.backlog.ids) == ["a", "b"]
    (dead,) = read(bus, "dead-letter")
    assert dead.key == "ghost" and dead.header("stage") == b"selector"
    assert ITEMS_SCORED.decode(dead.value) == Scored("ghost")
    selector.close()


def test_a_prelabel_worker_with_another_encoder_than_the_projects_is_refused(env) -> None:
    """A project's heads are fitted on one encoder's vectors: its first prelabel worker binds that
    encoder; a worker of another model is refused before it writes a vector (another engine of the
    same model is not: the same vectors)."""
    from winnow.core.domain.errors import InvalidInput

    bus, store = env
    PrelabelWorker(bus, store, PROJECT, LoopConfig(), OnnxRuntime(CrcEncoder()), overlap=False).close()
    assert store.project_encoder("p") == "crc"

    class OtherEngine(CrcEncoder):
        encoder_id = "crc/another-engine"

    class OtherModel(CrcEncoder):
        encoder_id = "bigger-crc/test"

    PrelabelWorker(bus, store, PROJECT, LoopConfig(), OnnxRuntime(OtherEngine()), overlap=False).close()
    with pytest.raises(InvalidInput) as refused:
        PrelabelWorker(bus, store, PROJECT, LoopConfig(), OnnxRuntime(OtherModel()), overlap=False)
    assert refused.value.field == "encoder" and "'crc'" in refused.value.message
    assert "--encoder" not in refused.value.message  # crc is no built-in encoder: nothing to suggest


def test_a_refused_worker_is_told_which_built_in_encoder_the_project_holds(env) -> None:
    """A project bound before the default encoder changed keeps its own: the refusal names the flag that runs it."""
    from winnow.core.domain.errors import InvalidInput

    bus, store = env
    store.bind_encoder("p", "all-MiniLM-L6-v2@53aa51172d142c89")
    with pytest.raises(InvalidInput) as refused:
        PrelabelWorker(bus, store, PROJECT, LoopConfig(), OnnxRuntime(CrcEncoder()), overlap=False)
    assert "run its workers with --encoder minilm," in refused.value.message


def test_a_runtime_refuses_a_head_fitted_on_another_encoders_vectors(tmp_path: Path) -> None:
    from winnow.core.domain.errors import ModelFileError
    from winnow.core.ml.head import Head, HeadConfig, save_model

    runtime = OnnxRuntime(CrcEncoder())
    meta = {"version": "v1", "classes": ["a", "b"], "temperature": 1.0}
    save_model(tmp_path / "mine", Head(HeadConfig(8, 2)), {**meta, "encoder": "crc"})
    save_model(tmp_path / "theirs", Head(HeadConfig(8, 2)), {**meta, "version": "v2", "encoder": "bge@x"})
    runtime.swap(tmp_path / "mine")
    with pytest.raises(ModelFileError, match="bge@x"):
        runtime.swap(tmp_path / "theirs")
    assert runtime.model_version == "v1"  # the old head kept serving
