"""Inference runtime: MiniLM encoders (ONNX, torch), bucketing, export cache, heads, atomic swap, embedding cache."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from winnow.core.domain.errors import InvalidInput, ModelFileError
from winnow.core.domain.settings import TrainConfig
from winnow.core.ml.encoder import (
    CachedEncoder,
    EmbeddingCache,
    Encoder,
    plan_batches,
)
from winnow.core.ml.head import (
    Head,
    HeadConfig,
    OnnxHead,
    TorchHead,
    load_head,
    load_meta,
    save_model,
)
from winnow.core.ml.runtime import OnnxRuntime, TorchRuntime
from winnow.core.ml.training import head_logits, train

CLASSES = ["card_arrival", "top_up", "refund"]


class FakeEncoder(Encoder):
    """Deterministic pseudo-embeddings per text; records every call."""

    encoder_id = "fake/test"

    def __init__(self, dim: int = 16) -> None:
        self.dim = dim
        self.calls: list[list[str]] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        rows = [np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim) for t in texts]
        return np.array(rows, dtype=np.float32).reshape(len(texts), self.dim)


def make_version(parent: Path, name: str, dim: int = 16, seed: int = 0, hidden: int = 0, members: int = 1
                 ) -> tuple[Path, Head]:
    torch.manual_seed(seed)
    head = Head(HeadConfig(dim=dim, n_classes=len(CLASSES), hidden=hidden, members=members))
    save_model(parent / name, head, {"version": name, "classes": CLASSES, "temperature": 1.5, "trained_on": 42})
    return parent / name, head


def reference_logits(head: Head, emb: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return head.eval()(torch.from_numpy(emb)).numpy()


# --- batching ----------------------------------------------------------------------------------------------------

def test_plan_batches_known_answer() -> None:
    lengths = np.array([3, 10, 5, 10, 1])
    batches = plan_batches(lengths, max_batch=2, max_tokens=15)  # longest first, rows * longest <= 15
    assert [b.tolist() for b in batches] == [[1], [3], [2, 0], [4]]
    assert sorted(np.concatenate(plan_batches(np.arange(100) % 7 + 1, 8, 20)).tolist()) == list(range(100))
    with pytest.raises(InvalidInput, match="max_batch"):
        plan_batches(lengths, max_batch=0)


# --- heads ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("hidden", "members"), [(0, 1), (8, 3)])
def test_onnx_and_torch_heads_agree(tmp_path: Path, hidden: int, members: int) -> None:
    folder, head = make_version(tmp_path, "v1", hidden=hidden, members=members)
    emb = np.random.default_rng(0).standard_normal((37, 16)).astype(np.float32)
    onnx_logits, torch_logits = OnnxHead(folder, "cpu").logits(emb), TorchHead(folder, "cpu").logits(emb)
    assert onnx_logits.shape == torch_logits.shape == (37, members, len(CLASSES))
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4)
    np.testing.assert_allclose(torch_logits, reference_logits(head, emb), atol=1e-6)
    meta = load_meta(folder)
    assert (meta["version"], meta["classes"], meta["temperature"], meta["trained_on"]) == ("v1", CLASSES, 1.5, 42)
    assert (meta["dim"], meta["hidden"], meta["members"]) == (16, hidden, members)
    assert OnnxHead(folder, "cpu").logits(np.zeros((0, 16), np.float32)).shape == (0, members, len(CLASSES))
    with pytest.raises(InvalidInput, match="embeddings"):
        OnnxHead(folder, "cpu").logits(np.zeros((2, 5), np.float32))


def test_dropout_draws_from_its_generator_and_only_in_training() -> None:
    config = HeadConfig(dim=16, n_classes=3, hidden=32, dropout=0.5)
    head, twin = Head(config, torch.Generator().manual_seed(0)), Head(config, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(head.parameters(), twin.parameters()))  # seeded initialisation
    emb = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    head.train()
    first = head(emb, torch.Generator().manual_seed(2))  # [B, M, C]
    assert torch.equal(first, head(emb, torch.Generator().manual_seed(2)))
    assert not torch.equal(first, head(emb, torch.Generator().manual_seed(3)))
    head.eval()
    assert torch.equal(head(emb), head(emb, torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("hidden", [0, 8])
def test_training_leaves_the_process_torch_seed_and_threads_alone(hidden: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 16)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    config = TrainConfig(hidden=hidden, dropout=0.2 if hidden else 0.0, members=2 if hidden else 1, steps=20,
                         folds=3, min_support=5)
    threads, state = torch.get_num_threads(), torch.get_rng_state()
    first = train(x, y, 3, 0.9, config)
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(12345)  # another thread seeding the process changes nothing
    second = train(x, y, 3, 0.9, config)
    for a, b in zip(first.head.parameters(), second.head.parameters()):
        assert torch.equal(a, b)


def test_self_training_labels_join_the_final_fit_only() -> None:
    """Certified model labels (self-training) change the fitted head, never the temperature or the
    threshold, which are cross-fitted on people's labels alone."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    config = TrainConfig(folds=3, min_support=5)
    people = train(x[:60], y[:60], 3, 0.9, config)
    both = train(x[:60], y[:60], 3, 0.9, config, extra_embeddings=x[60:], extra_labels=y[60:])
    assert (people.temperature, people.threshold) == (both.temperature, both.threshold)
    held = rng.standard_normal((2000, 16)).astype(np.float32)
    truth = (held[:, 0] > 0).astype(np.int64) + (held[:, 1] > 0)
    accuracy = [float((head_logits(r.head, held).mean(1).argmax(1) == truth).mean()) for r in (people, both)]
    assert accuracy[1] > accuracy[0]


def test_save_model_refuses_overwrite_and_bad_meta(tmp_path: Path) -> None:
    folder, head = make_version(tmp_path, "v1")
    with pytest.raises(InvalidInput, match="already exists"):
        save_model(folder, head, {"version": "v1", "classes": CLASSES, "temperature": 1.0})
    with pytest.raises(InvalidInput, match="meta.classes"):
        save_model(tmp_path / "v2", head, {"version": "v2", "classes": ["a"], "temperature": 1.0})
    with pytest.raises(InvalidInput, match="meta.temperature"):
        save_model(tmp_path / "v2", head, {"version": "v2", "classes": CLASSES, "temperature": 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]  # nothing half-written left behind
    with pytest.raises(InvalidInput, match="n_classes"):
        HeadConfig(dim=16, n_classes=1)


def test_corrupt_model_files_raise_model_file_error(tmp_path: Path) -> None:
    folder, _ = make_version(tmp_path, "v1")
    onnx_file = folder / "head.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:100])
    with pytest.raises(ModelFileError, match="head.onnx"):
        OnnxHead(folder, "cpu")
    (folder / "head.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a safetensors header")
    with pytest.raises(ModelFileError, match="head.safetensors"):
        load_head(folder)
    (folder / "meta.json").unlink()
    with pytest.raises(ModelFileError, match="meta.json"):
        TorchHead(folder, "cpu")


# --- runtime ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("runtime_cls", [OnnxRuntime, TorchRuntime])
def test_swap_changes_version_and_a_corrupt_folder_keeps_the_old_head(tmp_path: Path, runtime_cls: type) -> None:
    v1, head1 = make_version(tmp_path, "v1", seed=1)
    v2, head2 = make_version(tmp_path, "v2", seed=2)
    bad, _ = make_version(tmp_path, "v3", seed=3)
    (bad / "head.onnx").write_bytes(b"garbage")
    (bad / "head.safetensors").write_bytes(b"garbage")
    encoder = FakeEncoder()
    runtime = runtime_cls(encoder, None, device="cpu")
    empty = runtime.predict(["a"])
    assert (empty.logits, empty.model_version, runtime.model_version) == (None, None, None)

    runtime.swap(v1)
    texts = ["refund please", "card?"]
    first = runtime.predict(texts)
    assert first.model_version == runtime.model_version == "v1" and first.meta["temperature"] == 1.5
    np.testing.assert_allclose(first.logits, reference_logits(head1, encoder.encode(texts)), atol=1e-4)
    runtime.swap(v2)
    assert runtime.model_version == "v2"
    with pytest.raises(ModelFileError, match="v3"):
        runtime.swap(bad)
    second = runtime.predict(texts)
    assert second.model_version == "v2"
    np.testing.assert_allclose(second.logits, reference_logits(head2, encoder.encode(texts)), atol=1e-4)


def test_concurrent_predict_sees_one_whole_version(tmp_path: Path) -> None:
    folders = {}
    for seed, name in enumerate(("v1", "v2")):
        folders[name], _ = make_version(tmp_path, name, seed=seed, hidden=8)
    texts = [f"text {i}" for i in range(64)]
    encoder = FakeEncoder()
    expected = {name: OnnxHead(folder, "cpu").logits(encoder.encode(texts)) for name, folder in folders.items()}
    runtime = OnnxRuntime(encoder, folders["v1"], device="cpu")
    seen: list[tuple[str, bool]] = []
    done = threading.Event()

    def predict_until_done() -> None:
        while not done.is_set():
            p = runtime.predict(texts)
            seen.append((p.model_version, np.allclose(p.logits, expected[p.model_version], atol=1e-5)))

    worker = threading.Thread(target=predict_until_done)
    worker.start()
    swaps = 0
    try:
        while (swaps < 40 or len(seen) < 20) and worker.is_alive():  # overlap many predictions with swaps
            runtime.swap(folders["v2" if swaps % 2 == 0 else "v1"])
            swaps += 1
    finally:
        done.set()
        worker.join()
    assert len(seen) >= 20 and all(ok for _, ok in seen)


# --- embedding cache --------------------------------------------------------------------------------------------

def test_embedding_cache_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "emb.sqlite"
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    EmbeddingCache(path, "enc-a", dim=4).put_many(["x", "y", "z"], vectors)
    got, hit = EmbeddingCache(path, "enc-a", dim=4).get_many(["z", "new", "x", "x"])  # reopened from disk
    assert hit.tolist() == [True, False, True, True]
    np.testing.assert_array_equal(got, [vectors[2], np.zeros(4), vectors[0], vectors[0]])
    assert not EmbeddingCache(path, "enc-b", dim=4).get_many(["x"])[1].any()  # keyed by encoder too
    with pytest.raises(InvalidInput, match="vectors"):
        EmbeddingCache(path, "enc-a", dim=4).put_many(["x"], np.zeros((1, 5)))


def test_many_openers_of_a_new_cache_all_get_it(tmp_path: Path) -> None:
    """Prelabel members that share a host's cache open it at once: none may fail on SQLite's switch to
    WAL (which refuses all but one at once, without waiting; 2 of 30 rounds failed before)."""
    errors: list[Exception] = []
    for round_ in range(30):
        path, start = tmp_path / f"emb-{round_}.sqlite", threading.Barrier(8)

        def open_cache() -> None:
            start.wait()
            try:
                EmbeddingCache(path, "enc-a", dim=4).close()
            except Exception as e:  # collected: a thread's exception would not fail the test
                errors.append(e)

        threads = [threading.Thread(target=open_cache) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_cached_encoder_encodes_only_misses(tmp_path: Path) -> None:
    inner = FakeEncoder()
    encoder = CachedEncoder(inner, EmbeddingCache(tmp_path / "emb.sqlite", inner.encoder_id, dim=inner.dim))
    first = encoder.encode(["a", "b", "c"])
    second = encoder.encode(["c", "d", "a", "d"])
    assert inner.calls == [["a", "b", "c"], ["d"]]
    np.testing.assert_array_equal(second, inner.encode(["c", "d", "a", "d"]))
    np.testing.assert_array_equal(first[[2, 0]], second[[0, 2]])
    with pytest.raises(InvalidInput, match="cache"):
        CachedEncoder(inner, EmbeddingCache(tmp_path / "emb.sqlite", "other", dim=inner.dim))
