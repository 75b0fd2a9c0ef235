"""The real MiniLM encoder (the packaged weights, exported to ONNX once per test module): it reproduces
sentence-transformers, ONNX and torch agree, bucketing keeps row order, the export cache is reused and
rebuilt when corrupt, and ``make_runtime`` puts encoder, head and embedding cache together."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from winnow.core.domain.errors import InvalidInput, ModelFileError
from winnow.core.ml.encoder import EmbeddingCache, OnnxEncoder, TorchEncoder, export_onnx
from winnow.core.ml.head import Head, HeadConfig, save_model
from winnow.core.ml.runtime import TorchRuntime, make_runtime

pytestmark = pytest.mark.slow

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "hi",
    "word " * 300,  # truncated at 256 tokens
    "I am still waiting on my card?",
    "How do I top up with Apple Pay from my bank account in another country?",
]
# sentence-transformers 6.2.0 (all-MiniLM-L6-v2, CPU) on SENTENCES[0] and SENTENCES[6]: first 8 components.
REFERENCE = {
    0: [0.033242, 0.004406, -0.006277, 0.048379, -0.138702, -0.033617, 0.101128, -0.054385],
    6: [-0.035352, -0.042137, -0.002757, 0.031937, 0.023190, -0.018297, 0.030449, -0.029110],
}
CLASSES = ["card_arrival", "top_up", "refund"]


def make_version(parent: Path, name: str, dim: int) -> tuple[Path, Head]:
    head = Head(HeadConfig(dim=dim, n_classes=len(CLASSES)))
    save_model(parent / name, head, {"version": name, "classes": CLASSES, "temperature": 1.5, "trained_on": 42})
    return parent / name, head


def reference_logits(head: Head, emb: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return head.eval()(torch.from_numpy(emb)).numpy()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("winnow-cache")


@pytest.fixture(scope="module")
def onnx_path(cache_dir: Path) -> Path:
    return export_onnx(cache_dir)


@pytest.fixture(scope="module")
def onnx_encoder(onnx_path: Path) -> OnnxEncoder:
    return OnnxEncoder(onnx_path, device="cpu")


@pytest.fixture(scope="module")
def torch_encoder() -> TorchEncoder:
    return TorchEncoder(device="cpu")


# --- encoders ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoded(onnx_encoder: OnnxEncoder, torch_encoder: TorchEncoder) -> tuple[np.ndarray, np.ndarray]:
    """SENTENCES through the ONNX and the torch encoder."""
    return onnx_encoder.encode(SENTENCES), torch_encoder.encode(SENTENCES)


def test_encoders_reproduce_sentence_transformers(encoded: tuple[np.ndarray, np.ndarray]) -> None:
    for emb in encoded:
        for row, expected in REFERENCE.items():
            np.testing.assert_allclose(emb[row, :8], expected, atol=2e-6)
        assert emb[0] @ emb[1] == pytest.approx(0.755337, abs=1e-5)  # paraphrase
        assert emb[0] @ emb[1] > emb[0] @ emb[2]  # ... closer than an unrelated sentence


def test_onnx_and_torch_encoders_agree(encoded: tuple[np.ndarray, np.ndarray], onnx_encoder: OnnxEncoder,
                                      torch_encoder: TorchEncoder) -> None:
    a, b = encoded
    assert a.shape == b.shape == (len(SENTENCES), 384) and a.dtype == b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert (a * b).sum(axis=1).min() > 0.999
    assert onnx_encoder.encoder_id != torch_encoder.encoder_id
    assert onnx_encoder.encoder_id.split("/")[0] == torch_encoder.encoder_id.split("/")[0]  # same weights hash


def test_empty_input_gives_empty_matrix(onnx_encoder: OnnxEncoder, torch_encoder: TorchEncoder) -> None:
    for encoder in (onnx_encoder, torch_encoder):
        assert encoder.encode([]).shape == (0, 384)


def test_bucketed_batches_return_rows_in_input_order(onnx_path: Path, onnx_encoder: OnnxEncoder) -> None:
    texts = SENTENCES[::-1] + SENTENCES[:3]
    bucketed = OnnxEncoder(onnx_path, device="cpu", max_batch=3, max_tokens=64).encode(texts)
    one_by_one = OnnxEncoder(onnx_path, device="cpu", max_batch=1).encode(texts)
    np.testing.assert_allclose(bucketed, one_by_one, atol=1e-5)
    np.testing.assert_allclose(bucketed[-3:], onnx_encoder.encode(SENTENCES[:3]), atol=1e-5)


def test_export_is_reused_and_a_corrupt_export_is_rebuilt(onnx_path: Path, cache_dir: Path, tmp_path: Path) -> None:
    before = onnx_path.stat()
    assert export_onnx(cache_dir) == onnx_path
    after = onnx_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not written again
    assert [p.name for p in cache_dir.iterdir() if p.suffix == ".tmp"] == []

    corrupt = tmp_path / onnx_path.name
    corrupt.write_bytes(onnx_path.read_bytes()[: before.st_size // 2])
    with pytest.raises(ModelFileError, match=onnx_path.name):
        OnnxEncoder(corrupt, device="cpu")
    assert export_onnx(tmp_path) == corrupt
    assert corrupt.stat().st_size == before.st_size
    assert OnnxEncoder(corrupt, device="cpu").encode(["hi"]).shape == (1, 384)


def test_make_runtime_uses_cached_export_and_embedding_cache(onnx_path: Path, cache_dir: Path,
                                                             onnx_encoder: OnnxEncoder, tmp_path: Path) -> None:
    folder, head = make_version(tmp_path, "v1", dim=384)
    with pytest.raises(InvalidInput, match="engine"):
        make_runtime("tensorrt", cache_dir=cache_dir)
    mtime = onnx_path.stat().st_mtime_ns
    runtime = make_runtime("onnx", device="cpu", cache_dir=cache_dir, model_folder=folder)
    assert onnx_path.stat().st_mtime_ns == mtime
    pred = runtime.predict(SENTENCES[:3])
    np.testing.assert_allclose(pred.embeddings, onnx_encoder.encode(SENTENCES[:3]), atol=1e-5)
    np.testing.assert_allclose(pred.logits, reference_logits(head, pred.embeddings), atol=1e-4)
    cached, hit = EmbeddingCache(cache_dir / "embeddings.sqlite", onnx_encoder.encoder_id).get_many(SENTENCES[:3])
    assert hit.all()
    np.testing.assert_array_equal(cached, pred.embeddings)

    torch_runtime = make_runtime("torch", device="cpu", cache_dir=tmp_path, embedding_cache=False)
    assert isinstance(torch_runtime, TorchRuntime) and isinstance(torch_runtime.encoder, TorchEncoder)
    plain = torch_runtime.predict(SENTENCES[:3])
    assert plain.logits is None and plain.model_version is None
    assert (plain.embeddings * pred.embeddings).sum(axis=1).min() > 0.999


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_encoder_fp16_on_cuda_matches_cpu(encoded: tuple[np.ndarray, np.ndarray]) -> None:
    encoder = TorchEncoder(device="cuda")
    assert encoder.encoder_id.endswith("torch-fp16")
    assert (encoder.encode(SENTENCES) * encoded[1]).sum(axis=1).min() > 0.999


@pytest.mark.gpu
@pytest.mark.skipif("CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers(),
                    reason="needs ONNX Runtime's CUDA execution provider (onnxruntime-gpu)")
def test_onnx_encoder_on_cuda_matches_cpu(encoded: tuple[np.ndarray, np.ndarray], onnx_path: Path) -> None:
    encoder = OnnxEncoder(onnx_path, device="cuda")
    assert encoder._session.get_providers()[0] == "CUDAExecutionProvider"
    assert (encoder.encode(SENTENCES) * encoded[0]).sum(axis=1).min() > 0.9999


# --- a second real encoder: bge-small-en-v1.5 (int8 ONNX, shipped in the compartment package) -------------------

def test_bge_small_runs_as_declared_and_ranks_paraphrases_first(tmp_path: Path):
    runtime = make_runtime("onnx", "cpu", cache_dir=tmp_path, encoder="bge-small")
    encoder = runtime.encoder
    assert encoder.encoder_id.startswith("bge-small-en-v1.5-int8@6c9c6101a956d62d+cls/onnx") and encoder.dim == 384
    emb = encoder.encode(SENTENCES)
    assert emb.shape == (len(SENTENCES), 384) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[0, 3]  # eating food ~ eating bread, not a baby or a horse
    assert sims[6, 7] < sims[0, 1]
    minilm = make_runtime("onnx", "cpu", cache_dir=tmp_path).encoder  # same cache file, its own vectors
    assert not np.allclose(minilm.encode(SENTENCES[:2]), emb[:2], atol=0.05)
    np.testing.assert_array_equal(encoder.encode(SENTENCES[:2]), emb[:2])


def test_bge_small_has_no_torch_engine(tmp_path: Path):
    with pytest.raises(InvalidInput) as e:
        make_runtime("torch", "cpu", cache_dir=tmp_path, encoder="bge-small")
    assert e.value.field == "engine"


def test_the_default_runs_minilm_and_bge_small_side_by_side(tmp_path: Path):
    """The settings' default on ONNX Runtime: 768-d unit vectors, each half its part's vectors (from the
    parts' own cache entries) over sqrt(2), paraphrases ranked first; MiniLM alone on torch."""
    from winnow.core.domain.settings import RuntimeConfig

    default = RuntimeConfig()
    runtime = make_runtime(default.engine, "cpu", cache_dir=tmp_path, encoder=default.encoder)
    emb = runtime.encoder.encode(SENTENCES)
    assert runtime.encoder.dim == 768 and emb.shape == (len(SENTENCES), 768)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    parts = [make_runtime("onnx", "cpu", cache_dir=tmp_path, encoder=name).encoder for name in ("minilm", "bge-small")]
    np.testing.assert_allclose(emb, np.hstack([p.encode(SENTENCES) for p in parts]) / np.sqrt(2), atol=1e-6)
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[0, 3]
    assert RuntimeConfig(engine="torch").encoder == "minilm"


# --- a third real encoder: all-mpnet-base-v2 (MPNet, unpacked from its five PyPI packages) ----------------------

# transformers 4.57.1's MPNetModel (CPU, fp32) on SENTENCES, mean-pooled and L2-normalised as
# sentence-transformers pools all-mpnet-base-v2: first 8 components of rows 0 and 6, and the cosine of rows 0, 1
MPNET_REFERENCE = {
    0: [0.035501, -0.008432, 0.022024, 0.016263, -0.005402, 0.006836, -0.096077, 0.026986],
    6: [0.033118, 0.024241, -0.027198, 0.012669, -0.027675, 0.018258, 0.000166, 0.018616],
}


@pytest.fixture(scope="module")
def mpnet_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mpnet-cache")


def test_mpnet_is_unpacked_once_checked_against_upstreams_hash(mpnet_cache: Path, monkeypatch: pytest.MonkeyPatch):
    import winnow.core.ml.encoder as encoder

    monkeypatch.setattr(encoder, "MPNET_SHA256", "0" * 64)  # weights that are not upstream's are refused
    with pytest.raises(ModelFileError, match="not upstream's"):
        encoder.mpnet_files(mpnet_cache)
    assert not (mpnet_cache / "encoders" / f"all-mpnet-base-v2-{'0' * 16}").exists()
    assert [p.name for p in (mpnet_cache / "encoders").iterdir()] == []  # nothing half-unpacked is left
    monkeypatch.undo()
    folder = encoder.mpnet_files(mpnet_cache)
    assert folder.name == "all-mpnet-base-v2-78c0197b6159d926"
    assert encoder.weights_sha256(folder / "model.safetensors") == encoder.MPNET_SHA256
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert encoder.mpnet_files(mpnet_cache) == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_mpnet_reproduces_the_reference_implementation_in_torch_and_onnx(mpnet_cache: Path,
                                                                         monkeypatch: pytest.MonkeyPatch):
    from winnow.core.ml.encoder import encoder_spec, make_encoder

    monkeypatch.setenv("WINNOW_CACHE_DIR", str(mpnet_cache))
    spec = encoder_spec("mpnet")
    assert (spec.name, spec.pooling, spec.max_length) == ("all-mpnet-base-v2", "mean", 384)
    for engine in ("torch", "onnx"):
        encoder = make_encoder(spec, engine, mpnet_cache, device="cpu")
        assert encoder.dim == 768 and encoder.encoder_id.startswith("all-mpnet-base-v2@78c0197b6159d926/")
        emb = encoder.encode(SENTENCES)
        for row, expected in MPNET_REFERENCE.items():
            np.testing.assert_allclose(emb[row, :8], expected, atol=2e-6)
        assert emb[0] @ emb[1] == pytest.approx(0.660113, abs=1e-5)
        assert emb[0] @ emb[1] > emb[0] @ emb[2]
