"""The label benchmark's pool reference: margin picks over the whole dataset, the model labeling the rest."""

import numpy as np
import pytest
from winnow.bench.labels import pool_reference
from winnow.core.domain.settings import LoopConfig


def _blobs(n: int, classes: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, 16))
    y = rng.integers(0, classes, n)
    x = centers[y] + spread * rng.normal(size=(n, 16))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


CONFIG = LoopConfig(first_model_labels=20)


def test_spends_exactly_the_labels_and_labels_separable_data_right():
    x, y = _blobs(400, 3, 0.05, 0)
    ref = pool_reference(x, y, 3, 50, CONFIG, seed=0, batch=10)
    assert ref["human_labels"] == 50 and ref["human_fraction"] == pytest.approx(50 / 400)
    assert ref["final_label_accuracy"] == 1.0 and ref["model_label_accuracy"] == 1.0


def test_margin_picks_beat_the_same_labels_at_random_on_overlapping_classes():
    """The reference is the active one: on every seed, its model labels the rest better than a head
    fitted on as many random items does."""
    from winnow.core.ml.scoring import mean_probs
    from winnow.core.ml.training import fit_head, head_logits

    wins = 0
    for seed in range(5):
        x, y = _blobs(600, 4, 0.9, seed)
        ref = pool_reference(x, y, 4, 80, CONFIG, seed=seed, batch=20)
        picked = np.random.default_rng(seed).choice(600, 80, replace=False)
        rest = np.setdiff1d(np.arange(600), picked)
        head = fit_head(x[picked], y[picked], 4, CONFIG.train)
        random_final = (80 + (mean_probs(head_logits(head, x[rest]), 1.0).argmax(1) == y[rest]).sum()) / 600
        wins += ref["final_label_accuracy"] > random_final
    assert wins >= 4


def test_every_item_labeled_by_people_and_the_same_seed_gives_the_same_result():
    x, y = _blobs(100, 2, 0.5, 1)
    everything = pool_reference(x, y, 2, 500, CONFIG, seed=0)
    assert everything["human_labels"] == 100 and everything["final_label_accuracy"] == 1.0
    assert everything["model_label_accuracy"] is None
    assert pool_reference(x, y, 2, 40, CONFIG, seed=3) == pool_reference(x, y, 2, 40, CONFIG, seed=3)


def test_a_result_names_the_commit_and_the_torch_threads_it_ran_on(monkeypatch):
    """A seed reproduces only on the same code and number of torch threads: every result records both.
    Outside a git checkout (an installed wheel) the commit is None rather than a guess."""
    import re
    import subprocess
    from pathlib import Path

    import torch
    from winnow.bench import common

    env = common.environment()
    assert env["torch_threads"] == torch.get_num_threads()
    if (Path(common.__file__).resolve().parent.parent / ".git").exists():  # this checkout (CI's clean clone)
        assert re.fullmatch(r"[0-9a-f]{40}(\+changes)?", env["commit"])
    else:
        assert env["commit"] is None

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert common.environment()["commit"] is None
