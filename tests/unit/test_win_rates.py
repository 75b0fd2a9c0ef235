"""Model evaluation in a served preference project (``winnow.core.loop.evaluation``): the win-rate
interval of a model pair covers the true win rate at its stated rate over many seeds, with
predictions and draw probabilities that depend on earlier answers, as in a stream."""

from __future__ import annotations

import numpy as np
from winnow.core.loop.evaluation import pair_win_rates


def _stream(seed: int, n: int = 300, flip_share: float = 0.5):
    """A stream of comparisons between models x and y whose outcomes are fixed in advance; each
    prediction and draw probability depends only on the answers drawn before it (a sequential design)."""
    rng = np.random.default_rng(seed)
    skill = rng.normal(0.3, 0.5, n)  # how much better x's response is, per comparison
    y_x = (rng.random(n) < 1 / (1 + np.exp(-skill))).astype(float)  # the fixed answers, x's side
    y_x[rng.random(n) < 0.05] = 0.5  # a few ties
    flip = rng.random(n) < flip_share  # y's response shown as A
    model_a = ["y" if f else "x" for f in flip]
    model_b = ["x" if f else "y" for f in flip]
    outcome_a = np.where(flip, 1 - y_x, y_x)
    probability, drawn, expected = np.zeros(n), np.zeros(n, bool), np.zeros(n)
    seen_sum, seen_n = 0.0, 0
    for i in range(n):
        # a "model" that learned from the answers drawn so far: their mean, sharpened by a noisy feature
        base = (seen_sum + 1) / (seen_n + 2)
        f_x = float(np.clip(base + 0.3 * np.tanh(skill[i] + rng.normal(0, 1)), 0.01, 0.99))
        expected[i] = 1 - f_x if flip[i] else f_x
        probability[i] = 0.05 + 0.3 * np.sqrt(f_x * (1 - f_x))  # asks more where the model is unsure
        drawn[i] = rng.random() < probability[i]
        if drawn[i]:
            seen_sum, seen_n = seen_sum + y_x[i], seen_n + 1
    answers = np.where(drawn, outcome_a, np.nan)
    return model_a, model_b, probability, drawn, expected, answers, float(y_x.mean())


def test_the_win_rate_interval_covers_the_true_win_rate_at_its_stated_rate_over_many_seeds() -> None:
    hits, widths = [], []
    for seed in range(400):
        model_a, model_b, probability, drawn, expected, answers, truth = _stream(seed)
        [rate] = pair_win_rates(model_a, model_b, probability, drawn, expected, answers, 0.9)
        assert (rate.model_a, rate.model_b, rate.items, rate.method) == ("x", "y", 300, "active_inference")
        hits.append(rate.lower <= truth <= rate.upper)
        widths.append(rate.upper - rate.lower)
    assert 0.87 <= np.mean(hits) <= 0.95  # 90% stated; 400 seeds give +- 0.03
    assert np.mean(widths) < 0.5


def test_the_order_responses_were_shown_in_does_not_change_a_win_rate() -> None:
    model_a, model_b, probability, drawn, expected, answers, _ = _stream(1, flip_share=0.0)
    [plain] = pair_win_rates(model_a, model_b, probability, drawn, expected, answers)
    # the same comparisons with every pair shown the other way round: A and B swap, so do their outcomes
    [swapped] = pair_win_rates(model_b, model_a, probability, drawn, 1 - expected, 1 - answers)
    assert (swapped.model_a, swapped.model_b) == ("x", "y")
    np.testing.assert_allclose([swapped.estimate, swapped.lower, swapped.upper],
                               [plain.estimate, plain.lower, plain.upper])


def test_unanswered_and_unreachable_comparisons_are_left_out_and_counted() -> None:
    model_a, model_b, probability, drawn, expected, answers, _ = _stream(2)
    first_drawn = int(np.flatnonzero(drawn)[0])
    answers[first_drawn] = np.nan  # drawn, not answered yet
    probability[:10] = np.where(drawn[:10], probability[:10], 0.0)  # no credit at arrival
    unreachable = int((probability == 0).sum())
    [rate] = pair_win_rates(model_a, model_b, probability, drawn, expected, answers)
    assert rate.pending == 1 and rate.unreachable == unreachable
    assert rate.items == 300 - 1 - unreachable and rate.comparisons == int(drawn.sum()) - 1
    # comparisons of one model with itself, or with a response of no known model, evaluate nothing
    assert pair_win_rates(["x", ""], ["x", "y"], np.full(2, 0.5), np.ones(2, bool), np.full(2, 0.5),
                          np.array([1.0, 0.0])) == []


def test_a_win_rate_crosses_the_api_as_its_message() -> None:
    from winnow.services.api.convert import from_message, to_message
    from winnow.core.loop.evaluation import ModelWinRate
    from winnow.v1 import projects_pb2

    [rate] = pair_win_rates(*_stream(3)[:6])
    assert isinstance(rate, ModelWinRate)
    assert from_message(to_message(rate, projects_pb2.ModelWinRate), ModelWinRate) == rate
