"""Choosing the auto-accept threshold that meets an operator's precision target, from held-out
human labels alone (no oracle)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from numbers import Real

import numpy as np
from scipy.stats import beta
from winnow.core.domain.errors import InvalidInput


@dataclass(frozen=True)
class ThresholdChoice:
    """An auto-accept threshold and the held-out evidence behind it.

    Attributes
    ----------
    threshold : float
        Accept model labels with confidence >= threshold; +inf accepts nothing.
    target_precision, confidence_level : float
        What the operator asked for.
    estimated_precision : float
        Held-out precision of the accepted items; NaN when nothing is accepted.
    precision_lower_bound : float
        One-sided Clopper-Pearson lower bound on that precision at ``confidence_level``; NaN
        when nothing is accepted.
    support : int
        Held-out items with confidence >= threshold.
    coverage : float
        ``support / n_heldout``, the expected fraction of traffic auto-accepted.
    n_heldout : int
        Held-out items the choice was made on.
    candidate : float
        The lowest threshold whose *estimated* precision meets the target (no bound; +inf when none):
        where the selector probes with people before a threshold is certified, so that the evidence
        lands where it is needed.
    reachable : bool
        False when the held-out evidence rules the target out for this model: the sample holds at
        least twice the items an error-free certificate of the target takes (``rule_out_items``) and
        every prefix of at least ``min_support`` of them has its one-sided Clopper-Pearson *upper*
        bound below the target (no region of its confidence is plausibly that precise). The selector
        stops probing for a first threshold while it is False: more checks of a model that cannot
        meet the target buy no certificate, and the labels go to picks instead.
    to_certify : float
        How many more checks above ``candidate``, all of them right, would certify it (its prefix's
        one-sided Clopper-Pearson lower bound reaching the target); +inf without a candidate, or beyond
        3,000. The selector probes harder where a certificate is this near (``near_certify_probability``).
    """

    threshold: float
    target_precision: float
    confidence_level: float
    estimated_precision: float
    precision_lower_bound: float
    support: int
    coverage: float
    n_heldout: int
    candidate: float = float("inf")
    reachable: bool = True
    to_certify: float = float("inf")


def _probability(name: str, value: float) -> float:
    if not isinstance(value, Real) or not 0.0 < value < 1.0:  # also rejects NaN
        raise InvalidInput(name, f"must be strictly between 0 and 1, got {value!r}")
    return float(value)


def _validate(confidence, correct, min_support) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(confidence, dtype=np.float64)
    if c.ndim != 1 or not np.isfinite(c).all():
        raise InvalidInput(
            "confidence", f"expected a 1-D array of finite floats, got shape {list(c.shape)}"
        )
    ok = np.asarray(correct)
    if ok.shape != c.shape:
        raise InvalidInput(
            "correct", f"has shape {list(ok.shape)} but confidence has {list(c.shape)}"
        )
    if ok.dtype != np.bool_:
        if ok.size and not (np.issubdtype(ok.dtype, np.integer) and np.isin(ok, (0, 1)).all()):
            raise InvalidInput("correct", f"expected booleans (or 0/1 integers), got {ok.dtype}")
        ok = ok.astype(np.bool_)
    if (isinstance(min_support, bool) or not isinstance(min_support, (int, np.integer))
            or min_support < 1):
        raise InvalidInput("min_support", f"must be an integer >= 1, got {min_support!r}")
    return c, ok


def _weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    """The checks' weights [n] (each once when None); InvalidInput("weights") unless finite and > 0."""
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (n,) or not np.isfinite(w).all() or (w <= 0).any():
        raise InvalidInput("weights", f"expected {n} finite weights > 0, got shape {list(w.shape)}")
    return w


def _clopper_pearson(successes: np.ndarray, trials: np.ndarray, confidence_level: float):
    """One-sided exact binomial (lower, upper) bounds, each at ``confidence_level``
    [Clopper & Pearson 1934]; lower is 0 with no successes, upper is 1 with no failures."""
    failures = trials - successes
    lower = beta.ppf(1.0 - confidence_level, np.maximum(successes, 1), failures + 1)
    upper = beta.ppf(confidence_level, successes + 1, np.maximum(failures, 1))
    return np.where(successes > 0, lower, 0.0), np.where(failures > 0, upper, 1.0)


def rule_out_items(target_precision: float, confidence_level: float) -> int:
    """How many held-out items a sample needs before it may rule a target out (``reachable``): twice
    the ``n`` whose ``n`` of ``n`` right reaches the target's lower bound (``target ** n <= 1 -
    confidence``: 148 for 0.98 at 95%, so 296). A smaller sample is what the first models are judged on
    while they still improve fast; ruling them out then stalls the evidence their successors need."""
    return 2 * int(np.ceil(np.log(1.0 - confidence_level) / np.log(target_precision)))


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, target_precision: float = 0.98,
                     confidence_level: float = 0.95, min_support: int = 30,
                     weights: np.ndarray | None = None) -> ThresholdChoice:
    """Lowest confidence threshold whose accepted held-out items provably meet the target.

    A threshold ``t`` accepts every item with confidence >= t, so only distinct confidence values
    are candidates (ties are accepted or refused together), and only those accepting at least
    ``min_support`` held-out items. Each candidate's accepted prefix gets one-sided
    Clopper-Pearson bounds on its precision at ``confidence_level`` [Clopper & Pearson 1934].

    The lowest threshold whose lower bound is >= the target is chosen: the largest accepted
    prefix with the evidence for it. The guarantee is on the accepted set as a whole, which is what
    the operator's precision target is about. Thresholds between it and the top may dip below the
    bound on a few unlucky errors; that does not end the search (stopping at the first dip, or at
    the first small prefix whose upper bound is below the target, made the choice needlessly
    conservative: 0% to 14% instead of 66% cover on Banking77 out-of-fold predictions).

    Candidates above the chosen one need not pass their lower bound: a small prefix cannot reach a
    high target even when every item is right (n of n correct bounds at
    ``(1 - confidence_level) ** (1 / n)``: 0.905 for 30 of 30 at 95%). The choice never
    decreases as ``target_precision`` rises.

    Parameters
    ----------
    confidence : float array [n]
        Model confidence for held-out human-labelled items (out-of-fold predictions).
    correct : bool array [n]
        Whether the model's label matched the human label.
    target_precision, confidence_level : float in (0, 1)
    min_support : int >= 1
        Fewest accepted held-out items a threshold needs to be considered (effective items when
        weighted).
    weights : float array [n], optional
        Inverse-probability weights (``1 / probability`` of each item's draw): the items then stand
        for the stream they were drawn from. Each prefix's precision is the weighted share
        [Hajek 1971] and its bound uses Kish's effective sample size ``(sum w)^2 / sum w^2`` as the
        trial count. This is a decision rule: the guarantee on the labels it leads to is the
        anytime-valid audit bound (:mod:`winnow.core.ml.certify`), not this bound.

    Returns
    -------
    ThresholdChoice; threshold +inf (accept nothing) when no candidate qualifies.
    """
    target_precision = _probability("target_precision", target_precision)
    confidence_level = _probability("confidence_level", confidence_level)
    c, ok = _validate(confidence, correct, min_support)
    n = c.size
    w = _weights(weights, n)
    nothing = ThresholdChoice(np.inf, target_precision, confidence_level, np.nan, np.nan, 0, 0.0, n)
    if n < min_support:
        return nothing

    order = np.argsort(-c, kind="stable")
    c_sorted = c[order]
    w_sorted = w[order]
    mass = np.cumsum(w_sorted)  # [n] weight among the top k
    support = mass**2 / np.cumsum(w_sorted**2)  # effective items among the top k (k when unweighted)
    share = np.cumsum(w_sorted * ok[order]) / mass
    hits = share * support  # [n] effective correct among the top k
    candidate = np.append(c_sorted[1:] < c_sorted[:-1], True) & (support >= min_support - 1e-9)
    k, s, thresholds = support[candidate], hits[candidate], c_sorted[candidate]
    lower, upper = _clopper_pearson(s, k, confidence_level)
    covered = (mass / mass[-1])[candidate]
    reachable = bool(n < rule_out_items(target_precision, confidence_level) or not k.size
                     or (upper >= target_precision).any())

    estimated = np.flatnonzero(s / k >= target_precision)
    candidate = float(thresholds[estimated[-1]]) if estimated.size else float("inf")
    to_certify = float("inf")
    if estimated.size:  # m more right checks: the bound of s + m right of k + m
        more = np.arange(3001)
        kc, sc = k[estimated[-1]], s[estimated[-1]]
        enough = np.flatnonzero(_clopper_pearson(sc + more, kc + more, confidence_level)[0] >= target_precision)
        to_certify = float(more[enough[0]]) if enough.size else float("inf")
    passing = np.flatnonzero(lower >= target_precision)
    if not passing.size:
        return dataclasses.replace(nothing, candidate=candidate, reachable=reachable, to_certify=to_certify)
    end = int(passing[-1])
    return ThresholdChoice(
        threshold=float(thresholds[end]),
        target_precision=target_precision,
        confidence_level=confidence_level,
        estimated_precision=float(s[end] / k[end]),
        precision_lower_bound=float(lower[end]),
        support=int(round(k[end])),
        coverage=float(covered[end]),
        n_heldout=n,
        candidate=candidate,
        reachable=reachable,
        to_certify=to_certify,
    )


def threshold_for_mix(confidence: np.ndarray, correct: np.ndarray, population: np.ndarray, floor: float,
                      target_precision: float = 0.98, confidence_level: float = 0.95, min_support: int = 30,
                      weights: np.ndarray | None = None, max_bins: int = 10) -> ThresholdChoice:
    """The lowest threshold at or above ``floor`` whose accepted *population* items meet the target, judged on
    the checks reweighted to the population's mix of confidence.

    A threshold chosen on checks drawn at arrival (:func:`choose_threshold`) certifies the precision of the
    arrivals it accepts, most of them far above it. Another population labeled with it, such as a backlog of
    items earlier models were unsure of, may crowd just above it, where labels are least often right: on
    Banking77 the backlog items a new version lifted over its threshold measured 0.969 against 0.989 for the
    arrivals it accepted. So the checks above ``floor`` are cut into up to ``max_bins`` bins of equal count
    (at least ``min_support`` checks each) and each check is weighed by its bin's share of the population
    above ``floor`` over its share of the checks (times ``weights``, the checks' own weights, when given):
    the weighted precision above any threshold then estimates the population's there [importance weighting
    by a binned density ratio; Shimodaira 2000], and :func:`choose_threshold` bounds it on Kish's effective
    sample. Checks in bins the population leaves empty drop out.

    Parameters
    ----------
    confidence, correct : [n]
        The checks the threshold was chosen on: out-of-fold confidence, and whether the model was right.
    population : float array [m]
        The confidence of the items to be labeled (only those at or above ``floor`` matter).
    floor : float
        The threshold certified on the checks as drawn; +inf: none, and none is returned.
    weights : float array [n], optional
        The checks' weights in :func:`choose_threshold` (each once when omitted).

    Returns
    -------
    ThresholdChoice on the reweighted checks (threshold +inf when none certifies the population); its
    threshold is ``floor`` when the population has no item at or above it (nothing to weigh).
    """
    target_precision = _probability("target_precision", target_precision)
    confidence_level = _probability("confidence_level", confidence_level)
    c, ok = _validate(confidence, correct, min_support)
    pop = np.asarray(population, dtype=np.float64)
    if pop.ndim != 1 or not np.isfinite(pop).all():
        raise InvalidInput("population", f"expected a 1-D array of finite floats, got shape {list(pop.shape)}")
    w = _weights(weights, c.size)
    if isinstance(max_bins, bool) or not isinstance(max_bins, (int, np.integer)) or max_bins < 1:
        raise InvalidInput("max_bins", f"must be an integer >= 1, got {max_bins!r}")
    if not isinstance(floor, Real) or np.isnan(floor):
        raise InvalidInput("floor", f"must be a number, got {floor!r}")
    nothing = ThresholdChoice(np.inf, target_precision, confidence_level, np.nan, np.nan, 0, 0.0, c.size)
    if not np.isfinite(floor):
        return nothing
    above = c >= floor
    pop = pop[pop >= floor]
    if not pop.size:
        return dataclasses.replace(nothing, threshold=float(floor))
    c, ok, w = c[above], ok[above], w[above]
    if c.size < min_support:
        return nothing
    bins = max(1, min(max_bins, c.size // min_support))
    edges = np.unique(np.quantile(c, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    check_bin, pop_bin = np.searchsorted(edges, c, side="right"), np.searchsorted(edges, pop, side="right")
    check_share = np.bincount(check_bin, w, len(edges) + 1) / w.sum()
    pop_share = np.bincount(pop_bin, minlength=len(edges) + 1) / pop.size
    ratio = pop_share[check_bin] / check_share[check_bin]
    keep = ratio > 0
    if keep.sum() < min_support:
        return nothing
    return choose_threshold(c[keep], ok[keep], target_precision, confidence_level, min_support, (w * ratio)[keep])
