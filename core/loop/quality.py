"""A project's certified quality, computed from the store without any truth: how many model labels
may be wrong (per family and overall) and a lower bound on the accuracy of all final labels.

The families are the model labels' aggregations: ``auto_accept`` (labels given above a threshold,
at arrival or when a new version re-scored the backlog) and ``low_confidence`` (given at close). Each
family's trials are its audit tasks (drawn: the people's answer shows whether the model's label was
right) and its model labels (not drawn, each with its probability of having been drawn). The bound
for each is anytime-valid (:mod:`winnow.core.ml.certify`); each figure holds at the stated
confidence on its own (all of them at once: at ``1 - 3 * (1 - confidence)``, by a union bound).

Human labels are taken as right unless the project measured its people: with gold answers, the
share of gold answers people got wrong (a one-sided Clopper-Pearson upper bound) is charged to every
human label. ``human_error`` says which was done.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy.stats import beta
from winnow.core.ml.certify import ErrorBound, Trials, error_bound
from winnow.core.ports.store import Store

FAMILIES = ("auto_accept", "low_confidence")


@dataclass(frozen=True)
class Quality:
    """What the system certifies about a project's final labels (every count is of final labels)."""

    confidence: float
    final_labels: int
    human_labels: int
    model_labels: int
    gold_labels: int
    auto_accepted: ErrorBound
    low_confidence: ErrorBound
    model: ErrorBound
    human_error: str  # "not measured" (taken as 0) or "gold" (upper bound from gold answers)
    human_error_rate_upper: float
    target_met: dict | None = None  # target mode: items, human labels and bound when it was first met
    thresholds_withdrawn: tuple[str, ...] = ()  # versions whose threshold their own audits refuted

    @property
    def accuracy_lower_bound(self) -> float | None:
        """Certified lower bound on the share of all final labels that are right (None: no labels)."""
        if not self.final_labels:
            return None
        wrong = self.model.hidden_errors_upper + self.human_error_rate_upper * self.human_labels
        return max(0.0, 1.0 - wrong / self.final_labels)

    @property
    def auto_accepted_precision_lower_bound(self) -> float | None:
        return self.auto_accepted.precision_lower

    def to_dict(self) -> dict:
        out = asdict(self)
        out["accuracy_lower_bound"] = self.accuracy_lower_bound
        out["auto_accepted_precision_lower_bound"] = self.auto_accepted_precision_lower_bound
        for name in ("auto_accepted", "low_confidence", "model"):
            out[name]["precision_lower"] = getattr(self, name).precision_lower
        return out


def family_trials(kept: Sequence[tuple[str, float | None, int]], audits: Sequence[tuple[str, float, bool | None]],
                  families: tuple[str, ...]) -> Trials:
    """The audit trials of the model labels in ``families`` (module doc), from ``Store.audit_record``:
    the grouped model labels (a label with no probability was never checkable: 0) and the audits."""
    drawn = [(p, np.nan if wrong is None else float(wrong)) for f, p, wrong in audits if f in families]
    groups = [(p or 0.0, c) for a, p, c in kept if a in families]
    undrawn = np.repeat([p for p, _ in groups], [c for _, c in groups]) if groups else np.zeros(0)
    return Trials.of(
        np.concatenate([[p for p, _ in drawn], undrawn]),
        np.concatenate([np.ones(len(drawn), bool), np.zeros(len(undrawn), bool)]),
        np.concatenate([[e for _, e in drawn], np.full(len(undrawn), np.nan)]),
    )


def _human_error(store: Store, project: str, confidence: float) -> tuple[str, float]:
    gold = store.gold(project)
    answers = [a for a in store.annotations(project, list(gold)) if a.item_id in gold] if gold else []
    if not answers:
        return "not measured", 0.0
    wrong = sum(a.label != gold[a.item_id] for a in answers)
    n = len(answers)
    upper = 1.0 if wrong == n else float(beta.ppf(confidence, wrong + 1, n - wrong))
    return "gold", upper


def _details(log: Sequence[tuple], action: str) -> list[dict]:
    """The JSON details of the audit log's entries of ``action``, in order."""
    return [json.loads(detail) for _, _, logged, detail in log if logged == action]


def _withdrawn(log: Sequence[tuple]) -> tuple[str, ...]:
    """The versions the log's ``threshold_withdrawn`` entries name, once each, in order."""
    return tuple(dict.fromkeys(d["version"] for d in _details(log, "threshold_withdrawn")))


def withdrawn_versions(store: Store, project: str) -> tuple[str, ...]:
    """The model versions whose auto-accept threshold the selector withdrew (its audits refuted it), in order."""
    return _withdrawn(store.audit_log(project))


def certified_quality(store: Store, project: str, confidence: float = 0.95) -> Quality:
    """The project's certified quality now (one read of its labels and tasks)."""
    counts = store.count_labels(project)
    kept, audits = store.audit_record(project)
    kind, rate = _human_error(store, project, confidence)
    log = store.audit_log(project)
    met = _details(log, "target_met")
    withdrawn = _withdrawn(log)
    return Quality(
        confidence=confidence,
        final_labels=sum(counts.values()),
        human_labels=counts.get("human", 0),
        model_labels=counts.get("model", 0),
        gold_labels=counts.get("gold", 0),
        auto_accepted=error_bound(family_trials(kept, audits, ("auto_accept",)), confidence),
        low_confidence=error_bound(family_trials(kept, audits, ("low_confidence",)), confidence),
        model=error_bound(family_trials(kept, audits, FAMILIES), confidence),
        human_error=kind,
        human_error_rate_upper=rate,
        target_met=met[0] if met else None,
        thresholds_withdrawn=withdrawn,
    )
