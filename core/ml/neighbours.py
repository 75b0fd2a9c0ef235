"""The nearest-neighbour vote over people's labels that a model version may blend with its head.

A linear head draws one region per class. Where a class is several clusters of the embedding space
(a coarse label over many intents), the head mislabels whole clusters that a vote of the nearest
labeled items gets right. The trainer weighs the two on the people's labels themselves (each item's
head probabilities out of fold, its vote left out of its own neighbours) and keeps the weight with the
lowest log-loss, 0 (the head alone) where the vote does not help. The same rule on every dataset.

A blended version's engine returns ``log((1 - w) * softmax(head / T) + w * vote)`` per member, so its
temperature is 1 and every consumer of ``logits`` reads blended probabilities; the head's own
temperature ``T`` and the bank of labeled vectors live in ``neighbours.npz`` beside it.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Collection

import numpy as np
from scipy.special import softmax
from winnow.core.domain.errors import InvalidInput, ModelFileError

BLEND_FILE = "neighbours.npz"
WEIGHTS = (0.0, 0.25, 0.5, 0.75)  # never the vote alone: the head keeps every class possible


def _nearest(bank: np.ndarray, queries: np.ndarray, k: int, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest inner products of each query with the bank, best first: similarities and bank
    rows ``[n, k]``. Exact: one matrix product per block of queries and a partial sort (about twice as
    fast as FAISS's flat index for 11 of 2,500 on this machine: 0.55 s against 1.02 s per 10,000)."""
    sims = np.empty((len(queries), k), np.float32)
    rows = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), block):
        s = queries[start:start + block] @ bank.T  # [b, N]
        top = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < s.shape[1] else np.broadcast_to(
            np.arange(s.shape[1]), s.shape).copy()
        top_s = np.take_along_axis(s, top, 1)
        order = np.argsort(-top_s, axis=1, kind="stable")
        sims[start:start + block] = np.take_along_axis(top_s, order, 1)
        rows[start:start + block] = np.take_along_axis(top, order, 1)
    return sims, rows


def votes(bank: np.ndarray, labels: np.ndarray, n_classes: int, queries: np.ndarray, k: int, tau: float,
          own_rows: np.ndarray | None = None) -> np.ndarray:
    """Each query's vote ``[n, C]``: its ``k`` nearest bank vectors by inner product (cosine on the
    encoder's unit vectors), each weighted ``exp((s - s_max) / tau)``. ``own_rows`` ``[n]``: each
    query's own row in the bank (-1 where it has none), left out of its vote (a leave-one-out vote)."""
    bank = np.ascontiguousarray(bank, np.float32)
    queries = np.ascontiguousarray(queries, np.float32)
    leave_out = own_rows is not None
    k = min(k, len(bank) - int(leave_out))
    if k < 1:
        raise InvalidInput("bank", f"needs more than {int(leave_out)} labeled vectors, got {len(bank)}")
    sims, rows = _nearest(bank, queries, k + int(leave_out))
    if leave_out:  # drop the query's own row (where it has none, or it ties past the list: the last neighbour)
        own = rows == np.asarray(own_rows)[:, None]
        own[~own.any(1), -1] = True
        keep = ~own
        sims = sims[keep].reshape(len(queries), k)
        rows = rows[keep].reshape(len(queries), k)
    weight = np.exp((sims - sims[:, :1]) / tau)  # [n, k], 1 for the nearest
    out = np.zeros((len(queries), n_classes))
    np.add.at(out, (np.repeat(np.arange(len(queries)), k), labels[rows].ravel()), weight.ravel())
    return out / out.sum(1, keepdims=True)


def blend_probs(head_probs: np.ndarray, vote: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * head_probs + weight * vote``; ``head_probs`` ``[n, C]`` or ``[n, M, C]``."""
    if head_probs.ndim == 3:
        vote = vote[:, None, :]
    return (1.0 - weight) * head_probs + weight * vote


def choose_weight(head_probs: np.ndarray, vote: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, float]]:
    """The weight of ``WEIGHTS`` with the lowest mean log-loss of the blend on ``labels`` (ties: the
    smaller weight), and each weight's log-loss. ``head_probs`` ``[n, C]`` out of fold, ``vote``
    ``[n, C]`` left out."""
    rows = np.arange(len(labels))
    losses = {f"{w:g}": float(-np.log(np.maximum(blend_probs(head_probs, vote, w)[rows, labels], 1e-12)).mean())
              for w in WEIGHTS}
    best = min(WEIGHTS, key=lambda w: (round(losses[f"{w:g}"], 9), w))
    return best, losses


def _read(folder: Path, *keys: str) -> list[np.ndarray]:
    """The arrays ``keys`` of ``neighbours.npz`` in ``folder`` (only those are read); ModelFileError
    naming the file when it cannot be read."""
    path = Path(folder) / BLEND_FILE
    try:
        with np.load(path) as data:
            return [data[key] for key in keys]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:  # a truncated file: BadZipFile
        raise ModelFileError(f"{path}: cannot load the neighbour vote ({e})") from e


@dataclass(frozen=True)
class NeighbourBlend:
    """A model version's vote: ``bank`` float32 ``[N, D]``, its ``labels`` int64 ``[N]`` (people's) and
    the ``ids`` ``[N]`` of their items (so an erased item's vector leaves the bank: ``without``), ``k``
    and ``tau`` of :func:`votes`, the vote's ``weight`` and the head's ``temperature``. An empty bank
    (every item erased) leaves the head alone."""

    bank: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    n_classes: int
    k: int
    tau: float
    weight: float
    temperature: float

    def log_probs(self, emb: np.ndarray, head_logits: np.ndarray) -> np.ndarray:
        """Blended log-probabilities ``[n, M, C]`` (float32) of the head's ``head_logits`` ``[n, M, C]``
        on vectors ``emb`` ``[n, D]``."""
        head = softmax(head_logits.astype(np.float64) / self.temperature, axis=-1)
        if len(self.bank):
            head = blend_probs(head, votes(self.bank, self.labels, self.n_classes, emb, self.k, self.tau), self.weight)
        return np.log(np.maximum(head, 1e-30)).astype(np.float32)

    def without(self, item_ids: Collection[str]) -> NeighbourBlend:
        """This vote without the rows of ``item_ids`` (itself where it holds none of them)."""
        gone = np.isin(self.ids, np.asarray(list(item_ids), dtype=str))
        if not gone.any():
            return self
        keep = ~gone
        return replace(self, bank=self.bank[keep], labels=self.labels[keep], ids=self.ids[keep])

    def save(self, folder: Path) -> None:
        """Write ``neighbours.npz`` into ``folder``, atomically (a temporary file renamed over it)."""
        path = Path(folder) / BLEND_FILE
        tmp = path.with_name(f".{BLEND_FILE}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, bank=self.bank.astype(np.float32), labels=self.labels.astype(np.int64),
                     ids=self.ids.astype(str), params=np.array([self.n_classes, self.k, self.tau, self.weight,
                                                                 self.temperature], np.float64))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def described(self) -> dict:
        """What a version's ``meta["neighbours"]`` says of this vote (its presence makes engines load it)."""
        return {"k": self.k, "tau": self.tau, "weight": self.weight, "head_temperature": self.temperature,
                "bank": len(self.labels)}

    @staticmethod
    def holds_any(folder: Path, item_ids: Collection[str]) -> bool:
        """Whether the vote in ``folder`` holds a vector of any of ``item_ids`` (reads its ids alone)."""
        (ids,) = _read(folder, "ids")
        return bool(np.isin(ids, np.asarray(list(item_ids), dtype=str)).any())

    @classmethod
    def load(cls, folder: Path) -> NeighbourBlend:
        path = Path(folder) / BLEND_FILE
        bank, labels, ids, params = _read(folder, "bank", "labels", "ids", "params")
        n_classes, k, tau, weight, temperature = params.tolist()
        if bank.ndim != 2 or labels.shape != (len(bank),) or ids.shape != (len(bank),) \
                or (len(labels) and (labels.min() < 0 or labels.max() >= n_classes)) \
                or not (k >= 1 and tau > 0 and 0 < weight < 1 and temperature > 0):
            raise ModelFileError(f"{path}: inconsistent neighbour vote (bank {bank.shape}, labels {labels.shape}, "
                                 f"ids {ids.shape}, params {params.tolist()})")
        return cls(bank, labels, ids, int(n_classes), int(k), float(tau), float(weight), float(temperature))
