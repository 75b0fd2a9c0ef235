"""The selector stage: items.scored -> auto-accepted model labels, holdout tasks, and the backlog
from which the budget picks label tasks; serves close-of-stream requests."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
from winnow.core.domain.codecs import TASKS
from winnow.core.domain.errors import NotFound
from winnow.core.domain.records import Label, ModelVersion, Project, Scored, Task
from winnow.core.domain.settings import LoopConfig
from winnow.core.loop.close import (
    CLOSE_CHECK_S,
    CLOSE_WAIT_LOG_S,
    pending_close_requests,
    record_close,
)
from winnow.core.loop.backlog import Backlog
from winnow.core.loop.labels_out import republish_own, republish_stored, same_stage, write_final_labels
from winnow.core.loop.stage import Stage
from winnow.core.loop.topics import topic
from winnow.core.ml.head import OnnxHead
from winnow.core.ml.scoring import mean_probs, uncertainty
from winnow.core.ports.bus import Bus
from winnow.core.ports.store import Store
from winnow.core.select.index import VectorIndex
from winnow.core.select.strategies import (
    BudgetController,
    Candidates,
    NearDuplicateGuard,
    make_strategy,
)

log = logging.getLogger(__name__)


def _max_cosine(vectors: np.ndarray, others: np.ndarray) -> np.ndarray:
    """float32 ``[n]``: the highest cosine of each of ``vectors`` ``[n, D]`` to any of ``others`` ``[m, D]``."""
    index = VectorIndex(others.shape[1])
    index.add(np.arange(len(others)), others)
    return index.max_similarity(vectors)


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
        self.strategy = make_strategy(project.strategy)
        self.rng = np.random.default_rng(config.seed)
        self.budget = BudgetController(project.budget_labels, project.budget_per_items)
        self.head: OnnxHead | None = None
        self.guard: NearDuplicateGuard | None = None  # against items already labeled by people or queued
        self._guarded = 0
        self.backlog = Backlog()
        self._close_check_at = 0.0  # time.monotonic() of the next look for a close request
        self._close_wait_logged = 0.0
        self._models_seen: set[str] = set()  # versions a models message brought in this process's life
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
        # a crash may have fallen between a model swap and its auto-accepts: the restored head accepts
        # what it clears now, made durable before the first step
        if self._accept_confident():
            self.producer.flush()

    def _accept_confident(self) -> int:
        """Auto-accept the backlog items whose calibrated confidence under the current head clears the
        threshold, and take them out of the backlog; returns how many labels were written."""
        if not len(self.backlog):
            return 0
        probs = self.backlog.probs
        accept = probs.max(1) >= self.threshold
        written = self._accept([i for i, a in zip(self.backlog.ids, accept) if a], probs[accept])
        self.backlog.drop(accept)
        return written

    def _add_backlog(self, ids: list[str], emb: np.ndarray, scores: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Put items in the backlog; ``scores`` are their ``_scores`` if the caller has them."""
        if not ids:
            return
        probs, unc = scores if scores is not None else self._scores(emb)
        dup = (self.guard.index.max_similarity(emb) if self.guard is not None
               else np.full(len(emb), -np.inf, np.float32))
        self.backlog.add(ids, emb, probs, unc, dup)

    def _guard_add(self, emb: np.ndarray) -> None:
        if self.guard is None:
            self.guard = NearDuplicateGuard(emb.shape[1], self.config.near_duplicate)
        self.guard.add(np.arange(self._guarded, self._guarded + len(emb)), emb)
        self._guarded += len(emb)
        if len(self.backlog):  # the backlog against the new guard items only
            self.backlog.raise_dup(_max_cosine(self.backlog.emb, emb))

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
                        self.project.guideline_version, now, self._label_key(item_id))
                  for item_id, label, confidence in zip(ids, classes, probs.max(1).tolist())]
        # an item this selector labeled before (under any model version) gets its stored label
        # published again: a crash may have cut off that publish
        return write_final_labels(self.producer, self.store, labels, same_stage)

    def _label_key(self, item_id: str) -> str:
        return f"{item_id}:selector:{self.head.version if self.head is not None else 'none'}"

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
        queued = {t.item_id for t in self.store.open_tasks(self.project.name)}
        waiting = [i for i in self.store.unlabeled_ids(self.project.name) if i not in queued and i not in self.backlog]
        if waiting:
            if time.monotonic() - self._close_wait_logged >= CLOSE_WAIT_LOG_S:
                self._close_wait_logged = time.monotonic()
                log.info("selector close waits project=%s unscored=%d", self.project.name, len(waiting))
            return None
        return self.close_stream()

    def handle(self, records: list[tuple[str, object]]) -> None:
        scored: list[Scored] = []
        for stage, record in records:
            if stage == "models":
                self._swap(record)
            else:
                scored.append(record)
        if scored:
            self._arrive(scored)
        self._issue_tasks(final=False)

    def _arrive(self, scored: list[Scored]) -> None:
        # a redelivered message must not put an item in the backlog twice, nor next to its own task,
        # nor earn the budget a second time
        arrived = [s.item_id for s in scored]
        queued = {t.item_id for t in self.store.open_tasks(self.project.name, arrived)}
        unlabeled = self.store.unlabeled_ids(self.project.name, arrived)
        if len(unlabeled) < len(set(arrived)):  # redelivered: a crash may have cut off these labels' publish
            done = set(arrived).difference(unlabeled)
            republish_own(self.producer, self.store, self.project.name, "model",
                          {i: self._label_key(i) for i in done}, same_stage)
        fresh = self._embedded([i for i in unlabeled if i not in queued and i not in self.backlog], scored)
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

    def _embedded(self, fresh: list[str], scored: list[Scored]) -> list[str]:
        """The ``fresh`` items that have an embedding; the scored messages of the others are
        dead-lettered (``Stage.reject``) rather than stopping the stage."""
        have = set(self.store.embedded_ids(self.project.name, fresh)) if fresh else set()
        if len(have) < len(fresh):
            missing = set(fresh) - have
            self.reject("items.scored", [s for s in scored if s.item_id in missing],
                        NotFound("item_id", f"no embedding in the store for {len(missing)} scored items"))
        return [i for i in fresh if i in have]

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
        self.producer.publish_many(topic(self.project.name, "tasks"), TASKS.keyed(tasks))

    def _swap(self, model: ModelVersion) -> None:
        first_sight, self._models_seen = model.version not in self._models_seen, self._models_seen | {model.version}
        if self.head is not None and self.head.version == model.version:
            if first_sight:  # the head came from the store at start: this may be the redelivered message
                # of a swap a crash cut short, after its labels were written and before they were published
                suffix = f":selector:{model.version}"
                republish_stored(self.producer, self.store, self.project.name, "model",
                                 lambda label: label.idempotency_key.endswith(suffix))
            return
        self.head = OnnxHead(Path(model.path))
        log.info("selector swapped project=%s version=%s threshold=%s backlog=%d", self.project.name,
                 model.version, self.threshold, len(self.backlog))
        if len(self.backlog):
            self.backlog.rescore(*self._scores(self.backlog.emb))
            self._accept_confident()
        open_tasks = self.store.open_tasks(self.project.name)
        label_tasks = [t.item_id for t in open_tasks if t.kind == "label"]
        if label_tasks:
            _, unc = self._scores(self.store.get_embeddings(self.project.name, label_tasks))
            self.store.set_priorities(self.project.name, dict(zip(label_tasks, unc.tolist())))

    def _issue_tasks(self, final: bool) -> int:
        """Send the most useful backlog items to people, as far as the budget allows."""
        if not len(self.backlog):
            return 0
        wanted = int(self.budget.credit)
        if wanted < (1 if final else self.config.select_batch):
            return 0
        pool = np.arange(len(self.backlog))
        if self.guard is not None:
            pool = pool[self.backlog.dup < self.guard.threshold]  # as guard.is_duplicate(backlog.emb)
        if not len(pool):
            return 0
        emb = self.backlog.emb[pool]
        probs, unc = self.backlog.probs[pool], self.backlog.unc[pool]
        n = self.budget.grant(min(wanted, len(pool)))
        chosen = self.strategy.select(Candidates(emb, probs, unc), n, self.rng)  # indices into pool
        picked = pool[chosen]
        version = self.head.version if self.head is not None else None
        now = self.clock()
        ids = self.backlog.ids
        tasks = [Task(self.project.name, ids[i], float(u), version, now) for i, u in zip(picked, unc[chosen])]
        self._queue(tasks)
        picked_mask = np.zeros(len(self.backlog), bool)
        picked_mask[picked] = True
        self.backlog.drop(picked_mask)  # before the guard grows: the picked rows need no similarity update
        self._guard_add(emb[chosen])
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
        # a close served again after a crash finds the labels it wrote out of the backlog: publish
        # them again, since the crash may have come before their publish (idempotent downstream)
        republish_stored(self.producer, self.store, self.project.name, "model",
                         lambda label: label.aggregation == "low_confidence" and ":selector:" in label.idempotency_key)
        if len(self.backlog):
            low = self._accept(self.backlog.ids, self.backlog.probs, "low_confidence")
            self.backlog.drop(np.ones(len(self.backlog), bool))
        self.producer.flush()
        # the requests are served once the output is durable: a crash before this line means the
        # close runs again after restart (its labels are idempotent, its tasks already queued)
        record_close(self.store, self.project.name, requests, tasks, low, self.clock())
        log.info("selector closed the stream project=%s tasks=%d low_confidence=%d requests=%d",
                 self.project.name, tasks, low, len(requests))
        return {"tasks": tasks, "low_confidence": low}
