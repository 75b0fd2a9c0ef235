"""The labeling service: lease, submit, skip, heartbeat; consensus turns answers into final human labels."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Callable, Sequence

import numpy as np
from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.records import Annotation, Label, Lease, Project
from winnow.core.domain.settings import LoopConfig
from winnow.core.loop.labels_out import write_final_labels
from winnow.core.loop.stage import PROJECT_CHECK_S
from winnow.core.ml.consensus import (
    OneCoinFit,
    annotator_accuracy_on_gold,
    dawid_skene,
)
from winnow.core.ports.bus import Bus
from winnow.core.ports.store import Store

log = logging.getLogger(__name__)

MODEL_KINDS = ("label", "audit", "holdout")  # tasks that carry the model's label (``Task.model_label``)
CHECK_KINDS = ("audit", "holdout")  # drawn where the model is (nearly) sure: a lone answer against it asks again


class LabelingService:
    """What people use: lease tasks, submit, skip, heartbeat; consensus makes the final human label."""

    def __init__(self, bus: Bus, store: Store, project: Project, config: LoopConfig,
                 clock: Callable[[], float] = time.time, background_refit: bool = False) -> None:
        """``background_refit``: refit the consensus model in a thread of its own (a server: no
        submit waits for it) rather than in the call that finds it stale (a reproducible run)."""
        self.bus, self.store, self.project, self.config, self.clock = bus, store, project, config, clock
        self.background_refit = background_refit
        self._project_check_at = time.monotonic() + PROJECT_CHECK_S
        self._fit: OneCoinFit | None = None
        self._fit_lock = threading.Lock()
        self._refitting: threading.Thread | None = None
        self.producer = bus.producer()  # the labels this service publishes, flushed by ``resolve``
        # items with all their answers: those without a final label yet (a crash between the last
        # answer and consensus), and those with one, whose publish a crash may have cut off (``resolve``
        # writes nothing for them and publishes the stored label again: at least once on the topic)
        history = store.annotations(project.name)
        answered = Counter(a.item_id for a in history)
        self._answer_counts = Counter(a.annotator for a in history)  # per annotator, kept up to date by submit
        self._answers_seen = len(history)  # grows with each recorded answer: when to refit
        gold = store.gold(project.name)
        wanted = {t.item_id: t.wanted or project.overlap for t in store.open_tasks(project.name)}
        labeled = {label.item_id for label in store.labels(project.name, "human")}
        self._ready: set[str] = {i for i, n in answered.items()
                                 if i not in gold and (i in labeled or n >= wanted.get(i, project.overlap))}

    def _check_project(self) -> None:
        """Every ``PROJECT_CHECK_S``, take the project's settings again (overlap, guideline version)."""
        if time.monotonic() >= self._project_check_at:
            self._project_check_at = time.monotonic() + PROJECT_CHECK_S
            self.project = self.store.get_project(self.project.name)

    def lease(self, annotator: str, n: int) -> list[Lease]:
        self._check_project()
        if not annotator:
            raise InvalidInput("annotator", "is empty")
        if n < 1:
            raise InvalidInput("n", f"must be >= 1, got {n}")
        # own live leases come back first, so at most ``max_open_leases`` are ever held at once
        return self.store.lease_tasks(self.project.name, annotator, min(n, self.config.max_open_leases),
                                      self.config.lease_s, self.clock(), self.project.overlap)

    def heartbeat(self, annotator: str, item_ids: Sequence[str]) -> int:
        return self.store.heartbeat(self.project.name, annotator, item_ids, self.config.lease_s, self.clock())

    def skip(self, annotator: str, item_id: str) -> None:
        """Give back a live lease unanswered (LeaseRequired without one)."""
        self.store.skip(self.project.name, annotator, item_id, leased_at=self.clock())

    def submit(self, annotator: str, item_id: str, label: str, strength: str = "", reason: str = "") -> bool:
        """Record one answer to a task the annotator holds a live lease on (LeaseRequired otherwise;
        an answer given before is not recorded again: False); the item's final label is made once
        its task has all the answers it wants. A task the selector made asks for one answer at first
        (adaptive overlap, ``OneCoinFit.answers_wanted``): another where the answers disagree among
        themselves or with the model's label and the consensus fit leaves the likeliest class below
        ``answer_confidence`` (on a check or probe a lone answer against the model always asks
        another), up to the project's ``overlap``; a task with no ``wanted`` asks for ``overlap``
        answers. A comparison's answer may carry a ``strength`` and a ``reason`` (``Annotation``)."""
        if label not in self.project.classes:  # perhaps a class added since the last check, on another replica
            self._project_check_at = 0.0
            self._check_project()
        if label not in self.project.classes:
            raise InvalidInput("label", f"{label!r} is not in project {self.project.name!r}'s label schema")
        added = self.store.add_annotation(Annotation(self.project.name, item_id, annotator, label, self.clock(),
                                                     strength, reason), leased=True)
        if added:
            self._answers_seen += 1
            self._answer_counts[annotator] += 1
        if added and item_id not in self.store.gold(self.project.name):
            given = self.store.annotations(self.project.name, [item_id])
            answers = [a.label for a in given]
            tasks = self.store.open_tasks(self.project.name, [item_id])
            task = tasks[0] if tasks else None
            if task is None or task.wanted is None:
                wanted = self.project.overlap
            else:
                # an answer against a model the fit trusts more asks another person: on checks and probes
                # the model is nearly sure, and these answers certify thresholds
                fit, classes = self._last_fit(), {c: k for k, c in enumerate(self.project.classes)}
                model = ((fit.reference(task.kind, task.model_version), classes[task.model_label])
                         if task.model_label in classes else None)
                wanted = max(task.wanted, fit.answers_wanted([a.annotator for a in given],
                                                             [classes[label] for label in answers],
                                                             self.project.overlap, model,
                                                             self.config.answer_confidence,
                                                             task.kind in CHECK_KINDS))
                if wanted > task.wanted:
                    self.store.want_answers(self.project.name, item_id, wanted)
            if len(answers) >= wanted:
                self._ready.add(item_id)
        return added

    def _answers(self):
        """Every annotation of the project as consensus arrays, with gold answers by item index.

        The arrays also hold, after the people's, the model's label on each task that has answers, as
        the answer of one more annotator per task kind and model version (indices from ``len(names)``
        on, in the order of the returned ``references``). How many people answer an item depends on
        that label (``OneCoinFit.answers_wanted``): a second person is asked where the first contradicts
        it. Without it in the fit, the items with several answers over-represent people's slips, a
        choice the fit cannot see, and every person's accuracy comes out low; with it, the choice
        depends only on what the fit reads, and the estimates are unbiased. For people right 0.95, 0.90
        and 0.85 of the time, at 1.14 answers per item over 30 simulated streams: 0.85, 0.63 and 0.45
        without it, 0.950, 0.903 and 0.848 with it (``tests/unit/test_consensus.py``). The model's
        label weighs in the fit and in the choice to ask again, never in an item's final label, which
        comes from people's answers alone (``resolve``): an audit still checks the model against people."""
        classes = {c: k for k, c in enumerate(self.project.classes)}
        answers = self.store.annotations(self.project.name)
        item_index = {i: k for k, i in enumerate(dict.fromkeys([a.item_id for a in answers]))}
        annotators = {a: k for k, a in enumerate(dict.fromkeys([a.annotator for a in answers]))}
        names = list(annotators)
        checked = [t for t in self.store.tasks(self.project.name, MODEL_KINDS)
                   if t.item_id in item_index and t.model_label in classes]
        model: dict[tuple[str, str | None], int] = {}  # (kind, version) -> annotator index, after the people
        for t in checked:
            model.setdefault((t.kind, t.model_version), len(annotators) + len(model))
        args = (np.array([item_index[a.item_id] for a in answers] + [item_index[t.item_id] for t in checked], np.int64),
                np.array([annotators[a.annotator] for a in answers] + [model[t.kind, t.model_version] for t in checked],
                         np.int64),
                np.array([classes[a.label] for a in answers] + [classes[t.model_label] for t in checked], np.int64),
                len(item_index), len(annotators) + len(model), len(classes))
        gold = {item_index[i]: classes[c] for i, c in self.store.gold(self.project.name).items() if i in item_index}
        return answers, item_index, names, args, gold, list(model)

    def own_quality(self, annotator: str) -> dict[str, float | None]:
        """One annotator's answers and accuracy on gold (what the labeling page shows them): read from
        the gold items' answers only, so it costs the same at any history length."""
        gold = self.store.gold(self.project.name)
        mine = [a for a in self.store.annotations(self.project.name, list(gold)) if a.annotator == annotator] \
            if gold else []
        return {"answers": self._answer_counts.get(annotator, 0),
                "gold_accuracy": sum(a.label == gold[a.item_id] for a in mine) / len(mine) if mine else None}

    def annotator_quality(self) -> dict[str, dict[str, float | None]]:
        """Per annotator: answers given, accuracy on gold items, and the Dawid-Skene estimate."""
        answers, _, names, args, gold, _ = self._answers()
        if not answers:
            return {}
        on_gold = annotator_accuracy_on_gold(*args[:3], gold, *args[3:]) if gold else np.full(args[4], np.nan)
        estimated = dawid_skene(*args, gold=gold).annotator_accuracy
        counts = np.bincount(args[1], minlength=args[4])
        return {name: {"answers": int(counts[k]),
                       "gold_accuracy": None if np.isnan(on_gold[k]) else float(on_gold[k]),
                       "estimated_accuracy": None if np.isnan(estimated[k]) else float(estimated[k])}
                for k, name in enumerate(names)}

    def _refit(self) -> OneCoinFit:
        """A one-coin Dawid-Skene fit over every answer of the project (gold clamped)."""
        _, _, names, args, gold, references = self._answers()
        fit = OneCoinFit.of(dawid_skene(*args, gold=gold), names, np.bincount(args[1], minlength=args[4])[: len(names)],
                            references=references)
        with self._fit_lock:
            if self._fit is None or fit.answers >= self._fit.answers:
                self._fit = fit
        return fit

    def _refit_logged(self) -> None:
        """``_refit`` in the background: a failure is logged, and the next stale check tries again."""
        try:
            self._refit()
        except Exception:
            log.exception("consensus refit failed project=%s; the last fit stays", self.project.name)

    def _last_fit(self) -> OneCoinFit:
        """The last fit as it is (provisional before the first), for a submit's choice to ask again: a
        submit never fits (a fit made at the first answers would stand, unmeasured, until the next)."""
        with self._fit_lock:
            fit = self._fit
        n_classes = len(self.project.classes)
        return fit.widened(n_classes) if fit is not None else OneCoinFit.provisional(n_classes)

    def _current_fit(self) -> OneCoinFit:
        """The fit to aggregate with: made now if there is none; refitted (in the background where
        ``background_refit``) once the answers grew by ``consensus_refit_answers`` or a tenth."""
        with self._fit_lock:
            fit, running = self._fit, self._refitting is not None and self._refitting.is_alive()
        if fit is None and not self.background_refit:
            return self._refit()
        stale = fit is None or (self._answers_seen - fit.answers
                                >= max(self.config.consensus_refit_answers, fit.answers // 10))
        if stale and not running:
            if self.background_refit:
                self._refitting = threading.Thread(target=self._refit_logged, name=f"consensus-{self.project.name}",
                                                   daemon=True)
                self._refitting.start()
            else:
                fit = self._refit()
        # while a server's first fit runs, every annotator counts alike: a majority vote
        n_classes = len(self.project.classes)
        return fit.widened(n_classes) if fit is not None else OneCoinFit.provisional(n_classes)

    def resolve(self) -> int:
        """Aggregate the items that have all their answers into final human labels (one batch).

        Incremental: only these items' answers are read. With one answer per item and no gold, the
        answer is the label ("single"); otherwise each item's posterior comes from the project's
        last Dawid-Skene fit (class prior and each annotator's accuracy), refitted over all answers
        on a schedule (``_current_fit``), so a submit costs the same at any history length."""
        if not self._ready:
            return 0
        ready, self._ready = sorted(self._ready), set()
        by_item: dict[str, list[Annotation]] = {}
        for a in self.store.annotations(self.project.name, ready):
            by_item.setdefault(a.item_id, []).append(a)
        ready = [i for i in ready if i in by_item]  # an item erased since its last answer has none left
        if not ready:
            return 0
        classes = {c: k for k, c in enumerate(self.project.classes)}
        single = self.project.overlap == 1 and not self.store.gold(self.project.name)
        fit = None if single else self._current_fit()
        now = self.clock()
        labels = []
        for item_id in ready:
            given = by_item[item_id]
            if fit is None:
                votes = np.bincount([classes[a.label] for a in given], minlength=len(classes))
                k, confidence, aggregation = int(votes.argmax()), float(votes.max() / votes.sum()), "single"
            else:
                post = fit.posterior([a.annotator for a in given], [classes[a.label] for a in given])
                k, confidence, aggregation = int(post.argmax()), float(post.max()), fit.method
            labels.append(Label(self.project.name, item_id, self.project.classes[k], "human",
                                ",".join(sorted({a.annotator for a in given})), confidence, None, aggregation,
                                self.project.guideline_version, now, f"{item_id}:labeling:human"))
        new = write_final_labels(self.producer, self.store, labels)
        self.producer.flush()
        return new
