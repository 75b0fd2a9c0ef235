"""Stream selection with known probabilities (core/select/sampling.py): the budget is exact over any
stream, the recorded probabilities are the chances actually used, and the uniforms are stable per look."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from winnow.core.domain.errors import InvalidInput
from winnow.core.select.sampling import StreamSampler, draw_with_extra, spread, uniforms
from winnow.core.select.strategies import BudgetController


@settings(max_examples=60, deadline=None)
@given(labels=st.integers(0, 100), per_items=st.integers(1, 100), seed=st.integers(0, 2**31 - 1),
       batches=st.lists(st.integers(1, 300), min_size=1, max_size=8))
def test_the_budget_is_exact_over_any_stream(labels, per_items, seed, batches) -> None:
    """After M arrivals at most floor(M * labels / per_items) items were drawn, whatever the
    probabilities and the later looks; every drawn item was funded and had a probability > 0."""
    labels = min(labels, per_items)
    rng = np.random.default_rng(seed)
    sampler = StreamSampler(BudgetController(labels, per_items))
    seen = drawn = 0
    for n in batches:
        d = sampler.draw(rng.random(n), rng.random(n))
        seen += n
        drawn += int(d.drawn.sum())
        assert (d.probability[d.drawn] > 0).all() and not (d.drawn & ~d.funded).any()
        assert (d.probability[~d.funded] == 0).all()
        later = sampler.draw(np.full(5, 0.9), rng.random(5), arriving=False)  # a later look
        drawn += int(later.drawn.sum())
        assert drawn <= seen * labels // per_items


def test_the_recorded_probability_is_the_chance_used() -> None:
    """Over many funded items with probability 0.1, about a tenth are drawn, and exactly the
    items whose uniform fell below their probability."""
    sampler = StreamSampler(BudgetController(100, 100))
    u = np.random.default_rng(0).random(20000)
    d = sampler.draw(np.full(20000, 0.1), u)
    assert d.funded.all() and abs(d.drawn.mean() - 0.1) < 0.01
    assert np.array_equal(d.drawn, u < 0.1)


def test_unfunded_items_are_not_drawn() -> None:
    sampler = StreamSampler(BudgetController(1, 10))  # one label per ten items
    d = sampler.draw(np.ones(25), np.zeros(25))
    assert d.drawn.sum() == 2 and np.flatnonzero(d.drawn).tolist() == [9, 19]
    assert d.funded.sum() == 2


def test_a_look_that_keeps_credit_draws_only_beyond_it() -> None:
    """``keep``: the credit a later look needs (the close's reserve) funds none of this look's items."""
    budget = BudgetController(1, 1)
    budget.observe(5)
    sampler = StreamSampler(budget)
    d = sampler.draw(np.ones(4), np.zeros(4), arriving=False, keep=3)
    assert d.drawn.tolist() == [True, True, False, False] and d.funded.tolist() == d.drawn.tolist()
    assert budget.whole == 3 and not sampler.draw(np.ones(2), np.zeros(2), arriving=False, keep=3).funded.any()


def test_uniforms_are_stable_per_look_and_differ_across_looks() -> None:
    a = uniforms(0, "p", ["i1", "i2", "i3"], "arrive")
    assert np.array_equal(a, uniforms(0, "p", ["i1", "i2", "i3"], "arrive"))
    assert not np.array_equal(a, uniforms(0, "p", ["i1", "i2", "i3"], "swap:v2"))
    assert not np.array_equal(a, uniforms(1, "p", ["i1", "i2", "i3"], "arrive"))
    many = uniforms(0, "p", [f"i{k}" for k in range(20000)], "arrive")
    assert ((0 <= many) & (many < 1)).all() and abs(many.mean() - 0.5) < 0.01


def test_spread_spends_the_total_in_proportion() -> None:
    p = spread(np.array([1.0, 2.0, 4.0, 0.0]), 2.0)
    assert abs(p.sum() - 2.0) < 1e-6 and p[3] == 0 and p[1] == pytest.approx(2 * p[0], rel=1e-6)
    assert spread(np.ones(3), 5.0).tolist() == [1.0, 1.0, 1.0]
    assert spread(np.ones(3), 0.0).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("probability", [np.array([0.5, 1.5]), np.array([0.5, np.nan]), np.array([0.5])])
def test_bad_probabilities_are_refused(probability) -> None:
    with pytest.raises(InvalidInput, match="probability"):
        StreamSampler(BudgetController(1, 10)).draw(probability, np.ones(2))


@settings(max_examples=40, deadline=None)
@given(labels=st.integers(0, 50), extra=st.integers(0, 50), seed=st.integers(0, 2**31 - 1),
       batches=st.lists(st.integers(1, 300), min_size=1, max_size=6))
def test_an_extra_draw_keeps_each_budget_exact(labels, extra, seed, batches) -> None:
    """The base budget pays for the base draws and the extra budget for the items only its draw sent:
    after M arrivals each has drawn at most its floor(M * rate); the recorded probability is never
    below either funded chance."""
    rng = np.random.default_rng(seed)
    base, more = StreamSampler(BudgetController(labels, 100)), StreamSampler(BudgetController(extra, 100))
    seen = spent_base = spent_extra = 0
    for n in batches:
        p, q, u, v = rng.random(n), rng.random(n), rng.random(n), rng.random(n)
        d = draw_with_extra(base, more, p, q, u, v)
        seen += n
        by_base = d.drawn & (u < p) & d.funded
        spent_base += int(by_base.sum())
        spent_extra += int((d.drawn & ~by_base).sum())
        assert spent_base <= seen * labels // 100 and spent_extra <= seen * extra // 100
        assert (d.probability[d.drawn] > 0).all() and ((d.probability >= 0) & (d.probability <= 1)).all()


def test_an_extra_draw_records_the_chance_it_used() -> None:
    """Funded on both budgets, an item goes to a person with probability 1 - (1 - p)(1 - q), recorded."""
    base, more = StreamSampler(BudgetController(100, 100)), StreamSampler(BudgetController(100, 100))
    rng = np.random.default_rng(1)
    n = 40_000
    p, q = np.where(np.arange(n) % 2, 0.1, 0.3), np.where(np.arange(n) % 3, 0.2, 0.05)
    d = draw_with_extra(base, more, p, q, rng.random(n), rng.random(n))
    expected = 1 - (1 - p) * (1 - q)
    np.testing.assert_allclose(d.probability, expected)
    for value in np.unique(expected):
        rows = expected == value
        assert abs(d.drawn[rows].mean() - value) < 4 * np.sqrt(value * (1 - value) / rows.sum())
    with pytest.raises(InvalidInput) as err:
        draw_with_extra(base, more, p[:3], np.array([0.5, 2.0, 0.1]), np.zeros(3), np.zeros(3))
    assert err.value.field == "extra_probability"
