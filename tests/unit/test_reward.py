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
from winnow.core.ml.reward import RewardConfig, RewardEngine, fit_reward, preference, save_reward
from winnow.core.select.index import VectorIndex
from winnow.core.select.pairs import most_uncertain_pairs, novelty, pair_probabilities


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
