"""The inference runtime: texts -> embeddings and the current head's logits, with atomic model swaps."""

from __future__ import annotations

import threading
from abc import ABC
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np
import torch
from winnow.core.domain.comparisons import pair_vectors
from winnow.core.domain.errors import InvalidInput, ModelFileError
from winnow.core.domain.settings import ENGINES
from winnow.core.ml.encoder import (
    CachedEncoder,
    ConcatEncoder,
    Encoder,
    EmbeddingCache,
    EncoderSpec,
    check_encoders,
    default_cache_dir,
    encoder_model,
    encoder_specs,
    make_encoder,
)
from winnow.core.ml.head import HeadEngine, OnnxHead, TorchHead



@dataclass(frozen=True, eq=False)
class Prediction:
    """What one call computed, all from one head snapshot.

    embeddings: float32 ``[n, dim]``, L2-normalised.
    logits: float32 ``[n, members, n_classes]`` before temperature, or None when no head is loaded yet.
    model_version: the version that made ``logits`` (None without a head).
    meta: that version's meta.json (classes, temperature, ...), read-only; None without a head.
    """

    embeddings: np.ndarray
    logits: np.ndarray | None
    model_version: str | None
    meta: Mapping[str, Any] | None


class Runtime(ABC):
    """Encoder plus a hot-swappable head.

    ``swap`` loads the new version completely before it replaces the old one under a lock, so a
    concurrent ``predict`` sees the old or the new version for its whole batch, never a mix; a failed
    load raises ModelFileError and leaves the old head serving.
    """

    head_engine: type[HeadEngine]  # how a subclass runs heads: loads a version folder on a device

    def __init__(self, encoder: Encoder, model_folder: Path | None = None, device: str = "auto") -> None:
        self.encoder, self.device = encoder, device
        self._lock = threading.Lock()
        self._head: HeadEngine | None = None
        if model_folder is not None:
            self.swap(model_folder)

    @property
    def model_version(self) -> str | None:
        head = self._snapshot()
        return None if head is None else head.version

    def _snapshot(self) -> HeadEngine | None:
        with self._lock:
            return self._head

    def swap(self, model_folder: Path) -> None:
        """Make the version in ``model_folder`` current; ModelFileError (old head kept) if it cannot be loaded
        or was fitted on another encoder's vectors (``meta["encoder"]``)."""
        head = self.head_engine(Path(model_folder), self.device)
        if head.config.dim != self.encoder.dim:
            raise ModelFileError(f"{model_folder}: head expects dim {head.config.dim}, "
                                 f"the encoder gives {self.encoder.dim}")
        fitted_on, mine = head.meta.get("encoder"), encoder_model(self.encoder.encoder_id)
        if fitted_on is not None and fitted_on != mine:
            raise ModelFileError(f"{model_folder}: head was fitted on vectors of encoder {fitted_on!r}, "
                                 f"this runtime's encoder is {mine!r}")
        with self._lock:
            self._head = head

    def predict(self, texts: Sequence[str]) -> Prediction:
        """Encode ``texts`` and score them with one head snapshot taken at the start of the call."""
        head = self._snapshot()
        return self._scored(head, self.encoder.encode(texts))  # [n, dim]

    @staticmethod
    def _scored(head: HeadEngine | None, vectors: np.ndarray) -> Prediction:
        """``vectors`` and ``head``'s logits of them (none before the first version)."""
        if head is None:
            return Prediction(vectors, None, None, None)
        return Prediction(vectors, head.logits(vectors), head.version, MappingProxyType(head.meta))

    def predict_pairs(self, first: Sequence[str], second: Sequence[str]) -> Prediction:
        """Comparisons: encode both responses of each, and score the unit difference of their embeddings
        (:func:`~winnow.core.domain.comparisons.pair_vectors`, the comparison's vector) with one head
        snapshot; ``embeddings`` are those vectors."""
        if len(first) != len(second):
            raise InvalidInput("second", f"need one second response per first one, got {len(second)} for {len(first)}")
        head = self._snapshot()
        both = self.encoder.encode([*first, *second])  # one batch (the cache serves texts seen before)
        return self._scored(head, pair_vectors(both[: len(first)], both[len(first):]))

    def forget_items(self, item_ids: Sequence[str]) -> None:
        """Drop erased items' vectors from the running version's neighbour vote (and from every version
        swapped in later: the trainer rewrites their files)."""
        head = self._snapshot()
        if head is not None:
            head.forget(item_ids)

    def forget(self, text_sha256: Sequence[str]) -> int:
        """Drop cached embeddings of erased texts (by their hex SHA-256), every part's where encoders
        run side by side; how many entries there were (0 without an embedding cache)."""
        return self.encoder.forget(text_sha256)


class OnnxRuntime(Runtime):
    """Heads run from head.onnx on ONNX Runtime."""

    head_engine = OnnxHead


class TorchRuntime(Runtime):
    """Heads run from head.safetensors in PyTorch."""

    head_engine = TorchHead


def make_runtime(engine: str = "onnx", device: str = "auto", cache_dir: Path | None = None,
                 embedding_cache: bool = True, model_folder: Path | None = None,
                 threads: int | None = None, encoder: str | EncoderSpec | Sequence[EncoderSpec] = "minilm",
                 int8: bool = False) -> Runtime:
    """Build a runtime: ``onnx`` (the encoder on ONNX Runtime: Winnow's cached export of a BERT folder,
    or a declared graph) or ``torch`` (a BERT folder in PyTorch); ``encoder`` names it
    (:func:`~winnow.core.ml.encoder.encoder_specs`: ``minilm``, ``bge-small``, a folder or an
    encoder.json, or several joined by ``+``, run side by side); ``int8``: its ONNX export quantised
    per channel (CPU; each part that is Winnow's export, where several).

    ``cache_dir`` (default :func:`default_cache_dir`) holds the ONNX export and, with ``embedding_cache``,
    embeddings.sqlite so that texts already encoded by the same encoder are not encoded again (its
    keys carry the encoder's id, so encoders never share a vector).
    ``threads`` sets ONNX Runtime's intra-op threads (None: its default).
    """
    if engine not in ENGINES:
        raise InvalidInput("engine", f"{engine!r} is not one of {ENGINES}")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    specs = (encoder,) if isinstance(encoder, EncoderSpec) else (
        encoder_specs(encoder) if isinstance(encoder, str) else tuple(encoder))
    check_encoders(specs, engine, int8)
    parts = []
    for spec in specs:  # each part cached under its own id: its vectors serve it alone or beside another
        part = make_encoder(spec, engine, cache_dir, device, threads, int8 and spec.onnx is None)  # as checked
        if embedding_cache:
            part = CachedEncoder(part, EmbeddingCache(cache_dir / "embeddings.sqlite", part.encoder_id, part.dim))
        parts.append(part)
    encoder = parts[0] if len(parts) == 1 else ConcatEncoder(parts)
    runtime_cls = OnnxRuntime if engine == "onnx" else TorchRuntime
    return runtime_cls(encoder, model_folder, device)


def set_torch_threads(engine: str, threads: int | None = None) -> int:
    """Set torch's intra-op threads once, at process start (never from inside a worker or training).

    ``threads`` None: one thread with the ``onnx`` engine, where torch only fits heads (small: one
    thread is fastest, and several on a shared CPU were 14x slower here, 70 s against 5 s for one
    ``train``), torch's own default with the ``torch`` engine. Returns the count now in effect.
    """
    if threads is None and engine == "onnx":
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
