"""Uncertainty scores and temperature scaling: properties on random logits, known answers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from winnow.core.domain.errors import InvalidInput
from winnow.core.ml.scoring import (
    SCORE_NAMES,
    Scorer,
    bald,
    entropy,
    expected_calibration_error,
    fit_temperature,
    least_confidence,
    margin_uncertainty,
    mean_probs,
    softmax,
    uncertainty,
)

PROB_SCORES = (entropy, margin_uncertainty, least_confidence)


@st.composite
def logit_arrays(draw, min_members=1):
    shape = (
        draw(st.integers(1, 8)),
        draw(st.integers(min_members, 4)),
        draw(st.integers(2, 6)),
    )
    return draw(arrays(np.float64, shape, elements=st.floats(-40, 40, allow_subnormal=False)))


def _names_for(logits):
    return [n for n in SCORE_NAMES if n != "bald" or logits.shape[1] > 1]


def _upper_bound(name, n_classes):
    return {"entropy": np.log(n_classes), "margin": 1.0,
            "least_confidence": 1.0 - 1.0 / n_classes, "bald": np.log(n_classes)}[name]


@settings(max_examples=60, deadline=None)
@given(logits=logit_arrays())
def test_scores_are_finite_and_in_range(logits):
    for name in _names_for(logits):
        score = uncertainty(name, logits)
        assert score.shape == (logits.shape[0],)
        assert np.isfinite(score).all()
        assert (score >= -1e-12).all()
        assert (score <= _upper_bound(name, logits.shape[2]) + 1e-9).all()


@settings(max_examples=60, deadline=None)
@given(logits=logit_arrays(), data=st.data())
def test_scores_ignore_class_order_and_follow_item_order(logits, data):
    class_perm = data.draw(st.permutations(range(logits.shape[2])))
    item_perm = np.array(data.draw(st.permutations(range(logits.shape[0]))))
    for name in _names_for(logits):
        score = uncertainty(name, logits)
        np.testing.assert_allclose(uncertainty(name, logits[:, :, class_perm]), score, atol=1e-9)
        np.testing.assert_allclose(uncertainty(name, logits[item_perm]), score[item_perm],
                                   atol=1e-12)
        ranks = np.argsort(-score, kind="stable")
        assert np.array_equal(np.sort(ranks), np.arange(logits.shape[0]))


@settings(max_examples=60, deadline=None)
@given(logits=logit_arrays(min_members=1))
def test_uniform_row_is_most_uncertain_and_one_hot_least(logits):
    probs = mean_probs(logits)  # [n, C]
    n_classes = probs.shape[1]
    uniform = np.full((1, n_classes), 1.0 / n_classes)
    one_hot = np.eye(n_classes)[:1]
    for score in PROB_SCORES:
        s = score(probs)
        assert (score(uniform)[0] >= s - 1e-9).all()
        assert (score(one_hot)[0] <= s + 1e-12).all()
        assert score(one_hot)[0] == 0.0


def test_known_answers():
    for n_classes in (2, 5, 77):
        uniform = np.full((1, n_classes), 1.0 / n_classes)
        np.testing.assert_allclose(entropy(uniform), [np.log(n_classes)])
        np.testing.assert_allclose(least_confidence(uniform), [1 - 1 / n_classes])
        np.testing.assert_allclose(margin_uncertainty(uniform), [1.0])
    p = np.array([[0.2, 0.5, 0.3]])
    np.testing.assert_allclose(margin_uncertainty(p), [0.8])
    np.testing.assert_allclose(least_confidence(p), [0.5])
    # Members that agree carry no mutual information; confident members that disagree carry log 2.
    agree = np.array([[[0.7, 0.3], [0.7, 0.3]]])
    disagree = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    np.testing.assert_allclose(bald(agree), [0.0], atol=1e-12)
    np.testing.assert_allclose(bald(disagree), [np.log(2)])


def test_bald_ranks_member_disagreement_above_shared_doubt():
    # Item 0: members confidently disagree. Item 1: members agree on a 50/50 split.
    logits = np.array([[[10.0, -10.0], [-10.0, 10.0]], [[0.0, 0.0], [0.0, 0.0]]])
    score = uncertainty("bald", logits)
    assert score[0] > 0.6 and score[1] < 1e-12
    np.testing.assert_allclose(uncertainty("entropy", logits), [np.log(2)] * 2, atol=1e-6)


def test_softmax_is_stable_and_temperature_softens():
    z = np.array([[1000.0, 999.0, -1000.0]])
    p = softmax(z)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=-1), [1.0])
    np.testing.assert_allclose(p[0, :2], [1 / (1 + np.e**-1), 1 / (1 + np.e)])
    np.testing.assert_allclose(softmax(z, temperature=2.0), softmax(z / 2.0))
    z = np.array([[2.0, 0.0, 1.0]])
    assert entropy(softmax(z, 3.0)) > entropy(softmax(z)) > entropy(softmax(z, 0.3))
    assert mean_probs(np.zeros((4, 3, 5))).shape == (4, 5)


def test_scorer_rejects_bad_input():
    with pytest.raises(InvalidInput) as err:
        uncertainty("variance", np.zeros((2, 1, 3)))
    assert err.value.field == "uncertainty" and "variance" in err.value.message
    with pytest.raises(InvalidInput, match="ensemble or MC-dropout") as err:
        uncertainty("bald", np.zeros((2, 1, 3)))
    assert err.value.field == "logits"
    with pytest.raises(InvalidInput) as err:
        Scorer("entropy", temperature=0.0)
    assert err.value.field == "temperature"
    for bad in (np.zeros((2, 3)), np.zeros((2, 1, 1)), np.full((2, 1, 3), np.nan)):
        with pytest.raises(InvalidInput) as err:
            uncertainty("entropy", bad)
        assert err.value.field == "logits"


def _planted(rng, n, members, n_classes, t_true):
    logits = rng.normal(0.0, 3.0, size=(n, members, n_classes))
    p = mean_probs(logits, t_true)  # [n, C]
    labels = (rng.random((n, 1)) > p.cumsum(axis=1)).sum(axis=1)  # one categorical draw per row
    return logits, np.minimum(labels, n_classes - 1)


@pytest.mark.parametrize("t_true,members", [(0.5, 1), (1.0, 1), (2.5, 1), (4.0, 3)])
def test_fit_temperature_recovers_planted_temperature(t_true, members):
    logits, labels = _planted(np.random.default_rng(7), 4000, members, 10, t_true)
    t_fit = fit_temperature(logits, labels)
    assert abs(t_fit - t_true) / t_true < 0.15


def test_temperature_scaling_reduces_calibration_error():
    rng = np.random.default_rng(3)
    logits, labels = _planted(rng, 4000, 1, 10, 3.0)  # raw logits are 3x overconfident
    before = expected_calibration_error(mean_probs(logits), labels)
    after = expected_calibration_error(mean_probs(logits, fit_temperature(logits, labels)), labels)
    assert before > 0.15 and after < 0.03


def test_expected_calibration_error_known_answer():
    probs = np.tile([0.9, 0.1], (10, 1))
    nine_right = np.array([0] * 9 + [1])
    assert expected_calibration_error(probs, nine_right) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(probs, np.zeros(10, dtype=int)) == pytest.approx(0.1)
    # Bins (0.4, 0.6] and (0.8, 1]: 0.6-confident items all right (gap 0.4), 0.9-confident
    # items all wrong (gap 0.9).
    probs = np.array([[0.6, 0.4], [0.6, 0.4], [0.1, 0.9], [0.1, 0.9]])
    assert expected_calibration_error(probs, np.array([0, 0, 0, 0]), bins=5) == pytest.approx(0.65)


def test_fit_temperature_rejects_bad_input():
    logits = np.zeros((3, 1, 4))
    bad_labels = ([0, 1, 4], [0, -1, 2], [0.0, 1.0, 2.0], [0, 1])
    for labels in map(np.array, bad_labels):
        with pytest.raises(InvalidInput) as err:
            fit_temperature(logits, labels)
        assert err.value.field == "labels"
    with pytest.raises(InvalidInput) as err:
        fit_temperature(np.zeros((0, 1, 4)), np.zeros(0, dtype=int))
    assert err.value.field == "logits"
    with pytest.raises(InvalidInput) as err:
        expected_calibration_error(np.full((2, 2), 0.5), np.array([0, 1]), bins=0)
    assert err.value.field == "bins"
