"""The audit bound (core/ml/certify.py): known-answer streams with planted errors, coverage at the stated
rate over many seeds and at every look, and what it must refuse."""

from __future__ import annotations

import numpy as np
import pytest
from winnow.core.domain.errors import InvalidInput
from winnow.core.ml.certify import Trials, error_bound, hidden_errors_lower


def _stream(seed: int, n: int, error_rate: float, probability: np.ndarray | float):
    """A planted stream: errors [n] fixed first, then the draws [n] with the given probabilities."""
    rng = np.random.default_rng(seed)
    errors = rng.random(n) < error_rate
    pi = np.broadcast_to(np.asarray(probability, float), (n,)).copy()
    drawn = rng.random(n) < pi
    return errors, pi, drawn


def _misses(seeds: int, n: int, error_rate: float, probability, looks: int = 12, confidence: float = 0.9,
            lower: bool = False) -> float:
    """Share of seeds in which the true count of hidden errors left the bound at ANY of ``looks``
    looks (the anytime guarantee: at most 1 - confidence): above the upper bound, or with ``lower``
    below the lower bound."""
    missed = 0
    for seed in range(seeds):
        errors, pi, drawn = _stream(seed, n, error_rate, probability(seed) if callable(probability) else probability)
        observed = np.where(drawn, errors.astype(float), np.nan)
        for t in np.linspace(n / looks, n, looks).astype(int):
            trials = Trials.of(pi[:t], drawn[:t], observed[:t])
            hidden = (errors[:t] & ~drawn[:t]).sum()
            if (hidden < hidden_errors_lower(trials, confidence) if lower
                    else hidden > error_bound(trials, confidence).hidden_errors_upper):
                missed += 1
                break
    return missed / seeds


@pytest.mark.parametrize("error_rate, probability", [
    (0.02, 0.1),  # a low planted error rate, the default audit probability
    (0.2, 0.3),  # many errors
    (0.01, lambda seed: np.random.default_rng(10_000 + seed).choice([0.05, 0.5], 1500)),  # mixed chances
])
def test_the_bound_covers_the_planted_errors_at_every_look_at_the_stated_rate(error_rate, probability) -> None:
    # 400 seeds x 12 looks: a bound that failed 10% of the time at each look would miss in far more
    # than 10% of seeds; the anytime bound must stay under 10% (with room for sampling error: 400
    # Bernoulli(0.1) draws exceed 0.14 with probability < 0.5%)
    assert _misses(400, 1500, error_rate, probability) <= 0.14


@pytest.mark.parametrize("error_rate, probability", [
    (0.02, 0.1),
    (0.3, 0.1),  # a threshold far below its target: where the lower bound is meant to bite
    (0.2, lambda seed: np.random.default_rng(20_000 + seed).choice([0.05, 0.3, 1.0], 1500)),
])
def test_the_lower_bound_stays_under_the_planted_errors_at_every_look_at_the_stated_rate(error_rate,
                                                                                       probability) -> None:
    # the same budget as the upper bound's: 400 seeds x 12 looks, at most 0.14 of seeds ever above
    assert _misses(400, 1500, error_rate, probability, lower=True) <= 0.14


def test_the_lower_bound_refutes_a_family_far_below_its_target() -> None:
    """3,000 labels at a planted 30% error, checked with probability 0.1 (the default audit rate): the
    lower bound finds most of the hidden errors, so a 0.8 precision target is refuted; with 1% errors
    it finds almost none (a 0.98 target stands)."""
    for seed in range(5):
        for rate, target, refuted in ((0.3, 0.8, True), (0.01, 0.98, False)):
            errors, pi, drawn = _stream(seed, 3000, rate, 0.1)
            trials = Trials.of(pi, drawn, np.where(drawn, errors.astype(float), np.nan))
            lower = hidden_errors_lower(trials, 0.95)
            hidden = int((errors & ~drawn).sum())
            assert lower <= hidden
            assert (1 - lower / (~drawn).sum() < target) == refuted


def test_the_lower_bound_counts_pending_answers_as_agreements_and_unchecked_labels_as_possible_errors() -> None:
    pi = np.full(400, 0.2)
    drawn = np.arange(400) < 80
    wrong = np.where(drawn, 0.0, np.nan)
    wrong[:20] = 1.0  # 20 of 80 checked were wrong: many hidden errors must exist
    assert hidden_errors_lower(Trials.of(pi, drawn, wrong)) > 10
    assert hidden_errors_lower(Trials.of(pi, drawn, np.where(drawn, 0.0, np.nan))) == 0  # none seen
    pending = wrong.copy()
    pending[:20] = np.nan  # those answers not in yet: no evidence
    assert hidden_errors_lower(Trials.of(pi, drawn, pending)) == 0
    # errors seen beside labels nobody could check (probability 0): any of them may hide the errors,
    # so at least one hidden error is plausible but no more is proven
    zero = np.r_[pi, 0.0]
    assert hidden_errors_lower(Trials.of(zero, np.r_[drawn, False], np.r_[wrong, np.nan])) <= 1
    more = wrong.copy()
    more[20:40] = 1.0
    assert hidden_errors_lower(Trials.of(pi, drawn, more)) >= hidden_errors_lower(Trials.of(pi, drawn, wrong))
    with pytest.raises(InvalidInput, match="confidence"):
        hidden_errors_lower(Trials.of(pi, drawn, wrong), 1.0)


def test_the_bound_is_tight_enough_to_certify_what_it_should() -> None:
    """6,000 labels at 0.5% planted error, each checked with probability 0.2: the bound stays
    within a few times the truth and certifies a precision above 0.975 (not vacuous)."""
    for seed in range(5):
        errors, pi, drawn = _stream(seed, 6000, 0.005, 0.2)
        bound = error_bound(Trials.of(pi, drawn, np.where(drawn, errors.astype(float), np.nan)))
        hidden = int((errors & ~drawn).sum())
        assert hidden <= bound.hidden_errors_upper <= 5 * max(hidden, 10)
        assert bound.precision_lower > 0.975
        assert bound.labels == int((~drawn).sum()) and bound.drawn == int(drawn.sum())


def test_unchecked_labels_count_as_wrong_and_pending_answers_as_disagreements() -> None:
    # 5 labels nobody could check (probability 0): every one may be wrong
    assert error_bound(Trials.of(np.zeros(5), np.zeros(5, bool), np.full(5, np.nan))).hidden_errors_upper == 5
    # a pending answer weighs like a disagreement: the bound is no lower than with the answer "wrong"
    pi = np.full(200, 0.2)
    drawn = np.arange(200) < 40
    wrong = np.where(drawn, 0.0, np.nan)
    wrong[0] = 1.0
    pending = wrong.copy()
    pending[0] = np.nan
    assert (error_bound(Trials.of(pi, drawn, pending)).hidden_errors_upper
            == error_bound(Trials.of(pi, drawn, wrong)).hidden_errors_upper)
    assert error_bound(Trials.of(pi, drawn, pending)).pending == 1


def test_more_observed_errors_never_lower_the_bound() -> None:
    pi = np.full(500, 0.1)
    drawn = np.arange(500) % 10 == 0
    previous = -1
    for k in range(0, 10):
        observed = np.where(drawn, 0.0, np.nan)
        observed[np.flatnonzero(drawn)[:k]] = 1.0
        upper = error_bound(Trials.of(pi, drawn, observed)).hidden_errors_upper
        assert upper >= previous
        previous = upper


@pytest.mark.parametrize("args, field", [
    ((np.array([0.5, 1.5]), np.zeros(2, bool), np.full(2, np.nan)), "probability"),
    ((np.array([0.5, np.nan]), np.zeros(2, bool), np.full(2, np.nan)), "probability"),
    ((np.array([0.5]), np.zeros(2, bool), np.full(1, np.nan)), "drawn"),
    ((np.array([0.5]), np.zeros(1, bool), np.full(2, np.nan)), "error"),
    ((np.array([0.0]), np.ones(1, bool), np.zeros(1)), "drawn"),
    ((np.array([0.5]), np.ones(1, bool), np.array([0.5])), "error"),
])
def test_bad_trials_are_refused_naming_the_field(args, field) -> None:
    with pytest.raises(InvalidInput) as err:
        Trials.of(*args)
    assert err.value.field == field


def test_confidence_must_be_a_probability() -> None:
    trials = Trials.of(np.full(3, 0.5), np.zeros(3, bool), np.full(3, np.nan))
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(InvalidInput, match="confidence"):
            error_bound(trials, bad)
