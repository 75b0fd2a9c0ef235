"""The Bradley-Terry reward model and active pair selection: a planted preference is learned, the
posterior's members carry the uncertainty, versions round-trip through ONNX and PyTorch, and the
pair selector's probabilities are known, floored and sum to what was asked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from winnow.core.data.preferences import hh_rlhf_harmless, load_pairs, parse_pairs
from winnow.core.domain.errors import InvalidInput, ModelFileError
from winnow.core.ml.reward import (RewardConfig, RewardEngine, RewardFit, fit_reward, laplace_precision,
                                   load_reward_fit, preference, save_reward)
from winnow.core.select.index import VectorIndex
from winnow.core.select.pairs import most_uncertain_pairs, novelty, pair_probabilities, predictive_information


def _planted(n: int, dim: int = 16, seed: int = 0, scale: float = 4.0):
    """Responses on the unit sphere, a hidden reward direction, and answers drawn by Bradley-Terry."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(dim)
    w *= scale / np.linalg.norm(w)
    a, b = rng.standard_normal((2, n, dim))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    p = 1 / (1 + np.exp(-(a - b) @ w))
    return a, b, (rng.random(n) < p).astype(float), w


@pytest.mark.parametrize("seed", range(5))
def test_a_planted_preference_is_learned(seed: int) -> None:
    a, b, answers, w = _planted(600, seed=seed)
    fit = fit_reward(a, b, answers, RewardConfig(members=8, l2=1.0))
    test_a, test_b, _, _ = _planted(400, seed=seed + 100)
    truth = (test_a - test_b) @ w > 0
    learned = (test_a - test_b) @ fit.weight[0] > 0
    assert np.mean(learned == truth) > 0.85
    assert np.corrcoef(fit.weight[0], w)[0, 1] > 0.8


def test_ties_count_half_and_the_uncertainty_shrinks_with_comparisons() -> None:
    a, b, answers, _ = _planted(1000, seed=3)
    probe_a, probe_b, _, _ = _planted(200, seed=4)
    few = fit_reward(a[:30], b[:30], answers[:30], RewardConfig(members=32, l2=1.0))
    many = fit_reward(a, b, answers, RewardConfig(members=32, l2=1.0))
    unc_few = preference(few.rewards(probe_a), few.rewards(probe_b))[1]
    unc_many = preference(many.rewards(probe_a), many.rewards(probe_b))[1]
    assert unc_many.mean() < 0.5 * unc_few.mean()
    tie = fit_reward(a[:50], b[:50], np.full(50, 0.5), RewardConfig(members=2, l2=1.0))
    assert np.abs(tie.weight[0]).max() < 1e-6  # all ties: no reward difference is learned


def test_bad_comparisons_are_refused_naming_the_field() -> None:
    a = np.zeros((3, 4))
    for args, field in (((a, np.zeros((3, 5)), np.ones(3)), "second"), ((a, a, np.ones(2)), "outcome"),
                        ((a, a, np.array([1.0, 0.2, 0.0])), "outcome"), ((a[:0], a[:0], np.ones(0)), "outcome")):
        with pytest.raises(InvalidInput) as raised:
            fit_reward(*args)
        assert raised.value.field == field
    with pytest.raises(InvalidInput) as raised:
        RewardConfig(l2=0.0)
    assert raised.value.field == "l2"


@pytest.mark.parametrize("engine", ["onnx", "torch"])
def test_a_reward_version_round_trips(tmp_path: Path, engine: str) -> None:
    a, b, answers, _ = _planted(200, seed=5)
    fit = fit_reward(a, b, answers, RewardConfig(members=4))
    save_reward(tmp_path / "r1", fit, {"version": "r1"})
    loaded = RewardEngine(tmp_path / "r1", engine)
    assert loaded.version == "r1" and loaded.members == 4
    np.testing.assert_allclose(loaded.rewards(a.astype(np.float32)), fit.rewards(a), atol=1e-4)
    assert loaded.rewards(np.zeros((0, 16), np.float32)).shape == (0, 4)
    with pytest.raises(InvalidInput):
        loaded.rewards(np.zeros((2, 3), np.float32))
    with pytest.raises(InvalidInput):
        save_reward(tmp_path / "r1", fit, {"version": "r1"})  # never overwritten
    (tmp_path / "r2").mkdir()
    (tmp_path / "r2" / "meta.json").write_text('{"kind": "head"}')
    with pytest.raises(ModelFileError):
        RewardEngine(tmp_path / "r2", engine)


def test_a_reward_version_keeps_its_posterior_precision(tmp_path: Path) -> None:
    a, b, answers, _ = _planted(200, seed=6)
    config = RewardConfig(members=3, l2=4.0)
    fit = fit_reward(a, b, answers, config)
    # the Hessian at the optimum: the answers do not enter it, the prior's precision does
    np.testing.assert_allclose(laplace_precision(a - b, fit.weight[0], config.l2), fit.precision, rtol=1e-12)
    assert not np.allclose(laplace_precision(a - b, fit.weight[0], 1.0), fit.precision)
    save_reward(tmp_path / "r1", fit, {"version": "r1"})
    loaded = load_reward_fit(tmp_path / "r1")
    assert loaded.n_train == 200 and loaded.precision is not None
    np.testing.assert_allclose(loaded.precision, fit.precision, rtol=1e-12)
    np.testing.assert_allclose(loaded.weight, fit.weight, rtol=1e-6)  # stored as float32
    save_reward(tmp_path / "r2", RewardFit(fit.weight, 5, 0.5), {"version": "r2"})  # members only
    assert load_reward_fit(tmp_path / "r2").precision is None
    for bad in (np.eye(3), np.full((16, 16), np.nan)):
        with pytest.raises(InvalidInput) as raised:
            save_reward(tmp_path / "r3", RewardFit(fit.weight, 5, 0.5, bad), {"version": "r3"})
        assert raised.value.field == "precision" and not (tmp_path / "r3").exists()
    (tmp_path / "r1" / "reward.safetensors").write_bytes(b"broken")
    with pytest.raises(ModelFileError):
        load_reward_fit(tmp_path / "r1")


def test_the_most_uncertain_pair_of_each_prompt_is_asked() -> None:
    # three responses: members agree on 0 vs 1 (far apart), disagree on 1 vs 2
    rewards = np.array([[5.0, 5.0, 5.0], [0.0, 0.0, 0.0], [0.0, 3.0, -3.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    pairs = most_uncertain_pairs(rewards, [[0, 1, 2], [3, 4]])
    assert (pairs.first.tolist(), pairs.second.tolist()) == ([1, 3], [2, 4])
    assert pairs.uncertainty[0] > 0.1 and pairs.uncertainty[1] == pytest.approx(0.0, abs=1e-9)
    assert pairs.p_first[1] == pytest.approx(0.5)
    with pytest.raises(InvalidInput) as raised:
        most_uncertain_pairs(rewards, [[0]])
    assert raised.value.field == "prompts[0]"


def test_the_fit_keeps_the_precision_its_members_are_drawn_from() -> None:
    a, b, answers, _ = _planted(300, dim=3, seed=5)
    fit = fit_reward(a, b, answers, RewardConfig(members=4001, l2=1.0))
    spread = np.cov(fit.weight[1:].T)  # the draws' covariance: H^-1
    np.testing.assert_allclose(spread, np.linalg.inv(fit.precision), rtol=0.1, atol=2e-3)


def _bald_closed_form(x: np.ndarray, fit: RewardFit) -> np.ndarray:
    s = np.einsum("ij,jk,ik->i", x, np.linalg.inv(fit.precision), x)
    p = 1 / (1 + np.exp(-x @ fit.weight[0]))
    return 0.5 * np.log1p(p * (1 - p) * s)


def test_predictive_information_has_its_closed_form_in_one_dimension() -> None:
    # w = 0 (p = 1/2, v = 1/4), H = 2; candidate x = 1, target t = 2: s_x = 1/2, s_t = 2, c = 1,
    # after an answer at x the target's variance is 2 - 1 / (1/2 + 4)
    fit = RewardFit(np.zeros((1, 1)), 0, 0.0, np.array([[2.0]]))
    after = 2 - 1 / (0.5 + 4)
    expected = 0.5 * (np.log(1 + 0.25 * 2) - np.log(1 + 0.25 * after))
    assert predictive_information(np.array([[1.0]]), np.array([[2.0]]), fit)[0] == pytest.approx(expected, rel=1e-12)


def test_predictive_information_goes_where_the_targets_vary_and_bald_does_not() -> None:
    fit = RewardFit(np.zeros((1, 2)), 0, 0.0, np.eye(2))
    targets = np.array([[0.5, 0.0], [-0.3, 0.0], [0.8, 0.0]])  # outcomes to predict vary along the first axis only
    candidates = np.array([[0.5, 0.0], [0.0, 2.0]])  # a small step along it; a long one across it
    epig = predictive_information(candidates, targets, fit)
    assert epig[0] > 0 and epig[1] == pytest.approx(0.0, abs=1e-15)  # nothing about the targets across them
    bald = _bald_closed_form(candidates, fit)
    assert bald[1] > bald[0]  # BALD prefers the long step: it moves the weights most


@pytest.mark.parametrize("seed", range(10))
def test_predictive_information_is_bounded_by_what_the_targets_hold_and_shrinks_with_comparisons(seed: int) -> None:
    a, b, answers, _ = _planted(600, dim=8, seed=seed)
    pool_a, pool_b, _, _ = _planted(200, dim=8, seed=seed + 50)
    candidates, targets = pool_a[:100] - pool_b[:100], pool_a[100:] - pool_b[100:]
    few = fit_reward(a[:40], b[:40], answers[:40], RewardConfig(members=2, l2=1.0))
    many = fit_reward(a, b, answers, RewardConfig(members=2, l2=1.0))
    for fit in (few, many):
        score = predictive_information(candidates, targets, fit)
        assert (score >= 0).all() and (score <= _bald_closed_form(targets, fit).mean() + 1e-12).all()
    assert predictive_information(candidates, targets, many).mean() < predictive_information(candidates, targets,
                                                                                           few).mean()


def test_predictive_information_refuses_a_fit_without_its_posterior_or_the_wrong_shapes() -> None:
    fit = RewardFit(np.zeros((2, 3)), 0, 0.0)  # a reward read from a head: members only
    with pytest.raises(InvalidInput) as raised:
        predictive_information(np.zeros((2, 3)), np.zeros((2, 3)), fit)
    assert raised.value.field == "fit"
    fit = RewardFit(np.zeros((2, 3)), 0, 0.0, np.eye(3))
    for x, t, field in ((np.zeros((2, 4)), np.zeros((2, 3)), "candidates"),
                        (np.zeros((2, 3)), np.zeros((0, 3)), "targets"),
                        (np.zeros((2, 3)), np.zeros((2, 4)), "targets")):
        with pytest.raises(InvalidInput) as raised:
            predictive_information(x, t, fit)
        assert raised.value.field == field
    bad = np.zeros((2, 3))
    bad[1, 2] = np.nan
    for x, t, block, field in ((bad, np.ones((2, 3)), 8, "candidates"), (np.ones((2, 3)), bad, 8, "targets"),
                               (np.ones((2, 3)), np.ones((2, 3)), 0, "block")):
        with pytest.raises(InvalidInput) as raised:
            predictive_information(x, t, fit, block=block)
        assert raised.value.field == field


def test_predictive_information_is_the_same_scored_in_blocks() -> None:
    a, b, answers, _ = _planted(300, dim=6, seed=9)
    fit = fit_reward(a, b, answers, RewardConfig(members=2, l2=1.0))
    candidates, targets = a[:50] - b[:50], a[50:] - b[50:]
    np.testing.assert_allclose(predictive_information(candidates, targets, fit, block=7),
                               predictive_information(candidates, targets, fit), rtol=1e-12, atol=1e-15)


def test_novelty_is_the_distance_to_the_nearest_compared_prompt() -> None:
    prompts = np.eye(3, dtype=np.float32)
    assert novelty(prompts, None).tolist() == [1, 1, 1]
    index = VectorIndex(3)
    index.add(np.array([0]), prompts[:1])
    np.testing.assert_allclose(novelty(prompts, index), [0.0, 1.0, 1.0], atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 5), min_size=1, max_size=60), st.floats(0, 1), st.floats(0.5, 30),
       st.floats(0.01, 1), st.floats(0.5, 8))
def test_pair_probabilities_are_floored_and_sum_to_what_is_asked(unc, diversity, total, floor, sharpness) -> None:
    unc = np.array(unc)
    novel = np.linspace(0, 1, len(unc))
    p = pair_probabilities(unc, novel, total, diversity, floor, sharpness)
    assert p.shape == unc.shape and ((p >= 0) & (p <= 1)).all()
    assert p.sum() == pytest.approx(min(total, len(unc)), rel=1e-6)
    assert (p > 0).all()  # every pair keeps a known, positive chance


def test_pairs_are_read_from_both_layouts_and_bad_lines_name_themselves(tmp_path: Path) -> None:
    lines = ['{"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."}',
             '{"chosen": "\\n\\nHuman: hello\\n\\nAssistant: hi there", '
             '"rejected": "\\n\\nHuman: hello\\n\\nAssistant: go away"}', ""]
    first, second = parse_pairs(lines)
    assert (first.prompt, first.chosen, first.rejected, first.context) == ("Say hi", "Hi!", "No.", "Say hi")
    assert (second.context, second.chosen, second.rejected) == ("hello", "hi there", "go away")
    for bad, field in (('{"prompt": "x", "chosen": "", "rejected": "y"}', "line 1: chosen"),
                       ("not json", "line 1"), ("[1]", "line 1")):
        with pytest.raises(InvalidInput) as raised:
            parse_pairs([bad])
        assert raised.value.field == field
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines))
    assert len(load_pairs(path)) == 2
    with pytest.raises(InvalidInput) as raised:
        load_pairs(tmp_path / "none.jsonl")
    assert raised.value.field == "FILE"


def test_the_shipped_hh_rlhf_split_loads_with_its_prompts() -> None:
    pairs = hh_rlhf_harmless()
    # the lines whose dialogues share every turn but the last reply (2,306), less three with an empty reply
    assert len(pairs) == 2303
    assert all(p.chosen and p.rejected and p.context for p in pairs)
