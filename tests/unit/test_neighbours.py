"""The neighbours' vote a model version may blend with its head (``winnow.core.ml.neighbours``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.errors import InvalidInput, ModelFileError
from winnow.core.domain.records import Item, ModelVersion, Project
from winnow.core.domain.settings import LoopConfig
from winnow.core.loop.erase import forget_in_versions
from winnow.core.loop.selector import Selector
from winnow.core.loop.topics import create_topics
from winnow.core.ml.runtime import OnnxRuntime
from winnow.core.testing.fakes import CrcEncoder
from winnow.core.loop.trainer import Trainer
from winnow.core.domain.settings import TrainConfig
from winnow.core.ml.head import OnnxHead, TorchHead
from winnow.core.ml.neighbours import BLEND_FILE, NeighbourBlend, choose_weight, votes
from winnow.core.ml.reward import fit_preference_head
from winnow.core.ml.scoring import mean_probs
from winnow.core.ml.training import train, write_version


def two_modes(n: int, seed: int = 0, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Four tight clusters on the unit sphere, two per class on opposite sides (class 0 at +e0 and -e0,
    class 1 at +e1 and -e1): no linear head separates them, a neighbour vote does."""
    rng = np.random.default_rng(seed)
    centres = np.stack([np.eye(dim)[0], -np.eye(dim)[0], np.eye(dim)[1], -np.eye(dim)[1]]) * 4
    mode = rng.integers(0, 4, n)
    x = centres[mode] + rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), mode // 2


def separable(n: int, seed: int = 0, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Two classes either side of a hyperplane, one cluster each, 20% of labels flipped at random."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = np.eye(dim)[y] * 2 + rng.standard_normal((n, dim))
    flipped = np.where(rng.random(n) < 0.2, 1 - y, y)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), flipped


def test_a_leave_one_out_vote_never_counts_the_item_itself() -> None:
    """Three items: two of class 0 close together, one of class 1 alone. Left out, the lone item's
    vote comes from the others only (class 0); counted in, it would be mostly its own."""
    bank = np.array([[1.0, 0.0], [0.99, 0.141], [0.0, 1.0]], np.float32)
    labels = np.array([0, 0, 1])
    left_out = votes(bank, labels, 2, bank, 2, 0.05, np.arange(3))
    assert left_out[2, 0] == pytest.approx(1.0) and np.allclose(left_out.sum(1), 1.0)
    counted = votes(bank, labels, 2, bank, 2, 0.05)
    assert counted[2, 1] > 0.99
    with pytest.raises(InvalidInput) as err:
        votes(bank[:1], labels[:1], 2, bank[:1], 3, 0.05, np.zeros(1, int))
    assert err.value.field == "bank"


def test_the_weight_is_the_blend_with_the_lowest_log_loss_and_zero_for_a_useless_vote() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 500)
    head = np.full((500, 4), 0.1)
    head[np.arange(500), labels] = 0.7  # right, at 0.7
    useless = np.full((500, 4), 0.25)
    assert choose_weight(head, useless, labels)[0] == 0.0
    sure = np.eye(4)[labels] * 0.97 + 0.01  # right, at 0.97
    weight, losses = choose_weight(head, sure, labels)
    assert weight == 0.75 and losses["0.75"] == min(losses.values())


@pytest.mark.parametrize("seed", range(5))
def test_where_classes_have_two_modes_the_version_blends_and_labels_them_right(tmp_path: Path, seed: int) -> None:
    """Over 5 seeds: the linear head alone is near chance on two-mode classes; the trainer gives the
    vote a weight, the version's engines (ONNX and torch) return the blend at temperature 1, and it
    labels new items far better than the head alone."""
    x, y = two_modes(600, seed)
    config = TrainConfig(folds=5)
    result = train(x, y, 2, 0.9, config)
    alone = train(x, y, 2, 0.9, dataclasses.replace(config, neighbours=0))
    assert alone.blend is None and "neighbour_weight" not in alone.metrics
    assert result.blend is not None and result.metrics["neighbour_weight"] > 0 and result.temperature == 1.0
    assert result.metrics["heldout_accuracy"] > alone.metrics["heldout_accuracy"] + 0.2
    folder = tmp_path / "v1"
    write_version(folder, result, "v1", ["a", "b"], config)
    assert (folder / BLEND_FILE).exists()
    new_x, new_y = two_modes(400, seed + 100)
    onnx, torch_engine = OnnxHead(folder), TorchHead(folder, "cpu")
    assert onnx.meta["temperature"] == 1.0 and onnx.meta["neighbours"]["bank"] == 600
    probs = mean_probs(onnx.logits(new_x), onnx.meta["temperature"])
    assert np.allclose(probs, mean_probs(torch_engine.logits(new_x), 1.0), atol=1e-4)
    assert (probs.argmax(1) == new_y).mean() > 0.95
    alone_folder = tmp_path / "alone"
    write_version(alone_folder, alone, "alone", ["a", "b"], config)
    head_only = OnnxHead(alone_folder)
    assert head_only.blend is None and not (alone_folder / BLEND_FILE).exists()
    assert (mean_probs(head_only.logits(new_x), alone.temperature).argmax(1) == new_y).mean() < 0.8


def test_where_one_region_per_class_fits_the_head_keeps_most_of_the_weight() -> None:
    """Noisy labels on linearly separable classes: the vote of 10 neighbours copies the noise, so the
    chosen blend leans on the head (weight at most a half), and its out-of-fold accuracy is no worse."""
    x, y = separable(800)
    config = TrainConfig(folds=5)
    blended = train(x, y, 2, 0.9, config)
    alone = train(x, y, 2, 0.9, dataclasses.replace(config, neighbours=0))
    assert blended.metrics["neighbour_weight"] <= 0.5
    assert blended.metrics["heldout_accuracy"] >= alone.metrics["heldout_accuracy"] - 0.01


def test_the_bank_keeps_at_most_neighbour_bank_items_and_a_preference_head_never_blends() -> None:
    x, y = two_modes(300)
    capped = train(x, y, 2, 0.9, TrainConfig(folds=5, neighbour_bank=50))
    assert capped.blend is not None and len(capped.blend.bank) == len(capped.blend.labels) == 50
    preference = train(x, y, 3, 0.9, TrainConfig(folds=5), fitter=fit_preference_head)  # answers A or B
    assert preference.blend is None


def test_a_damaged_vote_file_names_itself(tmp_path: Path) -> None:
    x, y = two_modes(300)
    result = train(x, y, 2, 0.9, TrainConfig(folds=5))
    write_version(tmp_path / "v1", result, "v1", ["a", "b"], TrainConfig(folds=5))
    whole = (tmp_path / "v1" / BLEND_FILE).read_bytes()
    (tmp_path / "v1" / BLEND_FILE).write_bytes(whole[: len(whole) // 2])  # cut off mid-copy
    with pytest.raises(ModelFileError, match=BLEND_FILE):
        OnnxHead(tmp_path / "v1")
    (tmp_path / "v1" / BLEND_FILE).write_bytes(b"not a numpy file")
    with pytest.raises(ModelFileError, match=BLEND_FILE):
        OnnxHead(tmp_path / "v1")
    bad = NeighbourBlend(result.blend.bank, result.blend.labels + 5, result.blend.ids, 2, 10, 0.05, 0.5, 1.0)
    bad.save(tmp_path)
    with pytest.raises(ModelFileError, match="inconsistent"):
        NeighbourBlend.load(tmp_path)


def test_an_erased_item_leaves_the_vote_of_every_version_on_disk_and_in_memory(tmp_path: Path) -> None:
    """The version's bank holds people's items' vectors by id. Once the store erases two items, the
    trainer's watch rewrites the file without their rows (their bytes are gone from it, the others'
    stay), a loaded engine forgets them, and with every row gone the engine gives the head alone."""
    x, y = two_modes(300)
    ids = [f"i{k}" for k in range(300)]
    config = TrainConfig(folds=5)
    result = train(x, y, 2, 0.9, config, ids=ids)
    folder = tmp_path / "models" / "v1"
    write_version(folder, result, "v1", ["a", "b"], config)
    store, bus = SqliteStore(tmp_path / "store.sqlite"), SqliteBus(tmp_path / "bus.sqlite")
    store.create_project(Project("p", ("a", "b")))
    store.add_items([Item("p", i, f"text {i}", 0.0) for i in ids])
    store.register_model(ModelVersion("p", "v1", str(folder), 0.0, 300, 1.0, float("inf")))
    create_topics(bus, "p", 1)
    engine = OnnxHead(folder)
    config = LoopConfig(erasure_check_s=0.0)
    trainer = Trainer(bus, store, Project("p", ("a", "b")), config, tmp_path / "models")
    selector = Selector(bus, store, Project("p", ("a", "b")), config)  # runs v1, loaded before the erase
    runtime = OnnxRuntime(CrcEncoder(16), folder)  # a prelabel worker's runtime, running v1
    assert trainer.forget_erased() == []
    store.erase_items("p", ["i3", "i7"], "owner", 1.0)
    selector.step()  # the workers learn of it from the store
    assert len(selector.head.blend.ids) == 298
    runtime.forget_items(["i3", "i7"])
    assert len(runtime._snapshot().blend.ids) == 298
    assert trainer.forget_erased() == ["v1"]
    kept = NeighbourBlend.load(folder)
    assert len(kept.ids) == 298 and not {"i3", "i7"} & set(kept.ids.tolist())
    raw = (folder / BLEND_FILE).read_bytes()
    assert x[3].tobytes() not in raw and x[7].tobytes() not in raw and x[5].tobytes() in raw
    assert forget_in_versions(store, "p", ["i3"]) == []  # nothing left to take out
    engine.forget(["i3", "i7"])
    assert len(engine.blend.ids) == 298
    engine.forget(ids)
    head_alone = mean_probs(engine.logits(x[:20]), 1.0)
    expected = mean_probs(engine._run(x[:20]), result.blend.temperature)  # the head's own logits
    assert len(engine.blend.bank) == 0 and np.allclose(head_alone, expected, atol=1e-5)
    trainer.close()
    selector.close()
    store.close()
    bus.close()
