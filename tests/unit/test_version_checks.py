"""A model version keeps the checks its threshold was chosen on (``checks.npz``), as the choice saw them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from winnow.core.domain.errors import ModelFileError
from winnow.core.domain.settings import TrainConfig
from winnow.core.ml.autoaccept import choose_threshold
from winnow.core.ml.training import CHECKS_FILE, Checks, train, write_version


def noisy_classes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three overlapping clusters on the unit sphere (a head is right on most, not all): [n, 16], [n]."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = np.eye(16)[y] * 1.5 + rng.standard_normal((n, 16))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def test_a_version_keeps_its_threshold_sample_and_its_choice_is_made_again_from_it(tmp_path: Path) -> None:
    """Only the items of ``threshold_mask`` are kept, with their weights; choosing on them again gives the
    version's threshold."""
    x, y = noisy_classes(600)
    mask = np.arange(600) % 3 != 0
    weights = np.where(np.arange(600) % 2 == 0, 5.0, 1.0)
    config = TrainConfig(folds=5, neighbours=0, threshold_weights="inverse_probability")
    result = train(x, y, 3, 0.9, config, threshold_mask=mask, threshold_weights=weights)
    write_version(tmp_path / "v1", result, "v1", ["a", "b", "c"], config)
    checks = Checks.load(tmp_path / "v1")
    assert checks is not None and len(checks.confidence) == mask.sum()
    assert np.array_equal(checks.weights, weights[mask]) and checks.correct.dtype == np.bool_
    again = choose_threshold(checks.confidence, checks.correct, 0.9, config.confidence_level, config.min_support,
                             checks.weights)
    assert again == result.threshold


def test_checks_missing_or_damaged(tmp_path: Path) -> None:
    assert Checks.load(tmp_path) is None  # a version written before versions kept them
    (tmp_path / CHECKS_FILE).write_bytes(b"not a numpy file")
    with pytest.raises(ModelFileError, match=CHECKS_FILE):
        Checks.load(tmp_path)
    Checks(np.array([0.9, 0.95]), np.array([True, False]), np.ones(2)).save(tmp_path)
    whole = (tmp_path / CHECKS_FILE).read_bytes()
    (tmp_path / CHECKS_FILE).write_bytes(whole[: len(whole) // 2])  # cut off mid-write
    with pytest.raises(ModelFileError, match=CHECKS_FILE):
        Checks.load(tmp_path)
    Checks(np.array([0.9, 0.95]), np.array([True, False]), np.array([1.0])).save(tmp_path)
    with pytest.raises(ModelFileError, match="inconsistent"):
        Checks.load(tmp_path)
    Checks(np.array([0.9, np.nan]), np.array([True, False]), np.ones(2)).save(tmp_path)
    with pytest.raises(ModelFileError, match="inconsistent"):
        Checks.load(tmp_path)
