"""Consensus: majority vote and Dawid-Skene on planted annotators, gold clamping, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from winnow.core.domain.errors import InvalidInput
from winnow.core.ml.consensus import (
    OneCoinFit,
    annotator_accuracy_on_gold,
    dawid_skene,
    majority_vote,
)


def planted(seed, accuracy, n_items, n_classes, per_item=None):
    """Annotations from annotators with the given accuracies, errors uniform over wrong classes.

    Every annotator labels every item unless ``per_item`` picks that many distinct annotators.
    Returns items, annotators, labels (all [a]) and the true class per item [n_items].
    """
    rng = np.random.default_rng(seed)
    n_annotators = len(accuracy)
    truth = rng.integers(0, n_classes, n_items)
    if per_item is None:
        items = np.repeat(np.arange(n_items), n_annotators)
        annotators = np.tile(np.arange(n_annotators), n_items)
    else:
        items = np.repeat(np.arange(n_items), per_item)
        annotators = rng.permuted(np.tile(np.arange(n_annotators), (n_items, 1)), axis=1)
        annotators = annotators[:, :per_item].ravel()
    right = rng.random(items.size) < np.asarray(accuracy)[annotators]
    wrong = (truth[items] + rng.integers(1, n_classes, items.size)) % n_classes
    return items, annotators, np.where(right, truth[items], wrong), truth


def realised_accuracy(items, annotators, labels, truth, n_annotators):
    hits = np.bincount(annotators, weights=labels == truth[items], minlength=n_annotators)
    return hits / np.bincount(annotators, minlength=n_annotators)


def test_majority_vote_known_answer():
    items = np.array([0, 0, 0, 1, 1, 3])
    annotators = np.array([0, 1, 2, 0, 1, 2])
    labels = np.array([2, 2, 1, 1, 0, 1])
    result = majority_vote(items, annotators, labels, n_items=4, n_annotators=4, n_classes=3)
    np.testing.assert_array_equal(result.labels, [2, 0, -1, 1])  # item 1 ties 0/1 -> lowest id
    np.testing.assert_allclose(result.confidence, [2 / 3, 0.5, 0.0, 1.0])
    np.testing.assert_allclose(result.posterior[2], 0.0)
    # Mean vote share of the labels each annotator gave; annotator 3 gave none.
    np.testing.assert_allclose(result.annotator_accuracy, [(2 / 3 + 0.5) / 2, (2 / 3 + 0.5) / 2,
                                                           (1 / 3 + 1) / 2, np.nan])
    assert result.method == "majority_vote" and result.iterations == 0


@pytest.mark.parametrize("model", ["one_coin", "confusion"])
def test_dawid_skene_finds_planted_bad_annotator(model):
    # Annotator 0 is good but is out-voted whenever the mediocre ones happen to agree;
    # annotator 4 is bad (accuracy 0.3, chance is 0.25).
    accuracy = [0.95, 0.65, 0.6, 0.6, 0.3]
    items, annotators, labels, truth = planted(0, accuracy, n_items=200, n_classes=4)
    vote = majority_vote(items, annotators, labels, 200, 5, 4)
    result = dawid_skene(items, annotators, labels, 200, 5, 4, model=model)
    realised = realised_accuracy(items, annotators, labels, truth, 5)

    assert result.annotator_accuracy.argmin() == 4
    assert abs(result.annotator_accuracy[4] - 0.3) < 0.1
    assert np.abs(result.annotator_accuracy - realised).max() < 0.1
    assert result.annotator_accuracy.argmax() == 0
    assert (result.labels == truth).mean() > (vote.labels == truth).mean() + 0.03
    np.testing.assert_allclose(result.posterior.sum(axis=1), 1.0)
    np.testing.assert_allclose(result.confidence, result.posterior.max(axis=1))
    assert result.method == f"dawid_skene_{model}" and 1 <= result.iterations <= 100


def test_gold_items_anchor_an_adversarial_crowd():
    # Binary task, every annotator is worse than chance: without gold, EM settles on the
    # flipped labelling; gold on 20% of items pins it the right way round.
    accuracy = [0.2, 0.25, 0.3]
    items, annotators, labels, truth = planted(0, accuracy, n_items=300, n_classes=2)
    gold = {int(k): int(truth[k]) for k in range(60)}
    free = dawid_skene(items, annotators, labels, 300, 3, 2)
    anchored = dawid_skene(items, annotators, labels, 300, 3, 2, gold=gold)

    assert (free.labels == truth).mean() < 0.3
    assert (anchored.labels[60:] == truth[60:]).mean() > 0.8
    np.testing.assert_array_equal(anchored.labels[:60], truth[:60])
    np.testing.assert_allclose(anchored.confidence[:60], 1.0)
    assert np.abs(anchored.annotator_accuracy - np.array(accuracy)).max() < 0.1


def test_gold_item_without_annotations_takes_its_gold_class():
    items, annotators, labels = np.array([0, 0]), np.array([0, 1]), np.array([1, 1])
    result = dawid_skene(items, annotators, labels, 3, 2, 2, gold={2: 0})
    np.testing.assert_array_equal(result.labels, [1, -1, 0])
    np.testing.assert_allclose(result.confidence[1:], [0.0, 1.0])


def test_one_coin_with_77_classes_and_sparse_overlap():
    rng = np.random.default_rng(100)
    accuracy = rng.uniform(0.4, 0.95, 30)
    items, annotators, labels, truth = planted(1, accuracy, n_items=1000, n_classes=77,
                                               per_item=3)
    vote = majority_vote(items, annotators, labels, 1000, 30, 77)
    result = dawid_skene(items, annotators, labels, 1000, 30, 77)
    realised = realised_accuracy(items, annotators, labels, truth, 30)

    assert (result.labels == truth).mean() > (vote.labels == truth).mean() + 0.02
    assert np.abs(result.annotator_accuracy - realised).max() < 0.1
    assert np.corrcoef(result.annotator_accuracy, accuracy)[0, 1] > 0.9


def test_annotator_without_annotations_gets_nan():
    items, annotators, labels, _ = planted(2, [0.9, 0.8, 0.7], n_items=50, n_classes=3)
    result = dawid_skene(items, annotators, labels, 50, 4, 3, model="confusion")
    assert np.isnan(result.annotator_accuracy[3])
    assert np.isfinite(result.annotator_accuracy[:3]).all()


def test_annotator_accuracy_on_gold_known_answer():
    items = np.array([0, 0, 1, 1, 2, 2, 3])
    annotators = np.array([0, 1, 0, 1, 0, 1, 2])
    labels = np.array([1, 0, 2, 2, 0, 0, 1])
    accuracy = annotator_accuracy_on_gold(items, annotators, labels, {0: 1, 1: 2}, 4, 4, 3)
    np.testing.assert_allclose(accuracy, [1.0, 0.5, np.nan, np.nan])


def test_empty_annotations_give_no_labels():
    empty = np.zeros(0, dtype=np.int64)
    for result in (majority_vote(empty, empty, empty, 3, 2, 4),
                   dawid_skene(empty, empty, empty, 3, 2, 4)):
        np.testing.assert_array_equal(result.labels, [-1, -1, -1])
        assert np.isnan(result.annotator_accuracy).all()


@pytest.mark.parametrize("change,field", [
    ({"items": [0, 1, 5]}, "items"),
    ({"items": [0, -1, 1]}, "items"),
    ({"annotators": [0, 1, 2]}, "annotators"),
    ({"annotators": [0, 1]}, "annotators"),
    ({"labels": [0, 1, 3]}, "labels"),
    ({"labels": [0.0, 1.0, 2.0]}, "labels"),
    ({"labels": [0, 1, 2, 0]}, "labels"),
    ({"n_classes": 0}, "n_classes"),
    ({"n_items": 2.5}, "n_items"),
    ({"gold": {7: 0}}, "gold"),
    ({"gold": {0: 3}}, "gold"),
    ({"model": "two_coin"}, "model"),
    ({"max_iter": 0}, "max_iter"),
    ({"tol": -1.0}, "tol"),
    ({"smoothing": "1"}, "smoothing"),
])
def test_bad_input_names_the_field(change, field):
    args = {"items": [0, 1, 2], "annotators": [0, 1, 0], "labels": [0, 1, 2],
            "n_items": 3, "n_annotators": 2, "n_classes": 3}
    args.update(change)
    with pytest.raises(InvalidInput) as err:
        dawid_skene(**args)
    assert err.value.field == field


def _fit(people: dict[str, float], classes: int = 77) -> OneCoinFit:
    return OneCoinFit(np.full(classes, 1.0 / classes), people, 0.9, "dawid_skene_one_coin", 1000)


def test_adaptive_overlap_asks_a_third_answer_exactly_when_two_disagree():
    fit = _fit({"x": 0.9, "y": 0.9, "z": 0.9})
    assert fit.answers_wanted([], [], 3) == 1
    assert fit.answers_wanted(["x"], [0], 3) == 1  # one answer settles it
    assert fit.answers_wanted(["x"], [0], 3, model=(0.97, 0)) == 1  # the model agrees
    assert fit.answers_wanted(["x", "y"], [0, 0], 3) == 2  # two agree: settled
    assert fit.answers_wanted(["x", "y"], [0, 1], 3) == 3  # two disagree: a third
    assert fit.answers_wanted(["x", "y", "z"], [0, 1, 0], 3) == 3  # the cap
    assert fit.answers_wanted(["x", "y"], [0, 1], 2) == 2
    assert fit.answers_wanted(["x"], [0], 1, model=(0.97, 1)) == 1
    # a check: the model is sure of this item, whatever its accuracy on checks overall
    assert _fit({"x": 0.999}).answers_wanted(["x"], [0], 3, model=(0.5, 1)) == 1
    assert _fit({"x": 0.999}).answers_wanted(["x"], [0], 3, model=(0.5, 1), check=True) == 2
    assert fit.answers_wanted(["x", "y"], [0, 0], 3, model=(0.97, 1), check=True) == 2  # two agree: settled
    with pytest.raises(InvalidInput, match="cap"):
        fit.answers_wanted(["x"], [0], 0)


@pytest.mark.parametrize(("person", "model", "classes", "more"), [
    (0.90, 0.97, 77, True),  # a slip is likelier than an error of a model right 97% of the time: ask again
    (0.99, 0.60, 77, False),  # a reliable person against an unsure model: settled
    (0.90, 0.60, 77, True),  # answer right with probability 0.86 < 0.95
    (0.999, 0.97, 77, False),  # a near-perfect person outweighs even a confident model
    (0.90, 0.50, 2, True),
])
def test_an_answer_against_the_model_asks_another_person_where_the_fit_doubts_it(person, model, classes, more):
    fit = _fit({"x": person}, classes)
    posterior = fit.posterior(["x"], [0], (model, 1))
    assert (posterior.max() < 0.95) == more
    assert fit.answers_wanted(["x"], [0], 3, model=(model, 1)) == (2 if more else 1)
    # two agreeing people among many classes outweigh a model right 97% of the time; among three they do not
    assert _fit({"x": 0.9, "y": 0.9}, 77).answers_wanted(["x", "y"], [0, 0], 3, model=(0.97, 1)) == 2
    assert _fit({"x": 0.9, "y": 0.9}, 3).answers_wanted(["x", "y"], [0, 0], 3, model=(0.97, 1)) == 3


def test_the_models_accuracy_is_read_per_kind_and_version():
    fit = OneCoinFit(np.full(3, 1 / 3), {}, 0.8, "dawid_skene_one_coin", 10,
                     {("audit", "v1"): 0.96, ("audit", "v2"): 0.98, ("label", "v2"): 0.55})
    assert fit.reference("audit", "v2") == 0.98
    assert fit.reference("audit", "v3") == pytest.approx(0.97)  # a version not fitted yet: its kind's mean
    assert fit.reference("holdout", "v2") == 0.8  # a kind never fitted: the people's default


def _adaptive_checks(seed: int, accuracy=(0.95, 0.90, 0.85), n: int = 1500, classes: int = 10,
                     check_share: float = 0.6, model_accuracy: float = 0.97):
    """A stream answered with adaptive overlap (``OneCoinFit.answers_wanted``, cap 3, with the true
    accuracies): a share of items are checks of a model label (right ``model_accuracy`` of the time),
    where an answer against it asks a second person; the rest are picks, which one answer settles.
    Returns the annotation arrays, the model's labels on the checks as the answers of one more
    annotator, and the sizes."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, n)

    def other(t: int) -> int:
        o = int(rng.integers(0, classes - 1))
        return o if o < t else o + 1

    fit = OneCoinFit(np.full(classes, 1.0 / classes), {str(k): q for k, q in enumerate(accuracy)}, 0.9,
                     "dawid_skene_one_coin", 1000)
    i, j, y, mi, my = [], [], [], [], []
    for item, t in enumerate(truth.tolist()):
        check = rng.random() < check_share
        model = (t if rng.random() < model_accuracy else other(t)) if check else None
        order, given, wanted = rng.permutation(len(accuracy)), [], 1
        while len(given) < wanted:
            who = int(order[len(given)])
            answer = t if rng.random() < accuracy[who] else other(t)
            given.append(answer)
            i.append(item), j.append(who), y.append(answer)
            wanted = fit.answers_wanted([str(w) for w in order[:len(given)]], given, 3,
                                        None if model is None else (model_accuracy, model))
        if check:
            mi.append(item), my.append(model)
    people = (np.array(i), np.array(j), np.array(y))
    with_model = (np.concatenate([people[0], mi]), np.concatenate([people[1], np.full(len(mi), len(accuracy))]),
                  np.concatenate([people[2], my]))
    return people, with_model, n, len(accuracy), classes


def test_the_models_label_on_checks_removes_the_bias_of_adaptive_overlap():
    """Over 30 seeded streams with little overlap (about 1.1 answers per item): a one-coin fit that reads
    the model's label on the checks (as the labeling service's does) estimates each person's accuracy
    without bias (mean error under 0.01) and ranks them right in at least 90% of the streams; a fit of
    the people's answers alone, on the same answers, underestimates every one by more than 0.05."""
    accuracy = np.array([0.95, 0.90, 0.85])
    fitted, alone = [], []
    for seed in range(30):
        people, with_model, n, m, c = _adaptive_checks(seed, tuple(accuracy))
        assert len(people[0]) < 1.2 * n
        fitted.append(dawid_skene(*with_model, n, m + 1, c).annotator_accuracy[:m])
        alone.append(dawid_skene(*people, n, m, c).annotator_accuracy)
    fitted, alone = np.array(fitted), np.array(alone)
    assert np.abs(fitted.mean(0) - accuracy).max() < 0.01, fitted.mean(0)
    assert np.mean((fitted[:, 0] > fitted[:, 1]) & (fitted[:, 1] > fitted[:, 2])) >= 0.9
    assert (accuracy - alone.mean(0)).min() > 0.05, alone.mean(0)


def test_the_models_label_never_settles_a_disagreement_between_people():
    """On a check the model's label is what people's label is compared with: where two people split, a
    third is asked whatever the model says, though with it the model's side would be near certain."""
    fit = _fit({"x": 0.9, "y": 0.9})
    assert fit.posterior(["x", "y"], [0, 1], (0.97, 0)).max() > 0.95
    assert fit.answers_wanted(["x", "y"], [0, 1], 3, model=(0.97, 0)) == 3
    # a split between a person right 99.9% of the time and one right 60% is settled by the people alone
    assert _fit({"x": 0.999, "y": 0.6}).answers_wanted(["x", "y"], [0, 1], 3, model=(0.97, 1)) == 2
