"""Aggregating overlapping human annotations into one label per item: majority vote and Dawid-Skene.

Annotations arrive as three aligned int arrays: ``items [a]``, ``annotators [a]``, ``labels [a]``
(one row per annotation), with ids in ``[0, n_items)``, ``[0, n_annotators)``, ``[0, n_classes)``.
Pass compact ids: results are dense ``[n_items, n_classes]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from numbers import Real

import numpy as np
from scipy.sparse import csr_array
from scipy.special import logsumexp
from winnow.core.domain.errors import InvalidInput

DAWID_SKENE_MODELS = ("one_coin", "confusion")


@dataclass(frozen=True, eq=False)
class ConsensusResult:
    """Aggregated labels and per-annotator quality.

    Attributes
    ----------
    labels : int64 [n_items]
        Consensus class, -1 for an item with no annotation (and no gold label).
    confidence : float64 [n_items]
        Posterior (vote share for majority vote) of the consensus class; 0 where ``labels`` is -1.
    posterior : float64 [n_items, n_classes]
        Class distribution per item; all-zero rows where ``labels`` is -1.
    annotator_accuracy : float64 [n_annotators]
        Expected accuracy under ``posterior``: mean posterior mass on the label each annotator
        gave. NaN for annotators with no annotations.
    method : str
        ``majority_vote``, ``dawid_skene_one_coin`` or ``dawid_skene_confusion`` (label provenance).
    iterations : int
        EM iterations run (0 for majority vote).
    """

    labels: np.ndarray
    confidence: np.ndarray
    posterior: np.ndarray
    annotator_accuracy: np.ndarray
    method: str
    iterations: int


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidInput(name, f"must be an integer >= 1, got {value!r}")
    return int(value)


def _ids(name: str, values: np.ndarray, bound: int) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise InvalidInput(name, f"expected a 1-D integer array, got {a.dtype} {list(a.shape)}")
    bad = np.flatnonzero((a < 0) | (a >= bound))
    if bad.size:
        raise InvalidInput(name, f"value {a[bad[0]]} at index {bad[0]} is outside [0, {bound})")
    return a.astype(np.int64)


def _annotations(items, annotators, labels, n_items, n_annotators, n_classes):
    n_items, n_annotators = _count("n_items", n_items), _count("n_annotators", n_annotators)
    n_classes = _count("n_classes", n_classes)
    i = _ids("items", items, n_items)
    j = _ids("annotators", annotators, n_annotators)
    y = _ids("labels", labels, n_classes)
    for name, a in (("annotators", j), ("labels", y)):
        if a.size != i.size:
            raise InvalidInput(name, f"has {a.size} entries but items has {i.size}")
    return i, j, y, n_items, n_annotators, n_classes


def _gold(gold: Mapping[int, int] | None, n_items: int, n_classes: int):
    if not gold:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if not isinstance(gold, Mapping):
        raise InvalidInput("gold", f"expected a mapping item -> class, got {type(gold).__name__}")
    keys, values = np.array(list(gold.keys())), np.array(list(gold.values()))
    for a, bound, what in ((keys, n_items, "item"), (values, n_classes, "class")):
        if not np.issubdtype(a.dtype, np.integer):
            raise InvalidInput("gold", f"{what} ids must be integers, got {a.dtype}")
        bad = np.flatnonzero((a < 0) | (a >= bound))
        if bad.size:
            raise InvalidInput("gold", f"{what} id {a[bad[0]]} is outside [0, {bound})")
    return keys.astype(np.int64), values.astype(np.int64)


def _vote_shares(i, y, n_items, n_classes) -> np.ndarray:
    votes = np.bincount(i * n_classes + y, minlength=n_items * n_classes)
    votes = votes.reshape(n_items, n_classes).astype(np.float64)  # [n_items, C]
    total = votes.sum(axis=1, keepdims=True)
    return np.divide(votes, total, out=votes, where=total > 0)


def _result(posterior, i, j, y, n_annotators, method, iterations) -> ConsensusResult:
    has_label = posterior.sum(axis=1) > 0
    labels = np.where(has_label, posterior.argmax(axis=1), -1)  # argmax: ties go to lowest class
    n_given = np.bincount(j, minlength=n_annotators)
    mass = np.bincount(j, weights=posterior[i, y], minlength=n_annotators)
    accuracy = np.divide(mass, n_given, out=np.full(n_annotators, np.nan), where=n_given > 0)
    return ConsensusResult(labels, posterior.max(axis=1), posterior, accuracy, method, iterations)


def majority_vote(items, annotators, labels, n_items: int, n_annotators: int,
                  n_classes: int) -> ConsensusResult:
    """Plurality label per item; ties go to the lowest class id.

    ``annotator_accuracy`` is each annotator's mean vote share for the labels they gave (their
    own vote included, so it is optimistic).

    Parameters
    ----------
    items, annotators, labels : int arrays [a]
    n_items, n_annotators, n_classes : int >= 1
    """
    i, j, y, n_items, n_annotators, n_classes = _annotations(
        items, annotators, labels, n_items, n_annotators, n_classes)
    shares = _vote_shares(i, y, n_items, n_classes)
    return _result(shares, i, j, y, n_annotators, "majority_vote", 0)


def dawid_skene(items, annotators, labels, n_items: int, n_annotators: int, n_classes: int,
                gold: Mapping[int, int] | None = None, model: str = "one_coin",
                max_iter: int = 100, tol: float = 1e-6, smoothing: float = 0.1) -> ConsensusResult:
    """Labels and annotator quality by EM on the Dawid-Skene model [Dawid & Skene 1979].

    EM starts from the majority-vote shares. Each M-step fits a class prior and, per annotator,
    either a full confusion matrix ``P(label | true class)`` (``model="confusion"``, smoothed
    with ``smoothing`` pseudo-counts per cell) or one accuracy ``q`` with errors spread evenly
    over the other ``C - 1`` classes (``model="one_coin"``, a Beta(1 + smoothing, 1 + smoothing)
    MAP estimate; the right choice with many classes and few labels per annotator). Each E-step
    computes the class posterior per item. Gold items are clamped to their class in every
    E-step, which anchors the annotator estimates. Stops when no posterior moves more than
    ``tol``, or after ``max_iter`` iterations.

    Parameters
    ----------
    items, annotators, labels : int arrays [a]
    n_items, n_annotators, n_classes : int >= 1
    gold : mapping item id -> known class, optional
    model : "one_coin" | "confusion"
    max_iter : int >= 1
    tol : float > 0
    smoothing : float > 0
    """
    i, j, y, n_items, n_annotators, n_classes = _annotations(
        items, annotators, labels, n_items, n_annotators, n_classes)
    gold_items, gold_labels = _gold(gold, n_items, n_classes)
    if model not in DAWID_SKENE_MODELS:
        raise InvalidInput("model", f"unknown model {model!r}; expected one_coin or confusion")
    max_iter = _count("max_iter", max_iter)
    for name, value in (("tol", tol), ("smoothing", smoothing)):
        if not isinstance(value, Real) or not (np.isfinite(value) and value > 0):
            raise InvalidInput(name, f"must be a finite number > 0, got {value!r}")

    a, c = i.size, n_classes
    item_of = csr_array((np.ones(a), (i, np.arange(a))), shape=(n_items, a))  # [n_items, a]
    annotator_label_of = csr_array((np.ones(a), (j * c + y, np.arange(a))),
                                   shape=(n_annotators * c, a))  # [J * C, a]
    n_given = np.bincount(j, minlength=n_annotators)

    def clamp(p):
        p[gold_items] = 0.0
        p[gold_items, gold_labels] = 1.0
        return p

    posterior = clamp(_vote_shares(i, y, n_items, c))  # [n_items, C]
    in_scope = posterior.sum(axis=1) > 0  # annotated or gold
    for iteration in range(1, max_iter + 1):
        # M-step: class prior and log P(given label | true class k) per annotation, [a, C].
        prior = posterior[in_scope].sum(axis=0) + smoothing
        if model == "confusion":
            counts = (annotator_label_of @ posterior[i]).reshape(n_annotators, c, c)  # [J, l, k]
            confusion = counts.transpose(0, 2, 1) + smoothing  # [J, k, l]
            log_confusion = np.log(confusion / confusion.sum(axis=2, keepdims=True))
            log_given = log_confusion[j, :, y]
        else:
            hits = np.bincount(j, weights=posterior[i, y], minlength=n_annotators)
            q = (hits + smoothing) / (n_given + 2 * smoothing)  # [J]
            log_given = np.repeat(np.log((1 - q[j]) / max(c - 1, 1))[:, None], c, axis=1)
            log_given[np.arange(a), y] = np.log(q[j])
        # E-step: log prior + sum of the item's annotation log-likelihoods, normalised per item.
        log_post = np.log(prior / prior.sum()) + item_of @ log_given
        updated = np.exp(log_post - logsumexp(log_post, axis=1, keepdims=True))
        updated[~in_scope] = 0.0
        updated = clamp(updated)
        moved = np.abs(updated - posterior).max(initial=0.0)
        posterior = updated
        if moved < tol:
            break
    return _result(posterior, i, j, y, n_annotators, f"dawid_skene_{model}", iteration)


def annotator_accuracy_on_gold(items, annotators, labels, gold: Mapping[int, int], n_items: int,
                               n_annotators: int, n_classes: int) -> np.ndarray:
    """Fraction of each annotator's gold-item labels that match gold, float64 ``[n_annotators]``.

    NaN for annotators who labelled no gold item.
    """
    i, j, y, n_items, n_annotators, n_classes = _annotations(
        items, annotators, labels, n_items, n_annotators, n_classes)
    gold_items, gold_labels = _gold(gold, n_items, n_classes)
    gold_of = np.full(n_items, -1)
    gold_of[gold_items] = gold_labels
    on_gold = gold_of[i] >= 0
    agrees = y[on_gold] == gold_of[i[on_gold]]
    hits = np.bincount(j[on_gold], weights=agrees, minlength=n_annotators)
    n_gold = np.bincount(j[on_gold], minlength=n_annotators)
    return np.divide(hits, n_gold, out=np.full(n_annotators, np.nan), where=n_gold > 0)


@dataclass(frozen=True, eq=False)
class OneCoinFit:
    """What a one-coin Dawid-Skene fit learned, kept to aggregate new items without refitting:
    the class prior ``[C]`` and each annotator's accuracy, shrunk towards the fit's median by
    ``PSEUDO_ANSWERS`` (an annotator seen on one answer is not trusted as if measured on hundreds;
    one the fit has not seen gets the median, ``default_accuracy``)."""

    PSEUDO_ANSWERS = 10

    prior: np.ndarray
    accuracy: Mapping[str, float]
    default_accuracy: float
    method: str
    answers: int  # annotations the fit saw
    # the model's accuracy as a reference annotator, per (task kind, model version): its label on the
    # tasks of that kind, read by the fit beside people's answers (``LabelingService._answers``)
    references: Mapping[tuple[str, str | None], float] = field(default_factory=dict)

    @staticmethod
    def provisional(n_classes: int) -> "OneCoinFit":
        """No fit yet: a uniform prior and one accuracy for all, which aggregates as a majority vote."""
        return OneCoinFit(np.full(n_classes, 1.0 / n_classes), {}, 0.8, "majority_vote", 0)

    @staticmethod
    def of(result: ConsensusResult, names: list[str], given: np.ndarray, smoothing: float = 0.1,
           references: Sequence[tuple[str, str | None]] = ()) -> "OneCoinFit":
        """From a fit over annotations in which annotator ``k`` (``names[k]``) gave ``given[k]``, and
        annotator ``len(names) + r`` is the model on the tasks of ``references[r]`` (kind, version)."""
        labeled = result.posterior[result.posterior.sum(axis=1) > 0]
        prior = labeled.sum(axis=0) + smoothing
        people = result.annotator_accuracy[: len(names)]
        measured = np.isfinite(people)
        default = float(np.median(people[measured])) if measured.any() else 0.8
        m = OneCoinFit.PSEUDO_ANSWERS
        known = {name: float((n * q + m * default) / (n + m))
                 for name, q, n in zip(names, people, given) if np.isfinite(q)}
        model = {key: float(q) for key, q in zip(references, result.annotator_accuracy[len(names):]) if np.isfinite(q)}
        return OneCoinFit(prior / prior.sum(), known, default, result.method, int(np.sum(given)), model)

    def reference(self, kind: str, version: str | None) -> float:
        """The model's accuracy on tasks of ``kind`` made under ``version``; a version the fit has not
        seen on that kind gets the mean of the versions it has, and a kind it has not seen the
        people's ``default_accuracy``."""
        if (kind, version) in self.references:
            return self.references[kind, version]
        same = [q for (k, _), q in self.references.items() if k == kind]
        return float(np.mean(same)) if same else self.default_accuracy

    def widened(self, n_classes: int) -> "OneCoinFit":
        """The fit for a schema grown to ``n_classes`` (classes are only appended): each new class
        gets the prior share of the rarest known one until the next fit measures it."""
        extra = n_classes - self.prior.size
        if extra <= 0:
            return self
        prior = np.concatenate([self.prior, np.full(extra, self.prior.min())])
        return replace(self, prior=prior / prior.sum())

    def posterior(self, annotators: list[str], labels: list[int],
                  model: tuple[float, int] | None = None) -> np.ndarray:
        """P(true class | these answers) ``[C]``: each answer is right with its annotator's accuracy,
        else any other class alike (the one-coin model's E-step for one item); ``model``: the model's
        label as one more answer, (its accuracy, class id)."""
        c = self.prior.size
        q = [self.accuracy.get(a, self.default_accuracy) for a in annotators]
        labels = list(labels)
        if model is not None:
            q, labels = q + [model[0]], labels + [model[1]]
        q = np.clip(np.array(q, float), 1e-3, 1 - 1e-3)
        log_post = np.log(self.prior)
        np.add.at(log_post, np.asarray(labels, np.int64), np.log(q) - np.log((1 - q) / max(c - 1, 1)))
        return np.exp(log_post - logsumexp(log_post))

    def answers_wanted(self, annotators: list[str], labels: list[int], cap: int,
                       model: tuple[float, int] | None = None, level: float = 0.95, check: bool = False) -> int:
        """How many answers an item needs (adaptive overlap), given the answers so far (their
        ``annotators`` and class ids ``labels``) and ``model``, the model's label on the task as
        (its accuracy on such tasks, class id), if the task has one.

        One more is asked only where the answers disagree among themselves or with the model's label,
        and then only where this fit leaves the likeliest class below ``level``: of people's answers
        alone where they disagree (the model's label never settles a disagreement between people: on a
        check, people's label must stand on its own), of theirs and the model's label where only that
        label disagrees. So an answer against a model right 97% of the time on checks, from a person
        right 90% of the time, asks a second person (the answer is right with probability 0.22); the
        same answer against a model right 60% of the time on uncertain picks, from a person right 99%
        of the time, settles the item (0.98). Two agreeing answers of people right 90% of the time
        settle it against a model right 97% of the time among 77 classes (0.995), not among three
        (0.83). At least one answer, never more than ``cap``.

        ``check``: the task is a check or a probe, drawn where the model is (nearly) sure of this item,
        so a lone answer against it always asks a second person, whatever the model's accuracy on such
        tasks overall (a slip there would count as the model's error and hold its threshold back)."""
        cap = _count("cap", cap)
        n = len(labels)
        if n >= cap:
            return n
        if not n:
            return 1
        if len(set(labels)) > 1:
            return n + 1 if self.posterior(annotators, labels).max() < level else n
        if model is not None and model[1] != labels[0]:
            if (check and n == 1) or self.posterior(annotators, labels, model).max() < level:
                return n + 1
        return n
