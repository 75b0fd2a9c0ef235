"""The prelabel worker on the embedded bus and store, with and without its model in a thread of its own."""

from __future__ import annotations

import threading
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.codecs import ITEMS_SCORED
from winnow.core.domain.records import Item, Project
from winnow.core.domain.settings import LoopConfig
from winnow.core.loop.ingest import ingest
from winnow.core.loop.prelabel import PrelabelWorker
from winnow.core.loop.topics import create_topics, topic
from winnow.core.ml.encoder import Encoder
from winnow.core.ml.runtime import OnnxRuntime

CONFIG = LoopConfig()


class HashEncoder(Encoder):
    """Deterministic pseudo-embeddings per text; fails on texts containing ``fail_on``."""

    encoder_id = "hash/test"
    dim = 8

    def __init__(self, fail_on: str | None = None) -> None:
        self.fail_on = fail_on
        self.threads: set[str] = set()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        if self.fail_on is not None and any(self.fail_on in t for t in texts):
            raise RuntimeError(f"encoder failed on {self.fail_on!r}")
        rows = [np.random.default_rng(zlib.crc32(t.encode())).standard_normal(8) for t in texts]
        return np.array(rows, dtype=np.float32).reshape(len(texts), 8)


@pytest.fixture
def env(tmp_path: Path):
    bus, store = SqliteBus(tmp_path / "bus.sqlite"), SqliteStore(tmp_path / "store.sqlite")
    store.create_project(Project("p", ("a", "b")))
    create_topics(bus, "p", 1)  # one partition: committed offsets are easy to read back
    yield bus, store
    bus.close()
    store.close()


def ingested(bus: SqliteBus, store: SqliteStore, n: int) -> list[str]:
    ids = [f"i{k:03d}" for k in range(n)]
    ingest(bus.producer(), store, store.get_project("p"), [Item("p", i, f"text {i}", 0.0) for i in ids])
    return ids


def scored(bus: SqliteBus) -> list[str]:
    """Item ids of every items.scored message so far, in order (a fresh group reads from the start)."""
    with bus.consumer([topic("p", "items.scored")], f"read-{threading.get_ident()}-{id(bus)}") as reader:
        return [ITEMS_SCORED.decode(m.value).item_id for m in reader.poll(10_000, timeout_s=0.5)]


def worker(bus: SqliteBus, store: SqliteStore, overlap: bool = True, encoder: Encoder | None = None) -> PrelabelWorker:
    return PrelabelWorker(bus, store, store.get_project("p"), CONFIG, OnnxRuntime(encoder or HashEncoder()), overlap)


def step_until_idle(prelabel: PrelabelWorker, max_messages: int) -> None:
    """Step until nothing is left on the bus or in the model."""
    while prelabel.step(max_messages) or prelabel.in_flight:
        pass


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "sequential"])
def test_every_item_is_scored_once_with_its_embedding(env, overlap: bool) -> None:
    bus, store = env
    ids = ingested(bus, store, 300)
    encoder = HashEncoder()
    prelabel = worker(bus, store, overlap, encoder)
    assert prelabel.overlap == overlap
    step_until_idle(prelabel, 64)
    assert prelabel.consumer.lag() == 0
    assert sorted(scored(bus)) == ids
    assert all(name.startswith("prelabel-model-p") == overlap for name in encoder.threads)
    np.testing.assert_allclose(store.get_embeddings("p", ids), encoder.encode([f"text {i}" for i in ids]))
    prelabel.close()


def test_the_scored_message_carries_the_versions_probabilities_and_uncertainty(env, tmp_path: Path) -> None:
    """With a model, each items.scored message carries what the selector decides with: the version's
    calibrated probabilities of the project's classes and the item's uncertainty under the loop's score."""
    from winnow.core.ml.head import Head, HeadConfig, OnnxHead, save_model
    from winnow.core.ml.scoring import mean_probs, uncertainty

    bus, store = env
    save_model(tmp_path / "v1", Head(HeadConfig(dim=8, n_classes=2)), {"version": "v1", "classes": ["a", "b"],
                                                                       "temperature": 1.5})
    runtime = OnnxRuntime(HashEncoder())
    runtime.swap(tmp_path / "v1")
    ids = ingested(bus, store, 50)
    prelabel = PrelabelWorker(bus, store, store.get_project("p"), CONFIG, runtime, False)
    step_until_idle(prelabel, 64)
    with bus.consumer([topic("p", "items.scored")], "read") as reader:
        messages = {m.item_id: m for m in (ITEMS_SCORED.decode(r.value) for r in reader.poll(1000, timeout_s=0.5))}
    assert sorted(messages) == ids
    logits = OnnxHead(tmp_path / "v1").logits(store.get_embeddings("p", ids))
    probs, unsure = mean_probs(logits, 1.5), uncertainty(CONFIG.uncertainty, logits, 1.5)
    got = [messages[i] for i in ids]
    assert {(m.model_version, m.uncertainty_score) for m in got} == {("v1", CONFIG.uncertainty)}
    np.testing.assert_allclose([m.probs for m in got], probs, atol=1e-6)  # float32 on the wire
    np.testing.assert_allclose([m.uncertainty for m in got], unsure, atol=1e-9)
    assert [m.label for m in got] == [("a", "b")[k] for k in probs.argmax(1)]
    prelabel.close()


def test_a_batch_in_the_model_is_committed_only_once_its_output_is_written(env) -> None:
    bus, store = env
    ids = ingested(bus, store, 10)
    prelabel = worker(bus, store)
    assert prelabel.step(max_messages=4) == 4
    assert prelabel.in_flight == 4 and prelabel.consumer.lag() == 10 and scored(bus) == []
    assert prelabel.step(max_messages=4) == 4  # the next batch into the model, the first one written
    assert prelabel.in_flight == 4 and prelabel.consumer.lag() == 6 and scored(bus) == ids[:4]
    prelabel.consumer.close(commit=False)  # stops as a crash would: the batch in the model is lost
    successor = worker(bus, store)
    step_until_idle(successor, 4)
    assert scored(bus) == ids  # the lost batch came again; nothing twice
    assert successor.consumer.lag() == 0
    successor.close()


def test_close_drains_the_batch_in_the_model(env) -> None:
    bus, store = env
    ids = ingested(bus, store, 5)
    prelabel = worker(bus, store)
    prelabel.step()
    assert prelabel.in_flight == 5
    prelabel.close()
    assert scored(bus) == ids
    successor = worker(bus, store)
    assert successor.step(timeout_s=0.2) == 0 and successor.in_flight == 0  # all committed
    successor.close()


def test_a_model_failure_surfaces_from_the_next_step_and_commits_nothing(env) -> None:
    bus, store = env
    ingested(bus, store, 8)
    prelabel = worker(bus, store, encoder=HashEncoder(fail_on="i00"))
    prelabel.step(max_messages=4)
    with pytest.raises(RuntimeError, match="encoder failed"):
        prelabel.step(max_messages=4)
    assert prelabel.in_flight == 0 and prelabel.consumer.lag() == 8 and scored(bus) == []
    prelabel.close()


def test_poison_beside_a_batch_in_the_model_is_dead_lettered_and_committed_with_it(env) -> None:
    bus, store = env
    ids = ingested(bus, store, 3)
    prelabel = worker(bus, store)
    prelabel.step()
    with bus.producer() as producer:
        producer.publish(topic("p", "items.raw"), "bad", b"not json")
    assert prelabel.step() == 1  # only poison came: the finished batch is written and everything committed
    assert prelabel.in_flight == 0 and prelabel.consumer.lag() == 0
    assert scored(bus) == ids
    with bus.consumer([topic("p", "dead-letter")], "inspect") as dead:
        assert [m.key for m in dead.poll(10, timeout_s=0.5)] == ["bad"]
    prelabel.close()


def test_a_worker_that_fails_stops_the_service_with_its_error(env) -> None:
    """serve's worker loop: the failed batch stays uncommitted and every other worker is told to stop."""
    from winnow.services.serve import Worker, run_worker

    bus, store = env
    ingested(bus, store, 8)
    prelabel = worker(bus, store, encoder=HashEncoder(fail_on="i00"))
    stop, failures = threading.Event(), []
    thread = threading.Thread(target=run_worker, args=(Worker("prelabel", prelabel), stop, failures))
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive() and stop.is_set()
    assert len(failures) == 1 and "encoder failed" in str(failures[0])
    prelabel.close()
    assert scored(bus) == []
    with bus.consumer([topic("p", "items.raw")], prelabel.group) as successor:
        assert len(successor.poll(100, timeout_s=0.5)) == 8  # all of it comes again
