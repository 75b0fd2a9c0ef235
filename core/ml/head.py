"""The classifier head on sentence embeddings, and model-version folders (safetensors + ONNX + meta.json)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from winnow.core.domain.errors import InvalidInput, ModelFileError
from winnow.core.ml.encoder import export_module, onnx_session, resolve_torch_device
from winnow.core.ml.neighbours import NeighbourBlend

WEIGHTS_FILE, ONNX_FILE, META_FILE = "head.safetensors", "head.onnx", "meta.json"
_CONFIG_FIELDS = ("dim", "n_classes", "hidden", "members", "dropout")


@dataclass(frozen=True)
class HeadConfig:
    """Shape of a head: ``hidden=0`` is a linear (logistic) head, else Linear-GELU-Dropout-Linear;
    ``members > 1`` is an ensemble of independently initialised members."""

    dim: int
    n_classes: int
    hidden: int = 0
    members: int = 1
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name, low in (("dim", 1), ("n_classes", 2), ("hidden", 0), ("members", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InvalidInput(name, f"must be an integer >= {low}, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidInput("dropout", f"must be in [0, 1), got {self.dropout!r}")


class Head(nn.Module):
    """Ensemble of ``members`` heads computed as one batched einsum per layer.

    Dropout acts on the input of the output layer (the embedding for a linear head, the GELU
    activations otherwise) and only in training mode. Initial weights and dropout masks are drawn
    from ``generator`` when given (training seeds its own), never from torch's process-wide seed.
    """

    def __init__(self, config: HeadConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        m, d, h, c = config.members, config.dim, config.hidden, config.n_classes
        if h:
            self.hidden_weight = nn.Parameter(self._uniform((m, d, h), d, generator))
            self.hidden_bias = nn.Parameter(self._uniform((m, h), d, generator))
        self.out_weight = nn.Parameter(self._uniform((m, h or d, c), h or d, generator))
        self.out_bias = nn.Parameter(self._uniform((m, c), h or d, generator))

    @staticmethod
    def _uniform(shape: tuple[int, ...], fan_in: int, generator: torch.Generator | None) -> torch.Tensor:
        bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialisation, per member
        return torch.empty(shape).uniform_(-bound, bound, generator=generator)

    def _dropout(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        p = self.config.dropout
        if not self.training or p == 0.0:
            return x
        keep = torch.bernoulli(torch.full_like(x, 1.0 - p), generator=generator)
        return x * keep / (1.0 - p)

    def forward(self, emb: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """emb float32 ``[B, dim]`` -> logits ``[B, members, n_classes]`` (dropout masks from ``generator``)."""
        if self.config.hidden:
            x = F.gelu(torch.einsum("bd,mdh->bmh", emb, self.hidden_weight) + self.hidden_bias)  # [B, M, H]
            x = self._dropout(x, generator)
            return torch.einsum("bmh,mhc->bmc", x, self.out_weight) + self.out_bias
        x = self._dropout(emb, generator)  # [B, D]
        return torch.einsum("bd,mdc->bmc", x, self.out_weight) + self.out_bias


def _checked_meta(meta: dict, config: HeadConfig) -> dict:
    version, classes, temperature = meta.get("version"), meta.get("classes"), meta.get("temperature")
    if not isinstance(version, str) or not version or "/" in version:
        raise InvalidInput("meta.version", f"must be a non-empty string without '/', got {version!r}")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes) \
            or not len(classes) == len(set(classes)) == config.n_classes:
        raise InvalidInput("meta.classes", f"must be {config.n_classes} distinct strings, got {classes!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise InvalidInput("meta.temperature", f"must be a positive finite number, got {temperature!r}")
    fields = dataclasses.asdict(config)
    clash = {k: meta[k] for k in _CONFIG_FIELDS if k in meta and meta[k] != fields[k]}
    if clash:
        raise InvalidInput("meta", f"{clash} disagree with the head's config {fields}")
    return {**meta, **fields, "temperature": float(temperature)}


def write_version_folder(folder: Path, write: Callable[[Path], None]) -> None:
    """Make a model-version folder: ``write`` fills a temporary sibling, renamed to ``folder`` last, so a
    half-written version never exists; InvalidInput("folder") if it exists (versions are never overwritten)."""
    folder = Path(folder)
    if folder.exists():
        raise InvalidInput("folder", f"{folder} already exists; model versions are never overwritten")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        write(tmp)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_meta(path: Path) -> dict:
    """A meta.json as a dict; ModelFileError naming the file when unreadable or not a JSON object."""
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: cannot read model metadata ({e})") from e
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return meta


def save_model(folder: Path, head: Head, meta: dict, extra: Callable[[Path], None] | None = None) -> None:
    """Write a model version: head.safetensors, head.onnx and meta.json.

    ``meta`` needs ``version`` (str), ``classes`` (list[str], one per class) and ``temperature`` (float > 0);
    the head's :class:`HeadConfig` fields are added, other keys are kept as given. Everything is written into
    a temporary sibling folder that is renamed to ``folder`` last, so a half-written version never exists.
    The ONNX graph takes ``embeddings`` float32 ``[batch, dim]`` and returns ``logits`` ``[batch, members, classes]``.
    """
    full_meta = _checked_meta(meta, head.config)
    cpu_head = copy.deepcopy(head).cpu().eval()  # the caller's head keeps its device and mode

    def write(tmp: Path) -> None:
        save_file({k: v.detach().contiguous() for k, v in cpu_head.state_dict().items()}, tmp / WEIGHTS_FILE)
        export_module(cpu_head, (torch.zeros(2, head.config.dim),), tmp / ONNX_FILE, ["embeddings"], ["logits"],
                      {"embeddings": {0: "batch"}, "logits": {0: "batch"}})
        (tmp / META_FILE).write_text(json.dumps(full_meta, indent=2, sort_keys=True))
        if extra is not None:
            extra(tmp)

    write_version_folder(folder, write)


def load_meta(folder: Path) -> dict:
    """meta.json of a model version; ModelFileError naming the file when missing or incomplete."""
    path = Path(folder) / META_FILE
    meta = read_meta(path)
    missing = [k for k in ("version", "classes", "temperature", *_CONFIG_FIELDS) if k not in meta]
    if missing:
        raise ModelFileError(f"{path}: missing keys {missing}")
    return meta


def _config(meta: dict, folder: Path) -> HeadConfig:
    try:
        return HeadConfig(**{k: meta[k] for k in _CONFIG_FIELDS})
    except InvalidInput as e:
        raise ModelFileError(f"{Path(folder) / META_FILE}: bad head config ({e})") from e


def load_head(folder: Path) -> Head:
    """The torch :class:`Head` of a model version, in eval mode."""
    folder = Path(folder)
    head = Head(_config(load_meta(folder), folder))
    path = folder / WEIGHTS_FILE
    try:
        head.load_state_dict(load_file(path), strict=True)
    except (OSError, SafetensorError, RuntimeError) as e:
        raise ModelFileError(f"{path}: cannot load head weights ({e})") from e
    return head.eval()


class HeadEngine(ABC):
    """A loaded model version: ``logits(emb [n, dim]) -> [n, members, classes]`` plus its meta."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.meta = load_meta(self.folder)
        self.config = _config(self.meta, self.folder)
        # a version that blends its head with its labeled neighbours' vote (``winnow.core.ml.neighbours``)
        self.blend = NeighbourBlend.load(self.folder) if self.meta.get("neighbours") else None

    @property
    def version(self) -> str:
        return self.meta["version"]

    def forget(self, item_ids: Collection[str]) -> None:
        """Drop erased items' vectors from this loaded version's neighbour vote (if it has one)."""
        if self.blend is not None:
            self.blend = self.blend.without(item_ids)

    def logits(self, emb: np.ndarray) -> np.ndarray:
        """emb float32 ``[n, dim]`` -> logits float32 ``[n, members, n_classes]`` (before temperature; a
        version with a neighbour vote gives the blend's log-probabilities, and its temperature is 1)."""
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.config.dim:
            raise InvalidInput("embeddings", f"expected [n, {self.config.dim}], got shape {emb.shape}")
        if not len(emb):
            return np.zeros((0, self.config.members, self.config.n_classes), dtype=np.float32)
        out = self._run(emb)
        return out if self.blend is None else self.blend.log_probs(emb, out)

    @abstractmethod
    def _run(self, emb: np.ndarray) -> np.ndarray:
        """Validated non-empty float32 ``[n, dim]`` -> float32 ``[n, members, n_classes]``."""


class OnnxHead(HeadEngine):
    """head.onnx on ONNX Runtime, on one thread: a head is a few small matrix products (a 10,000-row
    backlog re-score takes milliseconds), and a thread pool would only add hand-offs and take cores
    from the encoder running beside it."""

    def __init__(self, folder: Path, device: str = "auto") -> None:
        super().__init__(folder)
        self._session = onnx_session(self.folder / ONNX_FILE, device, threads=1)
        out_shape = self._session.get_outputs()[0].shape[1:]
        if out_shape != [self.config.members, self.config.n_classes]:
            raise ModelFileError(f"{self.folder / ONNX_FILE}: logits shape {out_shape} does not match {META_FILE}")

    def _run(self, emb: np.ndarray) -> np.ndarray:
        return self._session.run(["logits"], {"embeddings": emb})[0]


class TorchHead(HeadEngine):
    """head.safetensors in PyTorch (CUDA when available and allowed)."""

    def __init__(self, folder: Path, device: str = "auto") -> None:
        super().__init__(folder)
        self.device = torch.device(resolve_torch_device(device))
        self._head = load_head(self.folder).to(self.device)

    def _run(self, emb: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self._head(torch.from_numpy(emb).to(self.device)).float().cpu().numpy()
