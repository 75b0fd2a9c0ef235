"""The prelabel stage: items.raw -> embeddings in the store + items.scored, the model overlapped
with the stage's I/O."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from winnow.core.domain.codecs import ITEMS_SCORED
from winnow.core.domain.comparisons import comparisons, pair_texts
from winnow.core.domain.errors import InvalidInput, NotFound, WinnowError
from winnow.core.domain.records import Item, Project, Scored
from winnow.core.domain.settings import LoopConfig
from winnow.core.loop.erase import ErasureWatch
from winnow.core.loop.stage import Stage
from winnow.core.loop.topics import topic
from winnow.core.ml.encoder import builtin_ref, encoder_model
from winnow.core.ml.runtime import Prediction, Runtime
from winnow.core.ml.scoring import mean_probs, uncertainty
from winnow.core.ports.bus import Bus, Message, next_offsets
from winnow.core.ports.store import Store

log = logging.getLogger(__name__)


@dataclass
class _InFlight:
    """A batch the prelabel model is working on, and the offsets to commit once its output is durable."""

    items: list[Item]
    offsets: dict[tuple[str, int], int]
    prediction: Future[Prediction]


def scored_messages(item_ids: list[str], classes: tuple[str, ...] | list[str], version: str, logits: np.ndarray,
                    temperature: float, score: str) -> list[Scored]:
    """The items.scored records of items a version scored: ``logits`` ``[n, M, C]`` at ``temperature``
    give each its label, calibrated probabilities and uncertainty under ``score``."""
    probs = mean_probs(logits, temperature)  # [n, C]
    unsure = uncertainty(score, logits, temperature).tolist()
    return [Scored(item_id, version, classes[int(row.argmax())], float(row.max()), tuple(row.tolist()), u, score)
            for item_id, row, u in zip(item_ids, probs, unsure)]


class PrelabelWorker(Stage):
    """items.raw -> embeddings in the store + items.scored (the current model version's label,
    probabilities and uncertainty of each item, which the selector decides with).

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
        # a project's vectors all come from one encoder (its heads are fitted on them): the first worker
        # binds its own; a worker running another is refused before it writes a vector
        mine = encoder_model(runtime.encoder.encoder_id)
        bound = store.bind_encoder(project.name, mine)
        if bound != mine:
            ref = builtin_ref(bound)
            raise InvalidInput("encoder", f"project {project.name!r} holds vectors of encoder {bound!r}; this "
                                          f"worker runs {mine!r} (a project keeps one encoder: "
                                          + (f"run its workers with --encoder {ref}, or " if ref else "")
                                          + "make a new project for another)")
        current = store.current_model(project.name)
        if current is not None and runtime.model_version != current.version:
            runtime.swap(Path(current.path))
        self._model = ThreadPoolExecutor(1, thread_name_prefix=f"prelabel-model-{project.name}") if overlap else None
        self._in_flight: _InFlight | None = None
        # the next batch, gathered (and decoded) while the model works on the one in flight
        self._ahead: tuple[list[Message], list[tuple[str, object]]] = ([], [])
        self._refused: dict[str, WinnowError] = {}  # items the store refused, dead-lettered by ``_write``
        self._erasures = ErasureWatch(store, project.name, True, config.erasure_check_s)  # its cache outlives it

    @property
    def overlap(self) -> bool:
        return self._model is not None

    @property
    def in_flight(self) -> int:
        return 0 if self._in_flight is None else len(self._in_flight.items)

    def handle(self, records: list[tuple[str, object]]) -> None:
        items = self._swap_and_pick(records)
        if items:
            self._store_items(items)
            self._write(items, self._predict(items))

    def step(self, max_messages: int = 512, timeout_s: float = 0.0) -> int:
        """Without ``overlap``, ``Stage.step``. With it: once the model is done with the batch in
        flight, start it on the next batch (gathered while it worked, topped up with what came since),
        then write the finished batch's output, flush, commit its offsets and gather the batch after,
        all while the model works. Waits ``timeout_s`` (and ``fill_s``) for messages only when no batch
        is in flight: otherwise the model's time on a batch is the window in which the next one fills.
        Either way, first drops the cached embeddings of texts erased since the last look."""
        self._forget_erased()
        self.check_project()
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
            self._in_flight = _InFlight(items, offsets, self._model.submit(self._predict, items))
            self._store_items(items)
        commit: dict[tuple[str, int], int] = {}
        if busy is not None:
            self._write(busy.items, finished)
            commit.update(busy.offsets)
        if not items:  # models messages and poison only: nothing waits on the model (later offsets win)
            commit.update(offsets)
        if commit:
            self.producer.flush()
            self.consumer.commit(commit)
        if self._in_flight is not None:
            ahead = self._poll_now(max_messages)
            self._ahead = (ahead, self._decode_all(ahead))
        return len(messages)

    def _predict(self, items: list[Item]) -> Prediction:
        """The model's output for a batch: texts, or a preference project's comparisons (each scored
        on the unit difference of its two responses' embeddings)."""
        if self.project.preference:
            return self.runtime.predict_pairs(*pair_texts(items))
        return self.runtime.predict([i.text for i in items])

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
        self.producer.flush()
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
                log.info("prelabel swapped project=%s version=%s", self.project.name, model.version)
        items = self._resolve([item for stage, item in records if stage == "items.raw"])
        if not items:
            return []
        # the models topic has one partition: in a group of several prelabel workers only one member
        # is handed each version's message, so every member checks the store's current version (this
        # also follows a Promote back to an older version)
        current = self.store.current_model(self.project.name)
        if current is not None and current.version != self.runtime.model_version:
            self.runtime.swap(Path(current.path))
            log.info("prelabel swapped project=%s version=%s", self.project.name, current.version)
        return items

    def _resolve(self, items: list[Item]) -> list[Item]:
        """The batch's items with their text: a reference (an item without text, as ``ingest``
        publishes it) gets the stored text; an erased item is dropped without a trace (a dead letter
        would keep its text); a reference to an item the store never had is dead-lettered."""
        if not items:
            return items
        erased = self.store.erased_among(self.project.name, [i.item_id for i in items])
        references = [i.item_id for i in items if not i.text and i.item_id not in erased]
        stored = {i.item_id: i for i in self.store.find_items(self.project.name, references)} if references else {}
        kept = []
        for item in items:
            if item.item_id in erased:
                continue
            if item.text:  # from a producer that writes items.raw itself: a preference item becomes its pairs
                kept += comparisons(self.project, [item])
            elif item.item_id in stored:
                kept.append(stored[item.item_id])
            else:
                self.reject("items.raw", [item],
                            NotFound("item_id", f"item {item.item_id[:100]!r} is not in the store"))
        return kept

    def _forget_erased(self) -> None:
        """Drop the cached embeddings of texts erased since the last look, and the items' vectors from
        the neighbour vote of the version this worker runs."""
        erased = self._erasures.new()
        if erased:
            self.runtime.forget_items([item_id for item_id, _ in erased])
        digests = [d for _, joined in erased if joined for d in joined.split(",")]
        if digests:
            log.info("prelabel forgot project=%s cached_embeddings=%d", self.project.name, self.runtime.forget(digests))

    def _store_items(self, items: list[Item]) -> None:
        """Add the batch's items to the store (producers may write items.raw directly: the store learns
        of them here). If the store refuses the batch, the items go one by one and each one it refuses
        is left out, its error kept for ``_write`` to dead-letter it: one bad item never stops the stage."""
        try:
            self.store.add_items(items)
        except InvalidInput:
            for item in items:
                try:
                    self.store.add_items([item])
                except (InvalidInput, NotFound) as e:
                    self._refused[item.item_id] = e

    def _in_store(self, item: Item) -> bool:
        try:
            self.store.get_items(self.project.name, [item.item_id])
        except NotFound:
            return False
        return True

    def _write(self, items: list[Item], prediction: Prediction) -> None:
        """Embeddings into the store, one items.scored message per item (flushed by the caller).

        An item erased meanwhile is dropped; one the store does not have (refused by
        ``_store_items``) is dead-lettered; the others are written.
        """
        embeddings, logits = prediction.embeddings, prediction.logits  # [n, D], [n, members, C]
        try:
            self.store.put_embeddings(self.project.name, [i.item_id for i in items], embeddings)
        except NotFound:
            keep = np.array([self._in_store(item) for item in items], bool)  # one look-up per item, only here
            erased = self.store.erased_among(self.project.name, [i.item_id for i, k in zip(items, keep) if not k])
            for item in (item for item, k in zip(items, keep) if not k and item.item_id not in erased):
                self.reject("items.raw", [item], self._refused.pop(item.item_id, None) or NotFound(
                    "item_id", f"item {item.item_id[:100]!r} is not in the store"))
            items, embeddings = [item for item, k in zip(items, keep) if k], embeddings[keep]
            logits = None if logits is None else logits[keep]
            if not items:
                return
            self.store.put_embeddings(self.project.name, [i.item_id for i in items], embeddings)
        # the pre-label (class and calibrated confidence) rides along with the version's probabilities
        # and uncertainty: the selector decides with them where it runs the same version (module
        # ``winnow.core.loop.selector``), so the model runs once per item, here
        if logits is None:
            self.producer.publish_many(topic(self.project.name, "items.scored"),
                                       ITEMS_SCORED.keyed(Scored(item.item_id) for item in items))
            return
        self.producer.publish_many(topic(self.project.name, "items.scored"), ITEMS_SCORED.keyed(scored_messages(
            [item.item_id for item in items], self.project.classes, prediction.model_version, logits,
            prediction.meta["temperature"], self.config.uncertainty)))
