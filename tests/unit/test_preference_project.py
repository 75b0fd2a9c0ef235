"""Preference projects through the whole embedded loop: comparisons stored and leased with their
responses, the Bradley-Terry reward as the project's head, certified model labels, and the reward
model in every version; with a deterministic encoder and a planted preference (no model weights)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.comparisons import comparisons, pair_texts, pair_vectors
from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.records import PREFERENCE_CLASSES, Item, Project, Response
from winnow.core.domain.settings import LoopConfig, TrainConfig
from winnow.core.domain.validation import validate_items, validate_project
from winnow.core.loop.embedded import EmbeddedLoop
from winnow.core.loop.evaluation import win_rates
from winnow.core.loop.labeling import LabelingService
from winnow.core.loop.selector import EPIG_TARGETS, Selector
from winnow.core.ml.head import load_head
from winnow.core.ml.reward import (REWARD_FOLDER, RewardEngine, fit_preference_head, fit_reward, load_reward_fit,
                                   save_reward)
from winnow.core.select.pairs import TargetSample, predictive_information
from winnow.core.ml.runtime import OnnxRuntime
from winnow.core.ml.training import head_logits
from winnow.core.ml.scoring import mean_probs, uncertainty
from winnow.core.testing.fakes import CrcEncoder

DIM = 16
PROJECT = Project("prefs", PREFERENCE_CLASSES, budget_labels=25, budget_per_items=100, precision_target=0.9,
                  kind="preference")
CONFIG = LoopConfig(first_model_labels=40, retrain_min_new=20, audit_probability=0.3,
                    train=TrainConfig(folds=3, min_support=10))


def planted(encoder: CrcEncoder, seed: int = 0):
    """A reward ``w* . e`` on the encoder's vectors, and the noise-free person who answers from it."""
    w = np.random.default_rng(seed).standard_normal(DIM)

    def answer(item: Item) -> str:
        first, second = pair_texts([item])
        e = encoder.encode(first + second)
        return "A" if (e[0] - e[1]) @ w > 0 else "B"

    return w, answer


def items(n: int, start: int = 0) -> list[Item]:
    """Prompts with two responses each; every fifth has three (stored as its three pairs)."""
    out = []
    for k in range(start, start + n):
        k_responses = 3 if k % 5 == 0 else 2
        out.append(Item(PROJECT.name, f"p{k}", f"prompt {k}",
                        responses=tuple(Response(f"reply {k}.{j}", f"model-{j}") for j in range(k_responses))))
    return out


def test_an_item_with_more_than_two_responses_is_stored_as_its_pairs() -> None:
    item = Item("prefs", "x", "prompt", responses=tuple(Response(f"r{j}", f"m{j}") for j in range(4)))
    pairs = comparisons(PROJECT, [item])
    assert [p.item_id for p in pairs] == ["x#0-1", "x#0-2", "x#0-3", "x#1-2", "x#1-3", "x#2-3"]
    assert pairs[4].responses == (Response("r1", "m1"), Response("r3", "m3"))
    two = Item("prefs", "y", "prompt", responses=(Response("a"), Response("b")))
    assert comparisons(PROJECT, [two]) == [two]


@pytest.mark.parametrize("item, field", [
    (Item("prefs", "x", "prompt", responses=(Response("only"),)), "responses"),
    (Item("prefs", "x", "prompt"), "responses"),
    (Item("prefs", "x", "prompt", responses=(Response("a"), Response("  "))), "responses.text"),
    (Item("prefs", "x", "prompt", responses=(Response("a"), Response("b\x00"))), "responses.text"),
    (Item("prefs", "x", "prompt", responses=tuple(Response(f"r{j}") for j in range(17))), "responses"),
])
def test_bad_preference_items_are_refused_naming_the_field(item: Item, field: str) -> None:
    with pytest.raises(InvalidInput) as e:
        validate_items(PROJECT, [item])
    assert e.value.field == field


def test_a_classification_item_with_responses_and_a_preference_project_with_other_classes_are_refused() -> None:
    with pytest.raises(InvalidInput) as e:
        validate_items(Project("c", ("x", "y")), [Item("c", "i", "text", responses=(Response("a"), Response("b")))])
    assert e.value.field == "responses"
    with pytest.raises(InvalidInput) as e:
        validate_project(dataclasses.replace(PROJECT, classes=("yes", "no")))
    assert e.value.field == "classes"
    with pytest.raises(InvalidInput) as e:
        validate_project(dataclasses.replace(PROJECT, kind="ranking"))
    assert e.value.field == "kind"


def test_the_store_keeps_a_comparisons_responses_and_refuses_a_kind_change(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.sqlite")
    store.create_project(PROJECT)
    assert store.get_project(PROJECT.name).kind == "preference"
    pair = comparisons(PROJECT, items(1, start=1))
    store.add_items(pair)
    assert store.get_items(PROJECT.name, ["p1"]) == pair
    with pytest.raises(InvalidInput) as e:  # the store refuses an uncut item: a stored item is one comparison
        store.add_items(items(1, start=5))
    assert e.value.field == "responses"
    with pytest.raises(InvalidInput) as e:
        store.update_project(dataclasses.replace(PROJECT, kind="classification", classes=("A", "B", "tie")), "me", 1.0)
    assert e.value.field == "kind"
    store.close()


def test_a_strength_or_reason_belongs_to_a_comparisons_answer(tmp_path: Path) -> None:
    from winnow.core.domain.records import Annotation

    store = SqliteStore(tmp_path / "store.sqlite")
    store.create_project(PROJECT)
    store.create_project(Project("texts", ("x", "y")))
    store.add_items(comparisons(PROJECT, items(1, start=1)) + [Item("texts", "t1", "a text")])
    answer = Annotation(PROJECT.name, "p1", "ann", "A", 1.0, "slightly", "shorter and right")
    assert store.add_annotation(answer)
    assert store.annotations(PROJECT.name) == [answer]
    for bad, field in ((Annotation("texts", "t1", "ann", "x", 1.0, "much"), "strength"),
                       (Annotation("texts", "t1", "ann", "x", 1.0, reason="because"), "reason"),
                       (Annotation(PROJECT.name, "p1", "other", "tie", 1.0, "much"), "strength"),
                       (Annotation(PROJECT.name, "p1", "other", "B", 1.0, "very"), "strength")):
        with pytest.raises(InvalidInput) as e:
            store.add_annotation(bad)
        assert e.value.field == field
    assert len(store.annotations(PROJECT.name)) == 1  # nothing half-written
    store.close()


def test_the_preference_head_learns_a_planted_preference_and_counts_ties() -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal(DIM)
    first, second = rng.standard_normal((400, DIM)), rng.standard_normal((400, DIM))
    v = pair_vectors(first, second)
    p_a = 1 / (1 + np.exp(-4 * v @ w))
    y = np.where(rng.random(400) < p_a, 0, 1)
    y[rng.random(400) < 0.1] = 2  # a tenth are ties
    head = fit_preference_head(v[:300], y[:300], 3, TrainConfig())
    probs = mean_probs(head_logits(head, v[300:]), 1.0)
    assert np.mean((probs[:, 0] > probs[:, 1]) == (v[300:] @ w > 0)) > 0.85
    assert 0.05 < probs[:, 2].mean() < 0.2  # the tie share it saw
    # swapping A and B swaps the two probabilities (a Bradley-Terry model has no side)
    swapped = mean_probs(head_logits(head, -v[300:]), 1.0)
    np.testing.assert_allclose(swapped[:, [1, 0, 2]], probs, atol=1e-5)
    with pytest.raises(InvalidInput):
        fit_preference_head(v[:10], np.full(10, 3), 3, TrainConfig())


def test_a_preference_stream_is_labeled_within_budget_by_people_and_a_certified_reward_model(tmp_path: Path) -> None:
    encoder = CrcEncoder(DIM)
    w, answer = planted(encoder)
    loop = EmbeddedLoop(tmp_path, PROJECT, OnnxRuntime(encoder), CONFIG)
    stored = {}

    def people(service: LabelingService) -> int:
        leases = service.lease("ann", 50)
        for lease in leases:
            assert len(lease.responses) == 2 and lease.text.startswith("prompt")
            item = Item(PROJECT.name, lease.item_id, lease.text, responses=lease.responses)
            service.submit("ann", lease.item_id, answer(item))
        return len(leases)

    sent = items(1000)
    for start in range(0, len(sent), 100):
        loop.ingest(sent[start:start + 100])
        loop.run_until_idle(people)
    loop.close_stream(people)
    for item in comparisons(PROJECT, sent):
        stored[item.item_id] = item
    labels = loop.store.labels(PROJECT.name)
    assert sorted(label.item_id for label in labels) == sorted(stored)  # every comparison, once
    human = [label for label in labels if label.source == "human"]
    assert len(human) <= 0.25 * len(stored) + 1
    model = [label for label in labels if label.source == "model"]
    assert any(label.aggregation == "auto_accept" for label in model)  # certified during the stream
    accuracy = np.mean([label.label == answer(stored[label.item_id]) for label in labels])
    assert accuracy > 0.9
    auto = [label for label in model if label.aggregation == "auto_accept"]
    assert np.mean([label.label == answer(stored[label.item_id]) for label in auto]) >= 0.9
    # every version carries its reward model: r(e) = w . e ranks responses as the planted reward does
    version = loop.store.current_model(PROJECT.name)
    engine = RewardEngine(Path(version.path) / REWARD_FOLDER)
    e = encoder.encode([f"probe {k}" for k in range(200)])
    r = engine.rewards(e)[:, 0]
    assert np.corrcoef(r, e @ w)[0, 1] > 0.8
    meta = json.loads((Path(version.path) / "meta.json").read_text())
    assert meta["classes"] == list(PREFERENCE_CLASSES)
    # model evaluation: model-0 against model-1 on their comparisons, from the arrival draws
    rates = {(r.model_a, r.model_b): r for r in win_rates(loop.store, PROJECT.name)}
    assert set(rates) == {("model-0", "model-1"), ("model-0", "model-2"), ("model-1", "model-2")}
    head_to_head = rates["model-0", "model-1"]
    draws = {d.item_id: d for d in loop.store.arrival_draws(PROJECT.name)}
    assert set(draws) == set(stored)  # every comparison's arrival look was kept
    pairs = [i for i in stored.values() if {r.model for r in i.responses} == {"model-0", "model-1"}
             and draws[i.item_id].probability > 0]
    truth = np.mean([(answer(i) == "A") == (i.responses[0].model == "model-0") for i in pairs])
    assert head_to_head.items == len(pairs) and head_to_head.pending == 0
    assert head_to_head.lower <= truth <= head_to_head.upper and head_to_head.upper - head_to_head.lower < 0.3
    loop.close()


def test_an_evaluation_budget_asks_more_where_the_reward_is_unsure_and_narrows_the_win_rates(tmp_path: Path) -> None:
    """``evaluation_budget`` 20 per 100 beside the project's 25: the arrival draws go up most where the
    reward model is least sure of the outcome, people answer at most the two budgets together, and the
    win-rate interval rests on more comparisons and is narrower than without it, still covering the truth."""
    encoder = CrcEncoder(DIM)
    _, answer = planted(encoder)
    sent = items(600)
    stored = {item.item_id: item for item in comparisons(PROJECT, sent)}
    results = {}
    for budget in (0, 20):
        loop = EmbeddedLoop(tmp_path / f"eval-{budget}", PROJECT, OnnxRuntime(encoder),
                            dataclasses.replace(CONFIG, evaluation_budget=budget))

        def people(service: LabelingService) -> int:
            leases = service.lease("ann", 50)
            for lease in leases:
                service.submit("ann", lease.item_id, answer(stored[lease.item_id]))
            return len(leases)

        for start in range(0, len(sent), 100):
            loop.ingest(sent[start:start + 100])
            loop.run_until_idle(people)
        loop.close_stream(people)
        human = sum(label.source == "human" for label in loop.store.labels(PROJECT.name))
        draws = loop.store.arrival_draws(PROJECT.name)
        rate = {(r.model_a, r.model_b): r for r in win_rates(loop.store, PROJECT.name)}["model-0", "model-1"]
        results[budget] = human, draws, rate
        loop.close()
    (plain_human, plain_draws, plain), (human, draws, rate) = results[0], results[20]
    assert human <= 0.45 * len(stored) + 2 and human > plain_human
    assert np.mean([d.probability for d in draws]) > np.mean([d.probability for d in plain_draws]) + 0.1
    later = [d for d in draws[len(draws) // 3:] if d.probability > 0]  # once a reward model is there
    unsure = np.array([abs(d.expected - 0.5) for d in later])
    # how much the evaluation budget raised each item's chance over the run without it: most where the reward
    # is least sure (the totals also carry the base draws, audits where the reward is sure, so compare the rise)
    base = {d.item_id: d.probability for d in plain_draws}
    rise = np.array([d.probability - base[d.item_id] for d in later])
    assert rise[unsure <= np.quantile(unsure, 0.25)].mean() > rise[unsure >= np.quantile(unsure, 0.75)].mean() + 0.05
    assert rate.comparisons > plain.comparisons and rate.width < plain.width
    pairs = [stored[d.item_id] for d in draws if d.probability > 0
             and {r.model for r in stored[d.item_id].responses} == {"model-0", "model-1"}]
    truth = np.mean([(answer(i) == "A") == (i.responses[0].model == "model-0") for i in pairs])
    assert rate.lower <= truth <= rate.upper


def _stream(loop: EmbeddedLoop, answer, n: int, batches: int = 100) -> None:
    def people(service: LabelingService) -> int:
        leases = service.lease("ann", 50)
        for lease in leases:
            service.submit("ann", lease.item_id, answer(Item(PROJECT.name, lease.item_id, lease.text,
                                                             responses=lease.responses)))
        return len(leases)

    sent = items(n)
    for start in range(0, n, batches):
        loop.ingest(sent[start:start + batches])
        loop.run_until_idle(people)


def test_the_served_selector_scores_comparisons_by_epig_with_the_versions_posterior(tmp_path: Path) -> None:
    encoder = CrcEncoder(DIM)
    _, answer = planted(encoder)
    config = dataclasses.replace(CONFIG, pair_acquisition="epig")
    loop = EmbeddedLoop(tmp_path, PROJECT, OnnxRuntime(encoder), config)
    _stream(loop, answer, 400)
    version = loop.store.current_model(PROJECT.name)
    assert version is not None
    # the version keeps its reward's Laplace posterior: the precision fit_reward has on the comparisons the
    # version was fitted on (the first n_train human answers: labels only accrue)
    fit = load_reward_fit(Path(version.path) / REWARD_FOLDER)
    humans = loop.store.labels(PROJECT.name, "human")[:version.n_train]
    assert fit.n_train == version.n_train == len(humans)
    v = loop.store.get_embeddings(PROJECT.name, [h.item_id for h in humans])
    direct = fit_reward(v, np.zeros_like(v), np.array([{"A": 1.0, "B": 0.0, "tie": 0.5}[h.label] for h in humans]))
    np.testing.assert_allclose(fit.weight[0], direct.weight[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fit.precision, direct.precision, rtol=1e-4)
    # the backlog waits with what its answer tells about a sample of the comparisons that arrived
    selector = loop.selector
    assert selector.score_name == "epig" and 0 < len(selector._targets) <= EPIG_TARGETS
    information = selector._pair_information()
    stored = loop.store.get_embeddings(PROJECT.name, [i.item_id for i in comparisons(PROJECT, items(400))])
    assert len(information.targets) == len(selector._targets)
    assert np.isclose(information.targets @ stored.T, 1.0, atol=1e-6).any(1).all()  # each one an arrival's vector
    assert len(selector.backlog) > 0
    np.testing.assert_allclose(selector.backlog.unc, predictive_information(selector.backlog.emb, information.targets,
                                                                            fit), rtol=1e-9, atol=1e-15)
    assert not np.allclose(selector.backlog.unc, uncertainty(CONFIG.uncertainty, head_logits(
        load_head(Path(version.path)), selector.backlog.emb), version.temperature))
    loop.close()


def test_pair_acquisition_uncertainty_and_versions_without_a_readable_posterior_keep_the_uncertainty_score(
        tmp_path: Path) -> None:
    encoder = CrcEncoder(DIM)
    _, answer = planted(encoder)
    config = CONFIG  # pair_acquisition uncertainty: the default
    assert config.pair_acquisition == "uncertainty"
    loop = EmbeddedLoop(tmp_path / "u", PROJECT, OnnxRuntime(encoder), config)
    _stream(loop, answer, 300)
    assert loop.selector.score_name == config.uncertainty and loop.selector._targets is None
    head = loop.selector.head
    emb = loop.selector.backlog.emb
    np.testing.assert_allclose(loop.selector.backlog.unc, uncertainty(config.uncertainty, head.logits(emb),
                                                                      head.meta["temperature"]), rtol=1e-6)
    loop.close()
    # a version written before rewards kept their posterior: EPIG cannot run, the selector says so and scores
    # by the uncertainty score
    epig = dataclasses.replace(CONFIG, pair_acquisition="epig")
    loop = EmbeddedLoop(tmp_path / "e", PROJECT, OnnxRuntime(encoder), epig)
    _stream(loop, answer, 300)
    assert loop.selector.score_name == "epig"
    folder = Path(loop.store.current_model(PROJECT.name).path) / REWARD_FOLDER
    fit = load_reward_fit(folder)
    shutil.rmtree(folder)
    save_reward(folder, dataclasses.replace(fit, precision=None), {"version": "old"})
    selector = Selector(loop.bus, loop.store, PROJECT, epig)  # a restart reads the version again
    assert load_reward_fit(folder).precision is None and selector.score_name == epig.uncertainty
    assert len(selector._targets) > 0  # sampled from the backlog it restored
    # a reward folder that cannot be read: the head still scores, by its members, and the step goes on
    (folder / "reward.safetensors").write_bytes(b"not safetensors")
    selector = Selector(loop.bus, loop.store, PROJECT, epig)
    assert selector.score_name == epig.uncertainty and len(selector.backlog) > 0
    loop.close()


def test_the_target_sample_keeps_each_arrival_with_the_same_chance() -> None:
    # algorithm R: after n arrivals each one is in the sample with probability size / n, batches or not
    size, n, runs = 20, 100, 2000
    kept = np.zeros(n)
    for seed in range(runs):
        sample = TargetSample(size, seed)
        vectors = np.eye(n)
        for start, stop in ((0, 7), (7, 30), (30, 31), (31, 100)):
            sample.add(vectors[start:stop])
        assert len(sample) == size and sample.seen == n
        kept += sample.vectors.sum(0)
        assert np.all(np.isin(sample.vectors.sum(0), (0.0, 1.0)))  # distinct arrivals
    share = kept / runs
    assert np.abs(share - size / n).max() < 4 * np.sqrt(size / n * (1 - size / n) / runs)
    small = TargetSample(size, 0)
    small.add(vectors[:5])
    np.testing.assert_array_equal(small.vectors, vectors[:5])  # fewer arrivals than its size: all of them
    for bad, field in (({"size": 0}, "size"), ({"size": True}, "size")):
        with pytest.raises(InvalidInput) as raised:
            TargetSample(**bad)
        assert raised.value.field == field
    with pytest.raises(InvalidInput) as raised:
        small.add(np.zeros((2, 3)))
    assert raised.value.field == "vectors"
