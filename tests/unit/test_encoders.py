"""Any encoder: which one a name or path means (EncoderSpec), a BERT-family folder in PyTorch and as
Winnow's ONNX export, a declared ONNX graph pooled as declared, and the runtime that caches each
encoder's vectors under its own id. A tiny random BERT (real files, no packaged weights) stands in."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, normalizers, pre_tokenizers, processors
from torch import nn

from winnow.core.domain.errors import InvalidInput, ModelFileError
from winnow.core.ml.encoder import (
    Bert,
    ConcatEncoder,
    DeclaredOnnxEncoder,
    EncoderSpec,
    MPNet,
    OnnxEncoder,
    TorchEncoder,
    encoder_model,
    encoder_spec,
    encoder_specs,
    export_module,
    export_onnx,
)
from winnow.core.ml.runtime import make_runtime

WORDS = ["a", "man", "is", "eating", "food", "bread", "the", "card", "top", "up", "##s", "hi", ".", "my", "arrived"]
VOCAB = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
CONFIG = {"hidden_size": 32, "layer_norm_eps": 1e-12, "vocab_size": len(VOCAB), "max_position_embeddings": 64,
          "type_vocab_size": 2, "num_attention_heads": 2, "intermediate_size": 64, "num_hidden_layers": 2}
TEXTS = ["a man is eating food.", "hi", "my card arrived", "the man is eating bread . the cards top up", "zebra"]


def _tokenizer(folder: Path) -> None:
    tok = HFTokenizer(models.WordPiece(VOCAB, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(folder / "tokenizer.json"))


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT-family checkpoint as a Hugging Face folder: weights under the ``bert.`` prefix, pooler included."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    state = {f"bert.{k}": v.contiguous() for k, v in Bert(CONFIG).state_dict().items()}
    state["bert.pooler.dense.weight"] = torch.zeros(32, 32)
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(CONFIG))
    _tokenizer(folder)
    return folder


class _Hidden(nn.Module):
    """The BERT's last hidden state [B, L, D], unpooled: what a shipped ONNX encoder graph outputs."""

    def __init__(self, bert: Bert) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        emb = self.bert.embeddings
        x = emb.word_embeddings(input_ids) + emb.position_embeddings(emb.position_ids[:, : input_ids.shape[1]])
        x = emb.LayerNorm(x + emb.token_type_embeddings(token_type_ids))
        bias = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for layer in self.bert.encoder.layer:
            x = layer(x, bias)
        return x


@pytest.fixture(scope="module")
def onnx_folder(tmp_path_factory: pytest.TempPathFactory, bert_folder: Path) -> Path:
    folder = tmp_path_factory.mktemp("declared")
    sample = torch.ones(2, 5, dtype=torch.int64)
    axes = {0: "batch", 1: "sequence"}
    export_module(_Hidden(Bert.from_files(bert_folder)), (sample, sample, torch.zeros_like(sample)),
                  folder / "graph.onnx", ["input_ids", "attention_mask", "token_type_ids"], ["last_hidden_state"],
                  {"input_ids": axes, "attention_mask": axes, "token_type_ids": axes, "last_hidden_state": axes})
    _tokenizer(folder)
    return folder


MPNET_CONFIG = {"model_type": "mpnet", "hidden_size": 32, "layer_norm_eps": 1e-5, "vocab_size": len(VOCAB),
                "max_position_embeddings": 64, "num_attention_heads": 2, "intermediate_size": 64,
                "num_hidden_layers": 2, "relative_attention_num_buckets": 32, "pad_token_id": 1}


@pytest.fixture(scope="module")
def mpnet_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MPNet checkpoint as sentence-transformers saves one (no prefix, the pooler included), random weights."""
    folder = tmp_path_factory.mktemp("tiny-mpnet")
    torch.manual_seed(1)
    model = MPNet(MPNET_CONFIG)
    with torch.no_grad():  # visible position biases, so that a wrong bucket changes the output
        model.encoder.relative_attention_bias.weight.normal_(0.0, 2.0)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["pooler.dense.weight"] = torch.zeros(32, 32)
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(MPNET_CONFIG))
    _tokenizer(folder)
    return folder


def _declare(folder: Path, **fields) -> Path:
    (folder / "encoder.json").write_text(json.dumps({"name": "tiny", "onnx": "graph.onnx", **fields}))
    return folder


# --- which encoder a name or a path means ------------------------------------------------------------------------

def test_a_bert_folder_is_pooled_as_its_sentence_transformers_config_says(bert_folder: Path, tmp_path: Path):
    spec = encoder_spec(str(bert_folder))
    assert (spec.onnx, spec.pooling, spec.folder) == (None, "mean", bert_folder)
    (bert_folder / "1_Pooling").mkdir(exist_ok=True)
    (bert_folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    try:
        assert encoder_spec(str(bert_folder)).pooling == "cls"
    finally:
        (bert_folder / "1_Pooling" / "config.json").unlink()


def test_a_declaration_is_read_from_its_folder_or_its_file(onnx_folder: Path):
    _declare(onnx_folder, pooling="cls", max_length=16)
    for ref in (str(onnx_folder), str(onnx_folder / "encoder.json")):
        assert encoder_spec(ref) == EncoderSpec("tiny", onnx_folder, "graph.onnx", "last_hidden_state", "cls", 16)


@pytest.mark.parametrize("ref, field", [("no-such-encoder", "encoder"), ("", "encoder")])
def test_an_unknown_encoder_is_refused_naming_the_field(ref: str, field: str):
    with pytest.raises(InvalidInput) as e:
        encoder_spec(ref)
    assert e.value.field == field


@pytest.mark.parametrize("doc, field", [
    ({"onnx": "graph.onnx", "pooling": "max"}, "pooling"),
    ({"onnx": "graph.onnx", "max_length": 1}, "max_length"),
    ({"onnx": "graph.onnx", "max_length": "64"}, "max_length"),
    ({"onnx": "graph.onnx", "tokens": 64}, "encoder"),
    ({"pooling": "cls"}, "encoder"),
    ([1, 2], "encoder"),
])
def test_a_bad_declaration_is_refused_naming_the_field(onnx_folder: Path, tmp_path: Path, doc, field: str):
    declared = tmp_path / "encoder.json"
    declared.write_text(json.dumps(doc))
    for name in ("graph.onnx", "tokenizer.json"):
        (tmp_path / name).write_bytes((onnx_folder / name).read_bytes())
    with pytest.raises(InvalidInput) as e:
        encoder_spec(str(declared))
    assert e.value.field == field


def test_missing_files_and_unreadable_declarations_are_refused(tmp_path: Path):
    (tmp_path / "encoder.json").write_text("{not json")
    with pytest.raises(InvalidInput, match="not a readable"):
        encoder_spec(str(tmp_path))
    (tmp_path / "encoder.json").write_text(json.dumps({"onnx": "graph.onnx"}))
    with pytest.raises(ModelFileError, match="tokenizer.json"):
        encoder_spec(str(tmp_path))


# --- engines -----------------------------------------------------------------------------------------------------

def test_torch_and_the_onnx_export_of_a_bert_folder_agree_for_either_pooling(bert_folder: Path, tmp_path: Path):
    for pooling in ("mean", "cls"):
        spec = EncoderSpec("tiny", bert_folder, pooling=pooling, max_length=32)
        torch_out = TorchEncoder("cpu", spec=spec).encode(TEXTS)
        onnx_out = OnnxEncoder(export_onnx(tmp_path, spec), "cpu", spec=spec).encode(TEXTS)
        assert torch_out.shape == (len(TEXTS), 32)
        np.testing.assert_allclose(np.linalg.norm(torch_out, axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(onnx_out, torch_out, atol=2e-5)
    mean = TorchEncoder("cpu", spec=EncoderSpec("tiny", bert_folder)).encode(TEXTS)
    cls = TorchEncoder("cpu", spec=EncoderSpec("tiny", bert_folder, pooling="cls")).encode(TEXTS)
    assert np.abs(mean - cls).max() > 0.05  # the pooling is not ignored


def test_mpnet_buckets_relative_positions_as_mpnet_and_t5_do():
    """The bucket of (query - key): exact below 8 tokens, log-spaced from 8 to 128 over 8 buckets, capped;
    keys after the query in the upper 16. Expected values worked out by hand from that rule."""
    model = MPNet(MPNET_CONFIG)
    with torch.no_grad():  # head 0's bias is the bucket number itself
        model.encoder.relative_attention_bias.weight[:, 0] = torch.arange(32, dtype=torch.float32)
        bias = model._position_bias(210)[0, 0]
    assert bias.shape == (210, 210)
    expected = {(0, 0): 0, (5, 0): 5, (0, 5): 21, (7, 0): 7, (8, 0): 8, (20, 4): 10, (32, 0): 12, (64, 0): 14,
                (127, 0): 15, (200, 0): 15, (0, 40): 28, (0, 200): 31, (100, 100): 0}
    assert {qk: int(bias[qk]) for qk in expected} == expected


def test_an_mpnet_folder_runs_in_torch_and_as_winnows_export_alike(mpnet_folder: Path, tmp_path: Path):
    spec = encoder_spec(str(mpnet_folder))
    assert isinstance(Bert.from_files(mpnet_folder), MPNet)
    torch_encoder = TorchEncoder("cpu", spec=spec)
    batched = torch_encoder.encode(TEXTS)
    assert batched.shape == (len(TEXTS), 32) and torch_encoder.dim == 32
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, rtol=1e-5)
    alone = np.vstack([torch_encoder.encode([t]) for t in TEXTS])  # padding beside a longer text changes nothing
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    onnx_out = OnnxEncoder(export_onnx(tmp_path, spec), "cpu", spec=spec).encode(TEXTS)
    np.testing.assert_allclose(onnx_out, batched, atol=2e-5)
    cls = TorchEncoder("cpu", spec=EncoderSpec("tiny-mpnet", mpnet_folder, pooling="cls")).encode(TEXTS)
    assert np.abs(batched - cls).max() > 0.05


def test_mpnet_weights_that_do_not_match_its_config_are_refused(mpnet_folder: Path, tmp_path: Path):
    folder = tmp_path / "short"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**MPNET_CONFIG, "num_hidden_layers": 3}))
    (folder / "model.safetensors").write_bytes((mpnet_folder / "model.safetensors").read_bytes())
    with pytest.raises(ModelFileError, match="cannot load MPNet weights"):
        Bert.from_files(folder)


def test_a_declared_graph_pooled_as_declared_matches_the_same_model_in_torch(bert_folder: Path, onnx_folder: Path):
    """The declared graph outputs the hidden states; pooled in NumPy by mean (over the mask: padding in a
    batch changes nothing) or by [CLS], it gives what the BERT module pools itself."""
    for pooling in ("mean", "cls"):
        declared = DeclaredOnnxEncoder(encoder_spec(str(_declare(onnx_folder, pooling=pooling, max_length=32))), "cpu")
        reference = TorchEncoder("cpu", spec=EncoderSpec("tiny", bert_folder, pooling=pooling, max_length=32))
        assert declared.dim == 32
        np.testing.assert_allclose(declared.encode(TEXTS), reference.encode(TEXTS), atol=2e-5)
        alone = np.concatenate([declared.encode([t]) for t in TEXTS])
        np.testing.assert_allclose(alone, declared.encode(TEXTS), atol=2e-5)


def test_a_declared_graph_without_the_output_or_with_other_inputs_is_refused(onnx_folder: Path, tmp_path: Path):
    with pytest.raises(ModelFileError, match="no output 'pooled'"):
        DeclaredOnnxEncoder(encoder_spec(str(_declare(onnx_folder, output="pooled"))), "cpu")
    with pytest.raises(ModelFileError, match="rank 3"):
        DeclaredOnnxEncoder(encoder_spec(str(_declare(onnx_folder, pooling="none"))), "cpu")

    class Other(nn.Module):
        def forward(self, ids, pixels):
            return ids.float()[:, :, None].expand(-1, -1, 4) + pixels

    axes = {0: "batch", 1: "sequence"}
    export_module(Other(), (torch.ones(1, 3, dtype=torch.int64), torch.zeros(1, 3, 4)), tmp_path / "graph.onnx",
                  ["input_ids", "pixels"], ["last_hidden_state"], {"input_ids": axes, "pixels": axes})
    _tokenizer(tmp_path)
    with pytest.raises(ModelFileError, match="pixels"):
        DeclaredOnnxEncoder(encoder_spec(str(_declare(tmp_path))), "cpu")


def test_a_declared_graph_has_no_torch_engine(onnx_folder: Path):
    with pytest.raises(InvalidInput) as e:
        TorchEncoder("cpu", spec=encoder_spec(str(_declare(onnx_folder))))
    assert e.value.field == "engine"


def test_the_runtime_caches_each_encoders_vectors_under_its_own_id(bert_folder: Path, onnx_folder: Path,
                                                                   tmp_path: Path):
    """Two encoders on one cache file: each gets its own vectors back, never the other's."""
    bert = make_runtime("onnx", "cpu", cache_dir=tmp_path, encoder=str(bert_folder))
    declared = make_runtime("onnx", "cpu", cache_dir=tmp_path, encoder=str(_declare(onnx_folder, pooling="cls")))
    assert bert.encoder.encoder_id != declared.encoder.encoder_id
    assert "+cls" in declared.encoder.encoder_id and "+cls" not in bert.encoder.encoder_id
    first = bert.encoder.encode(TEXTS), declared.encoder.encode(TEXTS)
    again = bert.encoder.encode(TEXTS), declared.encoder.encode(TEXTS)  # from the cache
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert np.abs(first[0] - first[1]).max() > 0.05


def test_int8_quantises_the_export_per_channel_close_to_fp32_under_its_own_id(bert_folder: Path, tmp_path: Path):
    spec = EncoderSpec("tiny", bert_folder, max_length=32)
    fp32_path, int8_path = export_onnx(tmp_path, spec), export_onnx(tmp_path, spec, int8=True)
    assert int8_path != fp32_path and int8_path.name.endswith("-int8.onnx")
    assert export_onnx(tmp_path, spec, int8=True) == int8_path  # cached
    fp32, int8 = OnnxEncoder(fp32_path, "cpu", spec=spec), OnnxEncoder(int8_path, "cpu", spec=spec)
    assert (fp32.encoder_id.endswith("/onnx-fp32"), int8.encoder_id.endswith("/onnx-int8")) == (True, True)
    a, b = fp32.encode(TEXTS), int8.encode(TEXTS)
    cosine = (a * b).sum(1)
    assert cosine.min() > 0.98 and np.abs(a - b).max() > 1e-4  # close, and really quantised
    runtime = make_runtime("onnx", "cpu", cache_dir=tmp_path, encoder=str(bert_folder), int8=True)
    assert runtime.encoder.encoder_id.endswith("/onnx-int8")


def _matmuls(path: Path) -> dict[str, int]:
    import onnx

    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    return {op: ops.count(op) for op in ("MatMul", "MatMulInteger")}


def test_int8_keeps_mpnets_second_feed_forward_matrix_in_fp32_and_quantises_the_rest(
        mpnet_folder: Path, bert_folder: Path, tmp_path: Path):
    layers = MPNET_CONFIG["num_hidden_layers"]
    mpnet = EncoderSpec("tiny-mpnet", mpnet_folder, max_length=32)
    fp32, int8 = _matmuls(export_onnx(tmp_path, mpnet)), _matmuls(export_onnx(tmp_path, mpnet, int8=True))
    weights = 6 * layers  # q, k, v, o and the two feed-forward matrices; the rest multiply activations
    assert int8["MatMulInteger"] == weights - layers and int8["MatMul"] == fp32["MatMul"] - weights + layers
    bert = EncoderSpec("tiny", bert_folder, max_length=32)
    assert _matmuls(export_onnx(tmp_path, bert, int8=True))["MatMulInteger"] == 6 * CONFIG["num_hidden_layers"]
    a = OnnxEncoder(export_onnx(tmp_path, mpnet), "cpu", spec=mpnet).encode(TEXTS)
    b = OnnxEncoder(export_onnx(tmp_path, mpnet, int8=True), "cpu", spec=mpnet).encode(TEXTS)
    assert (a * b).sum(1).min() > 0.98


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_int8_is_refused_where_there_is_no_export_to_quantise(onnx_folder: Path, bert_folder: Path, tmp_path: Path,
                                                             engine: str):
    encoder = str(bert_folder) if engine == "torch" else str(_declare(onnx_folder))
    with pytest.raises(InvalidInput) as e:
        make_runtime(engine, "cpu", cache_dir=tmp_path, encoder=encoder, int8=True)
    assert e.value.field == "encoder_int8"


def test_the_encoder_benchmark_measures_each_encoder_and_the_int8_cosine(bert_folder: Path, tmp_path: Path):
    import random

    from winnow.bench.encoders import parse_encoder, run_encoder_benchmark
    from winnow.core.data.datasets import Dataset
    from winnow.core.domain.settings import LoopConfig

    rng = random.Random(0)
    topics = {"food": ["a man is eating food", "eating bread", "the man is eating"],
              "card": ["my card arrived", "the cards", "my card is up"]}
    rows = [(rng.choice(texts) + " " + rng.choice(WORDS), label) for label, texts in topics.items() for _ in range(60)]
    rng.shuffle(rows)
    make = lambda part, name: Dataset(tuple(t for t, _ in part), tuple(c for _, c in part), ("food", "card"), name)
    out = tmp_path / "encoders.json"
    result = run_encoder_benchmark(make(rows[:90], "train"), make(rows[90:], "test"), out,
                                   LoopConfig(first_model_labels=10), (str(bert_folder), f"{bert_folder}:int8"),
                                   seeds=2, speed_texts=50)
    fp32, int8 = result["encoders"]
    assert fp32["cosine_to_fp32"] is None and 0.98 < int8["cosine_to_fp32"]["min"] <= 1.0
    assert int8["encoder_id"].endswith("/onnx-int8") and fp32["dim"] == 32
    for run in (fp32, int8):
        assert run["sentences_per_s"] > 0 and len(run["pool_reference_seeds"]) == 2
        assert 0.0 <= run["pool_reference_worst"] <= run["pool_reference_final_label_accuracy"] <= 1.0
    assert out.is_file() and out.with_suffix(".png").is_file()
    assert parse_encoder("minilm:int8") == ("minilm", True) and parse_encoder("bge-small") == ("bge-small", False)
    with pytest.raises(InvalidInput):
        parse_encoder(":int8")


def test_an_fp16_copy_of_a_bert_folder_encodes_as_the_original(bert_folder: Path, tmp_path: Path):
    """What bench/gpu.sh carries to a GPU machine: the weights in fp16, loaded into fp32 on the CPU."""
    from winnow.bench.gpu import half_copy

    half = half_copy(bert_folder, tmp_path / "half")
    assert (half / "model.safetensors").stat().st_size < 0.6 * (bert_folder / "model.safetensors").stat().st_size
    original = TorchEncoder("cpu", spec=EncoderSpec("tiny", bert_folder)).encode(TEXTS)
    copied = TorchEncoder("cpu", spec=EncoderSpec("tiny", half)).encode(TEXTS)
    assert (original * copied).sum(axis=1).min() > 0.999


def test_tensorrt_is_refused_off_cuda_or_without_its_provider(bert_folder: Path, tmp_path: Path):
    with pytest.raises(InvalidInput) as err:
        spec = EncoderSpec("tiny", bert_folder)
        OnnxEncoder(export_onnx(tmp_path, spec), "cpu", spec=spec, tensorrt=True)
    assert err.value.field == "device"


def test_the_gpu_run_measures_what_this_machine_has_and_says_what_it_skipped(bert_folder: Path, tmp_path: Path):
    """``winnow bench gpu`` at toy sizes: the CPU baselines are measured; each CUDA part either ran or
    names why not; a failing section keeps its error and the others their numbers."""
    from winnow.bench.gpu import run_gpu_benchmark
    from winnow.core.select.gpu import cuda_count

    out = tmp_path / "gpu.json"
    result = run_gpu_benchmark(out, encoder=str(bert_folder), size=3000, budget=40, clusters=16, texts=96,
                               cpu_texts=64, pipeline_items=50)
    saved = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0 and saved["total_s"] == result["total_s"]
    engines = saved["encoder"]["engines"]
    assert engines["onnx-cpu"]["sentences_per_s"] > 0
    for name in ("torch-cuda-fp16", "onnx-cuda", "onnx-tensorrt"):
        assert "sentences_per_s" in engines[name] or engines[name]["skipped"]
    kcenter = saved["selection"]["kcenter"]
    assert kcenter["cpu"]["wall_s"] > 0 and 0 < kcenter["cpu"]["coverage_mean"] <= kcenter["cpu"]["coverage_max"]
    assert saved["selection"]["kmeans"]["faiss-cpu"]["wall_s"] > 0
    if not cuda_count():
        assert "CUDA" in kcenter["cuda"]["skipped"] and "CUDA" in saved["pipeline"]["skipped"]
    broken = run_gpu_benchmark(tmp_path / "broken.json", encoder=str(tmp_path / "missing"), size=2000, budget=10,
                               clusters=4, texts=8, cpu_texts=8)
    assert "missing" in broken["encoder"]["error"] and broken["selection"]["kcenter"]["cpu"]["wall_s"] > 0
    too_many = run_gpu_benchmark(tmp_path / "too-many.json", encoder=str(bert_folder), size=100, budget=500,
                                 clusters=4, texts=8, cpu_texts=8)  # more picks than rows: that section fails
    assert too_many["selection"]["error"] and too_many["encoder"]["engines"]["onnx-cpu"]["sentences_per_s"] > 0


# --- encoders side by side ----------------------------------------------------------------------------------------


def test_two_encoders_side_by_side_concatenate_their_vectors_normalised(bert_folder: Path, onnx_folder: Path,
                                                                        tmp_path: Path):
    """``a+b``: each part's vectors, scaled by 1/sqrt(2) so the whole is unit length; each part cached under
    its own id, so a part's vectors serve it alone too; the project's encoder model names both parts."""
    declared = str(_declare(onnx_folder, pooling="cls"))
    both = make_runtime("onnx", "cpu", cache_dir=tmp_path, encoder=f"{bert_folder}+{declared}")
    alone = [make_runtime("onnx", "cpu", cache_dir=tmp_path, encoder=ref) for ref in (str(bert_folder), declared)]
    assert isinstance(both.encoder, ConcatEncoder) and both.encoder.dim == sum(r.encoder.dim for r in alone) == 64
    vectors = both.encoder.encode(TEXTS)
    np.testing.assert_allclose(vectors, np.hstack([r.encoder.encode(TEXTS) for r in alone]) / np.sqrt(2), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert both.encoder.encode([]).shape == (0, 64)
    models = [encoder_model(r.encoder.encoder_id) for r in alone]
    assert encoder_model(both.encoder.encoder_id) == "&".join(models)
    assert both.encoder.encoder_id.endswith("/onnx-fp32&onnx")
    for part, one in zip(both.encoder.parts, alone):
        assert part.encoder_id == one.encoder.encoder_id  # the same cache entries
    swapped = make_runtime("onnx", "cpu", cache_dir=tmp_path, encoder=f"{declared}+{bert_folder}")
    assert swapped.encoder.encoder_id != both.encoder.encoder_id  # the order is part of the vectors


def test_an_erase_forgets_the_text_in_every_parts_cache(bert_folder: Path, onnx_folder: Path, tmp_path: Path):
    import hashlib

    declared = str(_declare(onnx_folder, pooling="cls"))
    both = make_runtime("onnx", "cpu", cache_dir=tmp_path, encoder=f"{bert_folder}+{declared}")
    both.encoder.encode(TEXTS)
    caches = [part.cache for part in both.encoder.parts]
    assert all(cache.get_many(TEXTS)[1].all() for cache in caches)
    digests = [hashlib.sha256(t.encode()).hexdigest() for t in TEXTS[:2]]
    assert both.forget(digests) == 4  # two texts, two parts
    for cache in caches:
        assert cache.get_many(TEXTS)[1].tolist() == [False, False, True, True, True]
    assert both.forget([]) == 0


def test_int8_side_by_side_quantises_the_export_and_leaves_a_declared_graph_as_shipped(
        bert_folder: Path, onnx_folder: Path, tmp_path: Path):
    declared = str(_declare(onnx_folder))
    both = make_runtime("onnx", "cpu", cache_dir=tmp_path, encoder=f"{bert_folder}+{declared}", int8=True)
    assert both.encoder.encoder_id.endswith("/onnx-int8&onnx")
    copy = tmp_path / "declared-copy"
    copy.mkdir()
    for name in ("graph.onnx", "tokenizer.json", "encoder.json"):
        (copy / name).write_bytes((onnx_folder / name).read_bytes())
    with pytest.raises(InvalidInput) as e:  # nothing in it to quantise
        make_runtime("onnx", "cpu", cache_dir=tmp_path, encoder=f"{declared}+{copy}", int8=True)
    assert e.value.field == "encoder_int8"
    with pytest.raises(InvalidInput) as e:  # a declared graph has no torch weights, beside another or not
        make_runtime("torch", "cpu", cache_dir=tmp_path, encoder=f"{bert_folder}+{declared}")
    assert e.value.field == "engine"


@pytest.mark.parametrize("ref", ["minilm+", "+minilm", "minilm++bge-small", "minilm+minilm", "no-such-encoder+minilm"])
def test_a_bad_side_by_side_name_is_refused_naming_the_field(ref: str):
    with pytest.raises(InvalidInput) as e:
        encoder_specs(ref)
    assert e.value.field == "encoder"


def test_a_path_with_a_plus_in_its_name_is_one_encoder(bert_folder: Path, tmp_path: Path):
    folder = tmp_path / "tiny+bert"
    folder.mkdir()
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        (folder / name).write_bytes((bert_folder / name).read_bytes())
    (spec,) = encoder_specs(str(folder))
    assert spec.folder == folder and spec.name == "tiny+bert"


@pytest.mark.parametrize("model, ref", [
    ("all-MiniLM-L6-v2@53aa51172d142c89", "minilm"),
    ("all-MiniLM-L6-v2@53aa51172d142c89&bge-small-en-v1.5-int8@6c9c6101a956d62d+cls", "minilm+bge-small"),
    ("all-mpnet-base-v2@78c0197b6159d926", "mpnet"),
    ("all-MiniLM-L6-v2@53aa51172d142c89&tiny@0011223344556677", None),
    ("crc", None),
])
def test_a_bound_encoder_model_names_the_built_in_flag_that_runs_it(model: str, ref: str | None):
    from winnow.core.ml.encoder import builtin_ref

    assert builtin_ref(model) == ref


def test_the_default_encoder_is_two_side_by_side_on_onnx_and_minilm_on_torch():
    from winnow.core.domain.settings import RuntimeConfig, resolve

    assert RuntimeConfig().encoder == "minilm+bge-small"
    assert RuntimeConfig(engine="torch").encoder == resolve(RuntimeConfig, {"engine": "torch"}).encoder == "minilm"
    assert resolve(RuntimeConfig, {}, {"WINNOW_ENCODER": "mpnet"}).encoder == "mpnet"
