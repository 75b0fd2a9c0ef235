"""Simulated annotators and a seeded stream through the embedded loop (the demo and the benchmark)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from winnow.core.data.datasets import Dataset
from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.records import Item, Label, ModelVersion, Project, Task
from winnow.core.domain.settings import LoopConfig
from winnow.core.loop.embedded import EmbeddedLoop
from winnow.core.loop.gold import add_gold
from winnow.core.loop.labeling import LabelingService
from winnow.core.loop.quality import certified_quality
from winnow.core.ml.head import OnnxHead
from winnow.core.ml.runtime import OnnxRuntime, Runtime
from winnow.core.ml.scoring import mean_probs


class SimulatedAnnotators:
    """People who answer every task they can lease, each wrong with their own probability.

    A wrong answer is a uniformly random other class. Annotators take turns, ``batch`` leases each.
    """

    def __init__(self, truth: Mapping[str, str], classes: Sequence[str], noise: Sequence[float] = (0.0,),
                 seed: int = 0, batch: int = 25) -> None:
        if not noise or any(not 0.0 <= p < 1.0 for p in noise):
            raise InvalidInput("noise", f"need one error rate in [0, 1) per annotator, got {list(noise)}")
        self.truth, self.classes, self.noise, self.batch = truth, list(classes), list(noise), batch
        self.names = [f"annotator-{k + 1}" for k in range(len(noise))]
        self.rng = np.random.default_rng(seed)
        self.answers = 0
        self._turn = 0

    def _answer(self, item_id: str, error_rate: float) -> str:
        right = self.truth[item_id]
        if self.rng.random() >= error_rate:
            return right
        others = [c for c in self.classes if c != right]
        return others[int(self.rng.integers(len(others)))]

    def __call__(self, labeling: LabelingService) -> int:
        done = 0
        busy = True
        while busy:
            busy = False
            self._turn = (self._turn + 1) % len(self.names)  # who asks first rotates, so work is shared
            order = [*range(self._turn, len(self.names)), *range(self._turn)]
            for name, error_rate in ((self.names[k], self.noise[k]) for k in order):
                leases = labeling.lease(name, self.batch)
                for lease in leases:
                    labeling.submit(name, lease.item_id, self._answer(lease.item_id, error_rate))
                done += len(leases)
                busy = busy or bool(leases)
        self.answers += done
        return done


@dataclass
class StreamReport:
    """What one seeded run of a stream through the loop achieved (the benchmark's JSON keys)."""

    strategy: str
    items: int
    human_labels: int
    human_fraction: float
    final_label_accuracy: float
    auto_accept_precision: float | None
    model_test_accuracy: float | None
    wall_s: float
    annotations: int = 0
    auto_accepted: int = 0
    low_confidence: int = 0
    gold: int = 0
    model_versions: int = 0
    unlabeled: int = 0
    auto_accepted_fraction: float = 0.0
    first_certified_at_fraction: float | None = None
    certified_accuracy_lower_bound: float | None = None
    certified_auto_accept_precision_lower_bound: float | None = None
    annotations_per_item: float = 0.0
    target_met_at_fraction: float | None = None
    low_confidence_accuracy: float | None = None  # measured: the labels given at close below any threshold
    human_label_accuracy: float | None = None  # measured: the final labels people's answers gave
    check_fraction: float | None = None  # share of the tasks drawn that checked the model (probes and audits)
    tasks_by_kind: dict[str, int] = field(default_factory=dict)  # see ``task_counts``
    quality: dict = field(default_factory=dict)
    curve: list[dict] = field(default_factory=list)
    stream: list[dict] = field(default_factory=list)  # per chunk: human labels spent, bound, true accuracy
    annotators: dict[str, dict] = field(default_factory=dict)

    KEYS = ("items", "human_labels", "human_fraction", "final_label_accuracy", "auto_accept_precision",
            "model_test_accuracy", "wall_s", "auto_accepted_fraction", "first_certified_at_fraction",
            "certified_accuracy_lower_bound", "certified_auto_accept_precision_lower_bound",
            "annotations_per_item", "unlabeled", "target_met_at_fraction", "low_confidence_accuracy",
            "human_label_accuracy", "check_fraction")

    def summary(self) -> dict:
        return {k: getattr(self, k) for k in self.KEYS}


def evaluate_labels(labels: Sequence[Label], truth: Mapping[str, str]) -> dict:
    """Counts and accuracies of final labels against the truth (benchmark side only: the loop never sees it)."""
    correct = np.array([truth[label.item_id] == label.label for label in labels], bool)
    source = np.array([label.source for label in labels])
    auto = np.array([label.source == "model" and label.aggregation == "auto_accept" for label in labels], bool)
    low = np.array([label.aggregation == "low_confidence" for label in labels], bool)
    human = source == "human"
    return {
        "human_labels": int((source == "human").sum()),
        "gold": int((source == "gold").sum()),
        "auto_accepted": int(auto.sum()),
        "low_confidence": int(low.sum()),
        "final_label_accuracy": float(correct.mean()) if len(correct) else 0.0,
        "auto_accept_precision": float(correct[auto].mean()) if auto.any() else None,
        "low_confidence_accuracy": float(correct[low].mean()) if low.any() else None,
        "human_label_accuracy": float(correct[human].mean()) if human.any() else None,
    }


def task_counts(tasks: Sequence[Task]) -> dict[str, int]:
    """What people's tasks (gold excepted) were drawn for: ``picks`` (the strategy's choices from the
    backlog, probability 1), ``floor`` (the least chance every arriving item has), ``probes`` (checks
    above the model's candidate threshold: the next threshold's evidence) and ``audits`` (checks of
    labels the model would give)."""
    counts = {"picks": 0, "floor": 0, "probes": 0, "audits": 0}
    for t in tasks:
        if t.kind == "label":
            counts["picks" if t.probability >= 1.0 else "floor"] += 1
        elif t.kind == "holdout":
            counts["probes"] += 1
        elif t.kind == "audit":
            counts["audits"] += 1
    return counts


def run_stream(
    train: Dataset,
    workdir: Path,
    runtime: Runtime,
    project: Project,
    config: LoopConfig,
    test: Dataset | None = None,
    noise: Sequence[float] = (0.0,),
    gold: int = 0,
    chunk: int = 100,
    seed: int = 0,
    progress: Callable[[int, StreamReport], None] | None = None,
) -> StreamReport:
    """Stream every row of ``train`` once, in a seeded shuffled order, through an embedded loop.

    Simulated annotators answer tasks as they appear. The first ``gold`` rows of the shuffled order
    are given to the project as known answers (gold). ``test`` (when given) is only used to measure
    each model version's accuracy for the learning curve.
    """
    if train.labels is None:
        raise InvalidInput("label_col", f"{train.source} has no labels to simulate annotators with")
    started = time.perf_counter()
    order = np.random.default_rng(seed).permutation(len(train))
    ids = [f"row-{i}" for i in order]
    truth = {f"row-{i}": train.labels[i] for i in order}
    texts = {f"row-{i}": train.texts[i] for i in order}
    test_emb = runtime.encoder.encode(list(test.texts)) if test is not None else None
    test_y = np.array(test.label_ids()) if test is not None else None
    report = StreamReport(project.strategy, len(train), 0, 0.0, 0.0, None, None, 0.0)

    seen = [0]  # items streamed so far

    def on_version(model: ModelVersion) -> None:
        if report.first_certified_at_fraction is None and np.isfinite(model.threshold):
            report.first_certified_at_fraction = seen[0] / len(ids)
        point = {"version": model.version, "human_labels": model.n_train,
                 "threshold_sample": model.metrics.get("threshold_sample"),
                 "threshold": model.threshold, "heldout_accuracy": model.metrics.get("heldout_accuracy")}
        if test_emb is not None:
            head = OnnxHead(Path(model.path))
            predicted = mean_probs(head.logits(test_emb), model.temperature).argmax(1)
            point["test_accuracy"] = float((predicted == test_y).mean())
        report.curve.append(point)

    # each run gets its own head on the shared encoder (and its embedding cache)
    loop = EmbeddedLoop(workdir, project, OnnxRuntime(runtime.encoder), config, on_version=on_version)
    # the selector re-reads its version's audits every ``select_batch`` arrivals, not at most every 10 s of
    # this machine's time: a seed gives the same labels on a fast machine and a slow one, measured or not
    loop.selector.refute_check_s = 0.0
    people = SimulatedAnnotators(truth, project.classes, noise, seed)
    try:
        if gold:
            gold_ids = ids[:gold]
            loop.ingest([Item(project.name, i, texts[i], time.time()) for i in gold_ids])
            add_gold(loop.producer, loop.store, project, {i: truth[i] for i in gold_ids}, "operator", time.time())
            loop.producer.flush()
        for start in range(gold, len(ids), chunk):
            batch = ids[start:start + chunk]
            seen[0] = start + len(batch)
            loop.ingest([Item(project.name, i, texts[i], time.time()) for i in batch])
            loop.run_until_idle(people)
            report.stream.append(_stream_point(loop, project, truth, seen[0]))
            if progress is not None:
                progress(min(start + chunk, len(ids)), report)
        outcome = loop.close_stream(people)
        labels = loop.store.labels(project.name)
        report.unlabeled = outcome.get("unlabeled", 0)
        if len(labels) + report.unlabeled != len(ids) or len({label.item_id for label in labels}) != len(labels):
            raise RuntimeError(f"{len(ids)} items streamed but {len(labels)} final labels were written "
                               f"and {report.unlabeled} left unlabeled")
        report.stream.append(_stream_point(loop, project, truth, len(ids), closed=True))
        quality = certified_quality(loop.store, project.name)
        report.quality = quality.to_dict()
        report.certified_accuracy_lower_bound = quality.accuracy_lower_bound
        report.certified_auto_accept_precision_lower_bound = quality.auto_accepted_precision_lower_bound
        if quality.target_met is not None:
            report.target_met_at_fraction = quality.target_met["items"] / len(ids)
        scores = evaluate_labels(labels, truth)
        report.human_labels = scores["human_labels"]
        report.gold = scores["gold"]
        report.auto_accepted = scores["auto_accepted"]
        report.low_confidence = outcome["low_confidence"]
        report.final_label_accuracy = scores["final_label_accuracy"]
        report.auto_accept_precision = scores["auto_accept_precision"]
        report.low_confidence_accuracy = scores["low_confidence_accuracy"]
        report.human_label_accuracy = scores["human_label_accuracy"]
        report.tasks_by_kind = task_counts([t for t in loop.store.tasks(project.name) if t.kind != "gold"])
        drawn = sum(report.tasks_by_kind.values())
        checks = report.tasks_by_kind["probes"] + report.tasks_by_kind["audits"]
        report.check_fraction = checks / drawn if drawn else None
        report.human_fraction = report.human_labels / len(ids)
        report.auto_accepted_fraction = report.auto_accepted / len(ids)
        report.annotations = people.answers
        report.annotations_per_item = people.answers / len(ids)
        report.model_versions = len(loop.store.models(project.name))
        report.annotators = loop.labeling.annotator_quality()
        for name, error_rate in zip(people.names, people.noise):
            report.annotators.setdefault(name, {})["simulated_accuracy"] = 1.0 - error_rate
        if report.curve and test is not None:
            report.model_test_accuracy = report.curve[-1]["test_accuracy"]
    finally:
        loop.close()
    report.wall_s = time.perf_counter() - started
    return report


def _stream_point(loop: EmbeddedLoop, project: Project, truth: Mapping[str, str], seen: int,
                  closed: bool = False) -> dict:
    """Where a run stands after ``seen`` items: human labels spent (tasks drawn), final labels, the
    system's certified bound and, measured against the truth (benchmark side only), their accuracy."""
    labels = loop.store.labels(project.name)
    quality = certified_quality(loop.store, project.name)
    tasks = [t for t in loop.store.tasks(project.name) if t.kind != "gold"]
    correct = [truth[label.item_id] == label.label for label in labels]
    return {"items": seen, "closed": closed, "tasks": len(tasks), "final_labels": len(labels),
            "auto_accepted": sum(label.aggregation == "auto_accept" for label in labels),
            "certified_accuracy_lower_bound": quality.accuracy_lower_bound,
            "certified_auto_accept_precision_lower_bound": quality.auto_accepted_precision_lower_bound,
            "accuracy": float(np.mean(correct)) if correct else None}
