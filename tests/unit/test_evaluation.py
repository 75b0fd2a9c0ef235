"""Win rates from comparisons (core/ml/evaluation.py): the interval keeps its stated coverage over many
seeds whether the reward model is good, useless or biased; a good model narrows it; asking where the
model is unsure narrows it more; bad input names its field."""

import numpy as np
import pytest
from winnow.core.domain.errors import InvalidInput
from winnow.core.ml.evaluation import evaluation_probabilities, win_rate

N = 1500


def population(seed: int, win: float = 0.62, quality: float = 0.8):
    """Answers ``y`` (ties included) and predictions ``f`` that lean towards the truth by ``quality``."""
    rng = np.random.default_rng(seed)
    y = (rng.random(N) < win).astype(float)
    y[rng.random(N) < 0.05] = 0.5
    f = np.clip(0.5 + quality * (y - 0.5) + rng.normal(0, 0.15, N), 0.01, 0.99)
    return y, f


def draw(seed: int, pi: np.ndarray) -> np.ndarray:
    return np.random.default_rng(seed).random(len(pi)) < pi


@pytest.mark.parametrize("model", ["good", "useless", "biased", "none"])
@pytest.mark.parametrize("design", ["uniform", "active"])
def test_the_interval_covers_the_true_win_rate_at_its_stated_rate(model: str, design: str):
    """Over 400 seeds of draws from one evaluation set (the truth fixed, as the design-based target is),
    the 90% interval contains the true win rate in 90% of them, within sampling error."""
    y, good = population(0)
    predicted = {"good": good, "useless": np.random.default_rng(1).random(N), "biased": np.full(N, 0.9),
                 "none": None}[model]
    truth = y.mean()
    pi = (np.full(N, 150 / N) if design == "uniform" or predicted is None
          else evaluation_probabilities(predicted, 150))
    covered = 0
    for seed in range(400):
        d = draw(seed, pi)
        w = win_rate(np.where(d, y, np.nan), d, pi, predicted, confidence=0.9)
        covered += w.lower <= truth <= w.upper
        assert w.comparisons == d.sum() and w.items == N
    assert abs(covered / 400 - 0.9) < 4 * np.sqrt(0.9 * 0.1 / 400)  # 0.90 +- 0.06


def test_a_good_reward_model_narrows_the_interval_and_asking_where_it_is_unsure_narrows_it_more():
    widths = {"classical": [], "ppi": [], "active": []}
    for seed in range(100):
        y, f = population(seed, quality=0.9)
        uniform, active = np.full(N, 150 / N), evaluation_probabilities(f, 150)
        d_u, d_a = draw(seed, uniform), draw(seed + 10_000, active)
        widths["classical"].append(win_rate(np.where(d_u, y, np.nan), d_u, uniform).width)
        widths["ppi"].append(win_rate(np.where(d_u, y, np.nan), d_u, uniform, f).width)
        widths["active"].append(win_rate(np.where(d_a, y, np.nan), d_a, active, f).width)
    mean = {k: np.mean(v) for k, v in widths.items()}
    assert mean["ppi"] < 0.8 * mean["classical"] and mean["active"] < mean["ppi"]


def test_every_comparison_answered_gives_the_mean_exactly():
    y, f = population(3)
    w = win_rate(y, np.ones(N, bool), np.ones(N), f)
    assert w.estimate == pytest.approx(y.mean()) and w.width == pytest.approx(0.0)


def test_active_probabilities_spend_the_budget_exactly_with_a_floor():
    _, f = population(4)
    pi = evaluation_probabilities(f, 150, uniform_share=0.5)
    assert pi.sum() == pytest.approx(150) and pi.min() >= 0.5 * 150 / N - 1e-12 and pi.max() <= 1
    assert pi[np.argmin(np.abs(f - 0.5))] > pi[np.argmax(np.abs(f - 0.5))]  # unsure: asked more
    assert (evaluation_probabilities(f[:10], 50) == 1).all()


@pytest.mark.parametrize("change, field", [
    (dict(drawn=np.ones(3)), "drawn"),
    (dict(probability=np.array([0.5, 0.0, 0.5])), "probability"),
    (dict(probability=np.array([0.5, 1.5, 0.5])), "probability"),
    (dict(outcome=np.array([1.0, np.nan, 0.0])), "outcome"),
    (dict(outcome=np.array([1.0, 2.0, 0.0])), "outcome"),
    (dict(predicted=np.array([0.5, 0.5])), "predicted"),
    (dict(confidence=1.0), "confidence"),
])
def test_bad_input_names_its_field(change, field):
    args = dict(outcome=np.array([1.0, 0.0, 0.5]), drawn=np.array([True, True, False]),
                probability=np.array([0.5, 0.5, 0.5]), predicted=None, confidence=0.95)
    with pytest.raises(InvalidInput) as e:
        win_rate(**{**args, **change})
    assert e.value.field == field
