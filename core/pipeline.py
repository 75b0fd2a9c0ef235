"""The labeling loop's stages, each a consumer on the bus: prelabel, selector, labeling, trainer.

Every stage reads a topic, makes its output durable (store write, bus publish + flush) and only then
commits its offsets, so a crash means redelivery; every output is idempotent (a final label is
written at most once per item, keyed by item id + stage + model version), so redelivery never makes
a second label. The same classes run in one process on the SQLite bus (``EmbeddedLoop``) or as
separate services on Kafka.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from winnow.core.bus import Bus, Message, next_offsets
from winnow.core.consensus import annotator_accuracy_on_gold, dawid_skene, majority_vote
from winnow.core.errors import InvalidInput, NotFound, WinnowError
from winnow.core.head import Head, OnnxHead, load_head
from winnow.core.index import VectorIndex
from winnow.core.records import Annotation, Item, Label, Lease, ModelVersion, Project, Task, from_json, to_json
from winnow.core.runtime import Prediction, Runtime
from winnow.core.scoring import SCORE_NAMES, mean_probs, uncertainty
from winnow.core.selection import BudgetController, Candidates, NearDuplicateGuard, make_selector
from winnow.core.store import Store
from winnow.core.trainer import TrainConfig, train, write_version

log = logging.getLogger(__name__)

STAGES = ("items.raw", "items.scored", "tasks", "labels", "models", "dead-letter")
MAX_TEXT_BYTES = 64 * 1024


_RECORDS = {"items.raw": Item, "models": ModelVersion, "labels": Label, "tasks": Task}


def topic(project: str, stage: str) -> str:
    """Bus topic of one project's stage, e.g. ``winnow.banking.items.raw``."""
    return f"winnow.{project}.{stage}"


def create_topics(bus: Bus, project: str, partitions: int) -> None:
    for stage in STAGES:
        bus.create_topic(topic(project, stage), 1 if stage == "models" else partitions)


@dataclass(frozen=True)
class LoopConfig:
    """Operator settings of the loop that are not part of a project's schema.

    ``holdout_share`` of the human budget goes to items drawn uniformly from the stream (before
    auto-accept sees them): the auto-accept threshold is estimated on those alone, because the
    items the selector picks are the hard ones and would bias the estimate.
    """

    first_model_labels: int = 100
    retrain_growth: float = 0.15
    retrain_min_new: int = 50
    select_batch: int = 25
    holdout_share: float = 0.15
    near_duplicate: float = 0.97
    uncertainty: str = "margin"
    lease_s: float = 600.0
    partitions: int = 4
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.uncertainty not in SCORE_NAMES:
            raise InvalidInput("uncertainty", f"{self.uncertainty!r} is not one of {SCORE_NAMES}")


def validate_items(project: Project, items: Sequence[Item]) -> None:
    """Check a batch before anything is written; errors name the field and the item."""
    seen: set[str] = set()
    for item in items:
        if item.project != project.name:
            raise NotFound("project", f"item {item.item_id!r} names project {item.project!r}, not {project.name!r}")
        if not item.item_id or not item.item_id.strip():
            raise InvalidInput("item_id", "an item has no id")
        if item.item_id in seen:
            raise InvalidInput("item_id", f"{item.item_id!r} appears twice in one batch")
        seen.add(item.item_id)
        if not item.text.strip():
            raise InvalidInput("text", f"item {item.item_id!r} has empty text")
        if len(item.text.encode()) > MAX_TEXT_BYTES:
            raise InvalidInput("text", f"item {item.item_id!r} is {len(item.text.encode())} bytes, over {MAX_TEXT_BYTES}")


def ingest(bus: Bus, store: Store, project: Project, items: Sequence[Item]) -> int:
    """Validate, store and publish items onto items.raw; returns how many were new (ids are idempotent)."""
    validate_items(project, items)
    new = store.add_items(items)
    bus.publish_many(topic(project.name, "items.raw"), [(i.item_id, to_json(i)) for i in items])
    bus.flush()
    return new


def consumer_group(stage: str, project: str) -> str:
    """The consumer group of one stage of one project, e.g. ``prelabel.banking``: a rebalance among
    one project's workers never pauses another project's."""
    return f"{stage}.{project}"


class Stage(ABC):
    """A consumer that turns a batch of messages into durable output, then commits."""

    name: str  # prelabel, selector, trainer
    stages: tuple[str, ...]
    fill_s: float = 0.0  # how long a step may wait for more messages to fill its batch (see ``step``)

    def __init__(self, bus: Bus, store: Store, project: Project, config: LoopConfig) -> None:
        self.bus, self.store, self.project, self.config = bus, store, project, config
        self.group = consumer_group(self.name, project.name)
        self.consumer = bus.consumer([topic(project.name, s) for s in self.stages], self.group)

    def step(self, max_messages: int = 512, timeout_s: float = 0.0) -> int:
        """Handle one batch; returns how many messages it took off the bus.

        A message that cannot be decoded or validated (a poison message) goes to the project's
        dead-letter topic with the error in its headers, and the batch goes on without it: a bad
        message never blocks its partition.

        Once messages arrive, a stage with ``fill_s`` waits up to that long for more, until the batch
        is full (dynamic batching: a producer's batch often lands over several polls, and every step
        costs a flush and a commit, and for the prelabel worker a less efficient model batch).
        """
        messages = self._gather(max_messages, timeout_s)
        if messages:
            self.handle(self._decode_all(messages))
            self.bus.flush()
            self.consumer.commit()
        return len(messages)

    def _gather(self, max_messages: int, timeout_s: float) -> list[Message]:
        """Poll for a batch: wait up to ``timeout_s`` for the first message, then ``fill_s`` for more."""
        messages = self.consumer.poll(max_messages, timeout_s)
        if messages and self.fill_s > 0:
            fill_until = time.monotonic() + self.fill_s
            while len(messages) < max_messages and (left := fill_until - time.monotonic()) > 0:
                messages += self.consumer.poll(max_messages - len(messages), left)
        return messages

    def _decode_all(self, messages: list[Message]) -> list[tuple[str, object]]:
        """The ``(stage, record)`` of each message; poison messages go to the dead-letter topic."""
        records: list[tuple[str, object]] = []
        for m in messages:
            try:
                records.append((self._stage_of(m), self.decode(m)))
            except (ValueError, TypeError, KeyError, WinnowError) as e:
                self._dead_letter(m, e)
        return records

    def decode(self, message: Message) -> object:
        """The record a message carries; raises on a malformed one."""
        stage = self._stage_of(message)
        if stage == "items.scored":
            scored = json.loads(message.value)
            if not isinstance(scored, dict) or not isinstance(scored.get("item_id"), str):
                raise InvalidInput("item_id", "a scored message has no item id")
            return scored
        record = from_json(_RECORDS[stage], message.value)
        if isinstance(record, Item):
            validate_items(self.project, [record])
        return record

    def _dead_letter(self, message: Message, error: Exception) -> None:
        log.warning("dead-lettered stage=%s topic=%s partition=%d offset=%d error=%s", self.name, message.topic,
                    message.partition, message.offset, type(error).__name__)
        headers = (("error", f"{type(error).__name__}: {error}".encode()), ("stage", self.name.encode()),
                   ("source", f"{message.topic}/{message.partition}/{message.offset}".encode()))
        self.bus.publish(topic(self.project.name, "dead-letter"), message.key, message.value, headers)

    @abstractmethod
    def handle(self, records: list[tuple[str, object]]) -> None:
        """Make the output of the decoded ``(stage, record)`` pairs; ``step`` flushes and commits."""

    def close(self) -> None:
        self.consumer.close(commit=False)

    @property
    def in_flight(self) -> int:
        """Items taken off the bus whose output is not written yet, between steps (only an overlapping
        prelabel worker has any: the batch in its model)."""
        return 0

    def _stage_of(self, message: Message) -> str:
        return message.topic.removeprefix(f"winnow.{self.project.name}.")


@dataclass
class _InFlight:
    """A batch the prelabel model is working on, and the offsets to commit once its output is durable."""

    items: list[Item]
    offsets: dict[tuple[str, int], int]
    prediction: Future[Prediction]


class PrelabelWorker(Stage):
    """items.raw -> embeddings in the store + items.scored (logits of the current model version).

    With ``overlap`` (as ``winnow serve`` runs it) the model works on one batch in a thread of its
    own while ``step`` makes the previous batch's output durable (store writes, publish, flush,
    commit) and gathers the next one, so the model does not sit idle while the bus and the store
    work. A step returns with its batch still in the model: the next step, ``drain`` or ``close``
    writes its output. Offsets are committed per batch, once that batch's output is durable, so a
    crash redelivers the batch that was in the model and the one gathered after it. The embedded
    loop, which steps its stages in turn, runs without overlap: each step's output is written
    before it returns.
    """

    name = "prelabel"
    stages = ("items.raw", "models")
    fill_s = 0.05  # 50 ms of latency for full model batches

    def __init__(self, bus: Bus, store: Store, project: Project, config: LoopConfig, runtime: Runtime,
                 overlap: bool = True) -> None:
        super().__init__(bus, store, project, config)
        self.runtime = runtime
        current = store.current_model(project.name)
        if current is not None and runtime.model_version != current.version:
            runtime.swap(Path(current.path))
        self._model = ThreadPoolExecutor(1, thread_name_prefix=f"prelabel-model-{project.name}") if overlap else None
        self._in_flight: _InFlight | None = None
        # the next batch, gathered (and decoded) while the model works on the one in flight
        self._ahead: tuple[list[Message], list[tuple[str, object]]] = ([], [])

    @property
    def overlap(self) -> bool:
        return self._model is not None

    @property
    def in_flight(self) -> int:
        return 0 if self._in_flight is None else len(self._in_flight.items)

    def handle(self, records: list[tuple[str, object]]) -> None:
        items = self._swap_and_pick(records)
        if items:
            self.store.add_items(items)  # producers may write items.raw directly: the store learns of them here
            self._write(items, self.runtime.predict([i.text for i in items]))

    def step(self, max_messages: int = 512, timeout_s: float = 0.0) -> int:
        """Without ``overlap``, ``Stage.step``. With it: once the model is done with the batch in
        flight, start it on the next batch (gathered while it worked, topped up with what came since),
        then write the finished batch's output, flush, commit its offsets and gather the batch after,
        all while the model works. Waits ``timeout_s`` (and ``fill_s``) for messages only when no batch
        is in flight: otherwise the model's time on a batch is the window in which the next one fills."""
        if self._model is None:
            return super().step(max_messages, timeout_s)
        busy = self._in_flight
        if busy is None:
            messages = self._gather(max_messages, timeout_s)
            records = self._decode_all(messages)
        else:
            messages, records = self._ahead
            self._ahead = ([], [])
            self._in_flight = None
            finished = busy.prediction.result()  # raises what predict raised
            more = self._poll_now(max_messages - len(messages))
            messages, records = messages + more, records + self._decode_all(more)
        items = self._swap_and_pick(records)
        offsets = next_offsets(messages)
        if items:
            self._in_flight = _InFlight(items, offsets, self._model.submit(self.runtime.predict, [i.text for i in items]))
            self.store.add_items(items)  # producers may write items.raw directly: the store learns of them here
        commit: dict[tuple[str, int], int] = {}
        if busy is not None:
            self._write(busy.items, finished)
            commit.update(busy.offsets)
        if not items:  # models messages and poison only: nothing waits on the model (later offsets win)
            commit.update(offsets)
        if commit:
            self.bus.flush()
            self.consumer.commit(commit)
        if self._in_flight is not None:
            ahead = self._poll_now(max_messages)
            self._ahead = (ahead, self._decode_all(ahead))
        return len(messages)

    def _poll_now(self, max_messages: int) -> list[Message]:
        """Up to ``max_messages`` that the bus can hand out without waiting."""
        messages: list[Message] = []
        while len(messages) < max_messages and (got := self.consumer.poll(max_messages - len(messages), 0.0)):
            messages += got
        return messages

    def drain(self) -> int:
        """Write the output of the batch in the model, flush and commit it; returns its items."""
        busy, self._in_flight = self._in_flight, None
        if busy is None:
            return 0
        self._write(busy.items, busy.prediction.result())
        self.bus.flush()
        self.consumer.commit(busy.offsets)
        return len(busy.items)

    def close(self) -> None:
        """Drain, then leave the group. If the drain fails (the bus, the store or the model), the
        batch's messages stay uncommitted and go to the next owner of their partitions."""
        try:
            self.drain()
        except Exception:
            log.exception("prelabel close could not drain its batch in flight; it will be redelivered")
        finally:
            if self._model is not None:
                self._model.shutdown(wait=True)
            super().close()

    def _swap_and_pick(self, records: list[tuple[str, object]]) -> list[Item]:
        """Apply model swaps; the batch's items."""
        for stage, model in records:
            if stage == "models" and model.version != self.runtime.model_version:
                self.runtime.swap(Path(model.path))
                log.info("prelabel swapped model version=%s", model.version)
        items = [item for stage, item in records if stage == "items.raw"]
        if not items:
            return []
        # the models topic has one partition: in a group of several prelabel workers only one member
        # is handed each version's message, so every member checks the store's current version (this
        # also follows a Promote back to an older version)
        current = self.store.current_model(self.project.name)
        if current is not None and current.version != self.runtime.model_version:
            self.runtime.swap(Path(current.path))
            log.info("prelabel swapped model version=%s", current.version)
        return items

    def _write(self, items: list[Item], prediction: Prediction) -> None:
        """Embeddings into the store, one items.scored message per item (flushed by the caller)."""
        self.store.put_embeddings(self.project.name, [i.item_id for i in items], prediction.embeddings)
        # the pre-label (class and calibrated confidence) rides along; the selector re-scores from
        # the stored embedding with its own current head
        if prediction.logits is None:
            labels, confidence = [None] * len(items), [None] * len(items)
        else:
            probs = mean_probs(prediction.logits, prediction.meta["temperature"])  # [n, C]
            labels = [self.project.classes[k] for k in probs.argmax(1)]
            confidence = probs.max(1).tolist()
        self.bus.publish_many(topic(self.project.name, "items.scored"), [
            (item.item_id, json.dumps({"item_id": item.item_id, "model_version": prediction.model_version,
                                       "label": label, "confidence": conf}).encode())
            for item, label, conf in zip(items, labels, confidence)])


def _max_cosine(vectors: np.ndarray, others: np.ndarray) -> np.ndarray:
    """float32 ``[n]``: the highest cosine of each of ``vectors`` ``[n, D]`` to any of ``others`` ``[m, D]``."""
    index = VectorIndex(others.shape[1])
    index.add(np.arange(len(others)), others)
    return index.max_similarity(vectors)


# -- close of stream -------------------------------------------------------------------------
CLOSE_CHECK_S = 1.0  # how often a selector looks for a close request (one small audit-log read)
CLOSE_WAIT_LOG_S = 10.0


@dataclass(frozen=True)
class StreamStatus:
    """Where a project's stream stands: ``open`` (never closed), ``closing`` (a close was requested
    and the selector has not served it yet) or ``closed`` (the last request is served).

    Closing drains: items ingested afterwards are handled as usual, and a later close drains again.
    ``tasks`` and ``low_confidence`` are what the last served close did.
    """

    project: str
    state: str
    requested_at: float | None = None  # the pending request, else the last one served
    closed_at: float | None = None
    tasks: int = 0
    low_confidence: int = 0


def _close_rows(store: Store, project: str) -> tuple[dict[str, float], list[tuple[float, dict]], list[str]]:
    """From the audit log: close requests (request id -> time), served closes (time, detail) and
    the ids of the requests not served yet, oldest first.

    Requests and closes are matched by id, never by time: the API and the selector may run on
    machines whose clocks disagree.
    """
    requests: dict[str, float] = {}
    served: list[tuple[float, dict]] = []
    for at, _, action, detail in store.audit_log(project):
        if action == "close_stream":
            requests[json.loads(detail)["request"]] = at
        elif action == "stream_closed":
            served.append((at, json.loads(detail)))
    done = {r for _, detail in served for r in detail["requests"]}
    return requests, served, [r for r in requests if r not in done]


def pending_close_requests(store: Store, project: str) -> list[str]:
    """Ids of close requests no selector has served yet, oldest first."""
    return _close_rows(store, project)[2]


def stream_status(store: Store, project: str) -> StreamStatus:
    store.get_project(project)  # NotFound("project") for an unknown one
    requests, served, pending = _close_rows(store, project)
    if pending:
        return StreamStatus(project, "closing", requested_at=requests[pending[0]])
    if not served:
        return StreamStatus(project, "open")
    closed_at, detail = served[-1]
    asked = [requests[r] for r in detail["requests"] if r in requests]
    return StreamStatus(project, "closed", max(asked) if asked else None, closed_at, int(detail["tasks"]),
                        int(detail["low_confidence"]))


def request_close(store: Store, project: str, actor: str, now: float) -> StreamStatus:
    """Ask the project's selector to close the stream (see ``Selector.close_stream``); idempotent
    while a request is pending. The request is a row in the audit log, so it survives restarts."""
    status = stream_status(store, project)
    if status.state == "closing":
        return status
    detail = {"request": uuid.uuid4().hex, "items": store.count_items(project)}
    store.audit(project, actor, "close_stream", json.dumps(detail), now)
    return stream_status(store, project)


class Selector(Stage):
    """items.scored -> auto-accepted model labels, or the backlog from which the budget picks tasks.

    Keeps the backlog (scored items with neither a final label nor a task) in memory, rebuilt from
    the store on start. When a new model lands it re-scores the whole backlog, auto-accepts what now
    clears the threshold and re-ranks the open tasks.
    """

    name = "selector"
    stages = ("items.scored", "models")

    def __init__(self, bus: Bus, store: Store, project: Project, config: LoopConfig,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(bus, store, project, config)
        self.clock = clock
        self.strategy = make_selector(project.strategy)
        self.rng = np.random.default_rng(config.seed)
        self.budget = BudgetController(project.budget_labels, project.budget_per_items)
        self.head: OnnxHead | None = None
        self.guard: NearDuplicateGuard | None = None  # against items already labeled by people or queued
        self._guarded = 0
        self.backlog_ids: list[str] = []
        self.backlog_emb = np.zeros((0, 0), np.float32)  # [n, D]
        # per backlog item, in step with backlog_emb: the current head's calibrated probabilities and
        # uncertainty (recomputed when the model changes) and the highest cosine to any item of the
        # near-duplicate guard (raised as items join the guard), so that a selection step costs work
        # in proportion to what arrived, not to the whole backlog
        self.backlog_probs = np.zeros((0, 0))  # [n, C]
        self.backlog_unc = np.zeros(0)  # [n]
        self.backlog_dup = np.zeros(0, np.float32)  # [n]
        self._close_check_at = 0.0  # time.monotonic() of the next look for a close request
        self._close_wait_logged = 0.0
        self._restore()

    # -- state ------------------------------------------------------------------------------
    def _restore(self) -> None:
        current = self.store.current_model(self.project.name)
        if current is not None:
            self.head = OnnxHead(Path(current.path))
        queued = [t.item_id for t in self.store.open_tasks(self.project.name)]
        human = [label.item_id for label in self.store.labels(self.project.name, "human")]
        queued_set = set(queued)
        pending = [i for i in self.store.unlabeled_ids(self.project.name) if i not in queued_set]
        anchors = queued + human
        if anchors:  # the guard first: the backlog then measures itself against it in one search
            self._guard_add(self.store.get_embeddings(self.project.name, anchors))
        # items not prelabeled yet have no vector: they reach the selector through items.scored
        scored = self.store.embedded_ids(self.project.name, pending)
        if scored:
            self._add_backlog(scored, self.store.get_embeddings(self.project.name, scored))
        self.budget.observe(len(scored) + len(anchors))
        self.budget.grant(len(anchors))

    def _add_backlog(self, ids: list[str], emb: np.ndarray, scores: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Put items in the backlog; ``scores`` are their ``_scores`` if the caller has them."""
        if not ids:
            return
        probs, unc = scores if scores is not None else self._scores(emb)
        dup = (self.guard.index.max_similarity(emb) if self.guard is not None
               else np.full(len(emb), -np.inf, np.float32))
        if not len(self.backlog_ids):
            self.backlog_emb, self.backlog_probs, self.backlog_unc, self.backlog_dup = emb, probs, unc, dup
        else:
            self.backlog_emb = np.concatenate([self.backlog_emb, emb])
            self.backlog_probs = np.concatenate([self.backlog_probs, probs])
            self.backlog_unc = np.concatenate([self.backlog_unc, unc])
            self.backlog_dup = np.concatenate([self.backlog_dup, dup])
        self.backlog_ids.extend(ids)

    def _drop_backlog(self, keep: np.ndarray) -> None:
        self.backlog_ids = [i for i, k in zip(self.backlog_ids, keep) if k]
        self.backlog_emb = self.backlog_emb[keep]
        self.backlog_probs = self.backlog_probs[keep]
        self.backlog_unc = self.backlog_unc[keep]
        self.backlog_dup = self.backlog_dup[keep]

    def _guard_add(self, emb: np.ndarray) -> None:
        if self.guard is None:
            self.guard = NearDuplicateGuard(emb.shape[1], self.config.near_duplicate)
        self.guard.add(np.arange(self._guarded, self._guarded + len(emb)), emb)
        self._guarded += len(emb)
        if self.backlog_ids:  # the backlog against the new guard items only
            self.backlog_dup = np.maximum(self.backlog_dup, _max_cosine(self.backlog_emb, emb))

    # -- scoring ----------------------------------------------------------------------------
    def _scores(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities [n, C] and uncertainty [n] (all equally uncertain before the first model)."""
        if self.head is None:
            n_classes = len(self.project.classes)
            return np.full((len(emb), n_classes), 1.0 / n_classes), np.ones(len(emb))
        logits = self.head.logits(emb)  # [n, members, C]
        temperature = self.head.meta["temperature"]
        return mean_probs(logits, temperature), uncertainty(self.config.uncertainty, logits, temperature)

    @property
    def threshold(self) -> float:
        value = None if self.head is None else self.head.meta.get("threshold")
        return float("inf") if value is None else float(value)

    def _accept(self, ids: list[str], probs: np.ndarray, aggregation: str = "auto_accept") -> int:
        """Write model labels for the given items (all of them); returns how many were new."""
        if not ids:
            return 0
        version = self.head.version if self.head is not None else "none"
        now = self.clock()
        threshold = self.threshold if np.isfinite(self.threshold) else None
        classes = [self.project.classes[k] for k in probs.argmax(1).tolist()]
        labels = [Label(self.project.name, item_id, label, "model", version, confidence, threshold, aggregation,
                        self.project.guideline_version, now, f"{item_id}:selector:{version}")
                  for item_id, label, confidence in zip(ids, classes, probs.max(1).tolist())]
        new = [label for label, written in zip(labels, self.store.put_labels(labels)) if written]
        self.bus.publish_many(topic(self.project.name, "labels"), [(label.item_id, to_json(label)) for label in new])
        return len(new)

    # -- handling ---------------------------------------------------------------------------
    def step(self, max_messages: int = 512, timeout_s: float = 0.0) -> int:
        """Handle one batch, then serve a pending close request if there is one (checked after every
        batch that moved messages, else every ``CLOSE_CHECK_S``)."""
        handled = super().step(max_messages, timeout_s)
        if handled or time.monotonic() >= self._close_check_at:
            self._close_check_at = time.monotonic() + CLOSE_CHECK_S
            self.close_if_requested()
        return handled

    def close_if_requested(self) -> dict[str, int] | None:
        """Serve a pending close request once every unlabeled item has reached this selector.

        An item ingested before the request may still be on its way (not prelabeled yet, or its
        scored message not consumed yet): closing before it arrives would leave it without a final
        label, so the close waits. Returns what ``close_stream`` did, or None when nothing was closed.
        """
        if not pending_close_requests(self.store, self.project.name):
            return None
        known = set(self.backlog_ids) | {t.item_id for t in self.store.open_tasks(self.project.name)}
        waiting = [i for i in self.store.unlabeled_ids(self.project.name) if i not in known]
        if waiting:
            if time.monotonic() - self._close_wait_logged >= CLOSE_WAIT_LOG_S:
                self._close_wait_logged = time.monotonic()
                log.info("close of stream waits for %d items to be scored, e.g. %s", len(waiting), waiting[0])
            return None
        return self.close_stream()

    def handle(self, records: list[tuple[str, object]]) -> None:
        scored: list[dict] = []
        for stage, record in records:
            if stage == "models":
                self._swap(record)
            else:
                scored.append(record)
        if scored:
            self._arrive(scored)
        self._issue_tasks(final=False)

    def _arrive(self, scored: list[dict]) -> None:
        # a redelivered message must not put an item in the backlog twice, nor next to its own task,
        # nor earn the budget a second time
        arrived = [s["item_id"] for s in scored]
        known = set(self.backlog_ids) | {t.item_id for t in self.store.open_tasks(self.project.name, arrived)}
        fresh = [i for i in self.store.unlabeled_ids(self.project.name, arrived) if i not in known]
        self.budget.observe(len(fresh))
        if not fresh:
            return
        fresh = self._draw_holdout(fresh)
        emb = self.store.get_embeddings(self.project.name, fresh)  # [n, D]
        probs, unc = self._scores(emb)
        accept = probs.max(1) >= self.threshold
        self._accept([i for i, a in zip(fresh, accept) if a], probs[accept])
        keep = ~accept
        self._add_backlog([i for i, k in zip(fresh, keep) if k], emb[keep], (probs[keep], unc[keep]))

    def _draw_holdout(self, fresh: list[str]) -> list[str]:
        """Send a uniform random share of arrivals to people as holdout tasks; return the others."""
        rate = self.config.holdout_share * self.project.budget_labels / self.project.budget_per_items
        drawn = np.flatnonzero(self.rng.random(len(fresh)) < rate)
        drawn = drawn[: self.budget.grant(len(drawn))]
        if not len(drawn):
            return fresh
        now = self.clock()
        version = self.head.version if self.head is not None else None
        self._queue([Task(self.project.name, fresh[i], 1.0, version, now, "holdout") for i in drawn])
        self._guard_add(self.store.get_embeddings(self.project.name, [fresh[i] for i in drawn]))
        taken = set(drawn.tolist())
        return [item_id for k, item_id in enumerate(fresh) if k not in taken]

    def _queue(self, tasks: list[Task]) -> None:
        self.store.add_tasks(tasks)
        self.bus.publish_many(topic(self.project.name, "tasks"), [(t.item_id, to_json(t)) for t in tasks])

    def _swap(self, model: ModelVersion) -> None:
        if self.head is not None and self.head.version == model.version:
            return
        self.head = OnnxHead(Path(model.path))
        log.info("selector swapped model version=%s threshold=%s backlog=%d", model.version, self.threshold,
                 len(self.backlog_ids))
        if self.backlog_ids:
            self.backlog_probs, self.backlog_unc = self._scores(self.backlog_emb)
            probs = self.backlog_probs
            accept = probs.max(1) >= self.threshold
            self._accept([i for i, a in zip(self.backlog_ids, accept) if a], probs[accept])
            self._drop_backlog(~accept)
        open_tasks = self.store.open_tasks(self.project.name)
        label_tasks = [t.item_id for t in open_tasks if t.kind == "label"]
        if label_tasks:
            _, unc = self._scores(self.store.get_embeddings(self.project.name, label_tasks))
            self.store.set_priorities(self.project.name, dict(zip(label_tasks, unc.tolist())))

    def _issue_tasks(self, final: bool) -> int:
        """Send the most useful backlog items to people, as far as the budget allows."""
        if not self.backlog_ids:
            return 0
        wanted = int(self.budget.credit)
        if wanted < (1 if final else self.config.select_batch):
            return 0
        pool = np.arange(len(self.backlog_ids))
        if self.guard is not None:
            pool = pool[self.backlog_dup < self.guard.threshold]  # as guard.is_duplicate(backlog_emb)
        if not len(pool):
            return 0
        emb = self.backlog_emb[pool]
        probs, unc = self.backlog_probs[pool], self.backlog_unc[pool]
        n = self.budget.grant(min(wanted, len(pool)))
        chosen = self.strategy.select(Candidates(emb, probs, unc), n, self.rng)  # indices into pool
        picked = pool[chosen]
        version = self.head.version if self.head is not None else None
        now = self.clock()
        tasks = [Task(self.project.name, self.backlog_ids[i], float(u), version, now)
                 for i, u in zip(picked, unc[chosen])]
        self._queue(tasks)
        self._guard_add(self.backlog_emb[picked])
        keep = np.ones(len(self.backlog_ids), bool)
        keep[picked] = False
        self._drop_backlog(keep)
        return len(tasks)

    def close_stream(self) -> dict[str, int]:
        """The stream has ended: spend the budget left, then label what is left with the model.

        Items still below the threshold when the budget is spent get the model's label with
        ``aggregation="low_confidence"`` (their confidence and the threshold are on the label), so
        every item ends with exactly one final label and none is silently passed off as confident.
        """
        requests = pending_close_requests(self.store, self.project.name)
        tasks = self._issue_tasks(final=True)
        low = 0
        if self.backlog_ids:
            low = self._accept(list(self.backlog_ids), self.backlog_probs, "low_confidence")
            self._drop_backlog(np.zeros(len(self.backlog_ids), bool))
        self.bus.flush()
        # the requests are served once the output is durable: a crash before this line means the
        # close runs again after restart (its labels are idempotent, its tasks already queued)
        self.store.audit(self.project.name, "selector", "stream_closed",
                         json.dumps({"requests": requests, "tasks": tasks, "low_confidence": low}), self.clock())
        log.info("selector closed the stream tasks=%d low_confidence=%d requests=%d", tasks, low, len(requests))
        return {"tasks": tasks, "low_confidence": low}


class LabelingService:
    """What people use: lease tasks, submit, skip, heartbeat; consensus makes the final human label."""

    def __init__(self, bus: Bus, store: Store, project: Project, config: LoopConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self.bus, self.store, self.project, self.config, self.clock = bus, store, project, config, clock
        # items with all their answers but no final label yet (also after a crash between the two)
        answered = Counter(a.item_id for a in store.annotations(project.name))
        complete = [i for i, n in answered.items() if n >= project.overlap and i not in store.gold(project.name)]
        self._ready: set[str] = set(store.unlabeled_ids(project.name, complete)) if complete else set()

    def lease(self, annotator: str, n: int) -> list[Lease]:
        if not annotator:
            raise InvalidInput("annotator", "is empty")
        if n < 1:
            raise InvalidInput("n", f"must be >= 1, got {n}")
        return self.store.lease_tasks(self.project.name, annotator, n, self.config.lease_s, self.clock(),
                                      self.project.overlap)

    def heartbeat(self, annotator: str, item_ids: Sequence[str]) -> int:
        return self.store.heartbeat(self.project.name, annotator, item_ids, self.config.lease_s, self.clock())

    def skip(self, annotator: str, item_id: str) -> None:
        self.store.skip(self.project.name, annotator, item_id)

    def submit(self, annotator: str, item_id: str, label: str) -> bool:
        """Record one answer; the item's final label is made once ``overlap`` answers are in."""
        if label not in self.project.classes:
            raise InvalidInput("label", f"{label!r} is not in project {self.project.name!r}'s label schema")
        added = self.store.add_annotation(Annotation(self.project.name, item_id, annotator, label, self.clock()))
        if added and item_id not in self.store.gold(self.project.name):
            answers = self.store.annotations(self.project.name, [item_id])
            if len(answers) >= self.project.overlap:
                self._ready.add(item_id)
        return added

    def _answers(self):
        """Every annotation of the project as consensus arrays, with gold answers by item index."""
        classes = {c: k for k, c in enumerate(self.project.classes)}
        answers = self.store.annotations(self.project.name)
        item_index = {i: k for k, i in enumerate(dict.fromkeys([a.item_id for a in answers]))}
        annotators = {a: k for k, a in enumerate(dict.fromkeys([a.annotator for a in answers]))}
        args = (np.array([item_index[a.item_id] for a in answers], np.int64),
                np.array([annotators[a.annotator] for a in answers], np.int64),
                np.array([classes[a.label] for a in answers], np.int64),
                len(item_index), len(annotators), len(classes))
        gold = {item_index[i]: classes[c] for i, c in self.store.gold(self.project.name).items() if i in item_index}
        return answers, item_index, list(annotators), args, gold

    def annotator_quality(self) -> dict[str, dict[str, float | None]]:
        """Per annotator: answers given, accuracy on gold items, and the Dawid-Skene estimate."""
        answers, _, names, args, gold = self._answers()
        if not answers:
            return {}
        on_gold = annotator_accuracy_on_gold(*args[:3], gold, *args[3:]) if gold else np.full(len(names), np.nan)
        estimated = dawid_skene(*args, gold=gold).annotator_accuracy
        counts = np.bincount(args[1], minlength=len(names))
        return {name: {"answers": int(counts[k]),
                       "gold_accuracy": None if np.isnan(on_gold[k]) else float(on_gold[k]),
                       "estimated_accuracy": None if np.isnan(estimated[k]) else float(estimated[k])}
                for k, name in enumerate(names)}

    def resolve(self) -> int:
        """Aggregate the items that have all their answers into final human labels (one batch)."""
        if not self._ready:
            return 0
        ready, self._ready = sorted(self._ready), set()
        answers, item_index, _, args, gold_ids = self._answers()
        if self.project.overlap == 1 and not gold_ids:
            result, aggregation = majority_vote(*args), "single"
        else:
            result = dawid_skene(*args, gold=gold_ids)
            aggregation = result.method
        now = self.clock()
        annotators_of: dict[str, set[str]] = {}  # one pass over the answers, not one per ready item
        for a in answers:
            annotators_of.setdefault(a.item_id, set()).add(a.annotator)
        labels = []
        for item_id in ready:
            k = item_index[item_id]
            who_said = sorted(annotators_of[item_id])
            labels.append(Label(self.project.name, item_id, self.project.classes[int(result.labels[k])], "human",
                                ",".join(who_said), float(result.confidence[k]), None, aggregation,
                                self.project.guideline_version, now, f"{item_id}:labeling:human"))
        new = [label for label, written in zip(labels, self.store.put_labels(labels)) if written]
        self.bus.publish_many(topic(self.project.name, "labels"), [(label.item_id, to_json(label)) for label in new])
        self.bus.flush()
        return len(new)


class Trainer(Stage):
    """labels -> a new head version when enough new human labels arrived -> models."""

    name = "trainer"
    stages = ("labels",)

    def __init__(self, bus: Bus, store: Store, project: Project, config: LoopConfig, models_dir: Path,
                 clock: Callable[[], float] = time.time,
                 on_version: Callable[[ModelVersion], None] | None = None) -> None:
        super().__init__(bus, store, project, config)
        self.models_dir, self.clock, self.on_version = Path(models_dir), clock, on_version
        current = store.current_model(project.name)
        self.trained_on = 0 if current is None else current.n_train
        self.head: Head | None = None if current is None else load_head(Path(current.path))

    def handle(self, records: list[tuple[str, object]]) -> None:
        self.maybe_train(force=False)

    def _due(self, n: int) -> bool:
        if self.trained_on == 0:
            return n >= self.config.first_model_labels
        grown = n - self.trained_on
        return grown >= max(self.config.retrain_min_new, self.config.retrain_growth * self.trained_on)

    def maybe_train(self, force: bool) -> ModelVersion | None:
        humans = self.store.labels(self.project.name, "human")
        n = len(humans)
        if n < max(self.config.train.folds, 2) or n == self.trained_on or not (force or self._due(n)):
            return None
        classes = {c: k for k, c in enumerate(self.project.classes)}
        emb = self.store.get_embeddings(self.project.name, [h.item_id for h in humans])
        y = np.array([classes[h.label] for h in humans])
        gold = self.store.gold(self.project.name)
        gold_ids = list(gold)
        gold_emb = self.store.get_embeddings(self.project.name, gold_ids) if gold_ids else None
        gold_y = np.array([classes[gold[i]] for i in gold_ids]) if gold_ids else None
        holdout = set(self.store.task_ids(self.project.name, "holdout"))
        heldout_mask = np.array([h.item_id in holdout for h in humans])
        result = train(emb, y, len(classes), self.project.precision_target, self.config.train,
                       init=self.head, gold_embeddings=gold_emb, gold_labels=gold_y, threshold_mask=heldout_mask)
        version = f"v{len(self.store.models(self.project.name)) + 1:04d}-n{n}"
        folder = self.models_dir / self.project.name / version
        write_version(folder, result, version, self.project.classes, self.config.train)
        threshold = result.threshold.threshold
        model = ModelVersion(self.project.name, version, str(folder), self.clock(), n, result.temperature,
                             float(threshold), result.metrics)
        self.store.register_model(model)
        self.bus.publish(topic(self.project.name, "models"), self.project.name, to_json(model))
        self.bus.flush()
        self.head, self.trained_on = result.head, n
        log.info("trainer registered version=%s n_train=%d threshold=%.4f heldout_accuracy=%.3f",
                 version, n, threshold, result.metrics["heldout_accuracy"])
        if self.on_version is not None:
            self.on_version(model)
        return model
