"""The selector's backlog: scored items that have neither a final label nor a task, with the state each
selection step needs kept in step per item, so that a step costs work in proportion to what arrived
and what it decides, not to what waits.
"""

from __future__ import annotations

import numpy as np


class Backlog:
    """Items waiting for the budget, and per item (rows in step with ``ids``):

    - ``emb`` float32 ``[n, D]``: the item's embedding;
    - ``probs`` ``[n, C]`` and ``unc`` ``[n]``: the current head's calibrated probabilities and
      uncertainty (replaced together by :meth:`rescore` when the model changes);
    - ``conf`` ``[n]``: the highest of ``probs`` per row (what the threshold is compared with);
    - ``dup`` float32 ``[n]``: the highest cosine to the near-duplicate guard's items, where the
      selector keeps it (strategies that look at every row), ``-inf`` otherwise.

    Rows live in preallocated arrays with spare capacity: :meth:`add` appends in amortised
    O(arrived); :meth:`drop` moves the last live rows into the holes, O(dropped), so rows do not keep
    the order they joined in. The array properties are views of the live rows (do not keep them
    across calls that change the backlog).
    """

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self._n = 0
        self._emb = np.zeros((0, 0), np.float32)
        self._probs = np.zeros((0, 0))
        self._unc = np.zeros(0)
        self._conf = np.zeros(0)
        self._dup = np.zeros(0, np.float32)

    def __len__(self) -> int:
        return self._n

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    @property
    def ids(self) -> list[str]:
        """Item ids of the rows (a copy: O(n); :meth:`id_at` for a few)."""
        return list(self._ids)

    def id_at(self, rows) -> list[str]:
        """Item ids of ``rows`` (int indices)."""
        return [self._ids[r] for r in np.asarray(rows, np.int64).tolist()]

    emb = property(lambda self: self._emb[: self._n], doc="float32 ``[n, D]`` of the live rows (a view).")
    probs = property(lambda self: self._probs[: self._n], doc="``[n, C]`` of the live rows (a view).")
    unc = property(lambda self: self._unc[: self._n], doc="``[n]`` of the live rows (a view).")
    conf = property(lambda self: self._conf[: self._n], doc="``[n]``: ``probs.max(1)`` of the live rows (a view).")
    dup = property(lambda self: self._dup[: self._n], doc="float32 ``[n]`` of the live rows (a view).")

    def add(self, ids: list[str], emb: np.ndarray, probs: np.ndarray, unc: np.ndarray,
            dup: np.ndarray | None = None) -> None:
        """Append items: ``emb`` ``[m, D]``, ``probs`` ``[m, C]``, ``unc`` ``[m]``, ``dup`` ``[m]``
        (None: ``-inf``).

        Raises ValueError when the arrays disagree in length with ``ids`` or an id is already here
        (the selector filters redeliveries before it adds).
        """
        m = len(ids)
        if not (len(emb) == len(probs) == len(unc) == m):
            raise ValueError(f"backlog rows disagree: {m} ids, emb {len(emb)}, probs {len(probs)}, unc {len(unc)}")
        if not m:
            return
        repeated = [i for i in ids if i in self._index]
        if repeated or len(set(ids)) != m:
            raise ValueError(f"item already in the backlog: {(repeated or ids)[0]!r}")
        if self._n + m > len(self._emb) or self._emb.shape[1:] != emb.shape[1:] \
                or self._probs.shape[1:] != probs.shape[1:]:
            self._grow(self._n + m, emb.shape[1], probs.shape[1])
        rows = slice(self._n, self._n + m)
        self._emb[rows], self._probs[rows], self._unc[rows] = emb, probs, unc
        self._conf[rows] = np.asarray(probs).max(1)
        self._dup[rows] = -np.inf if dup is None else dup
        self._index.update((item_id, self._n + k) for k, item_id in enumerate(ids))
        self._ids.extend(ids)
        self._n += m

    def _grow(self, need: int, dim: int, n_classes: int) -> None:
        capacity = max(need, 2 * len(self._emb), 64)
        n = self._n

        def grown(old: np.ndarray, shape: tuple[int, ...], dtype) -> np.ndarray:
            new = np.empty(shape, dtype)
            if n:
                new[:n] = old[:n]
            return new

        self._emb = grown(self._emb, (capacity, dim), np.float32)
        self._probs = grown(self._probs, (capacity, n_classes), np.float64)
        self._unc = grown(self._unc, (capacity,), np.float64)
        self._conf = grown(self._conf, (capacity,), np.float64)
        self._dup = grown(self._dup, (capacity,), np.float32)

    def drop(self, remove: np.ndarray) -> None:
        """Remove the rows where the boolean mask ``remove`` ``[n]`` is True: the last kept rows move
        into the holes (O(removed), whatever the backlog's size)."""
        remove = np.asarray(remove, bool)
        if remove.shape != (self._n,):
            raise ValueError(f"drop mask has shape {remove.shape}, backlog has {self._n} rows")
        gone = np.flatnonzero(remove)
        if not gone.size:
            return
        k = self._n - gone.size  # rows left
        holes = gone[gone < k]  # removed rows inside the part that stays
        movers = np.flatnonzero(~remove[k:]) + k  # kept rows beyond it, as many as the holes
        for item_id in self.id_at(gone):
            del self._index[item_id]
        for array in (self._emb, self._probs, self._unc, self._conf, self._dup):
            array[holes] = array[movers]
        for hole, mover in zip(holes.tolist(), movers.tolist()):
            self._ids[hole] = self._ids[mover]
            self._index[self._ids[hole]] = hole
        del self._ids[k:]
        self._emb[k:self._n] = 0  # nothing of a dropped (perhaps erased) item stays in memory
        self._probs[k:self._n] = 0
        self._n = k

    def rescore(self, probs: np.ndarray, unc: np.ndarray) -> None:
        """Replace every row's probabilities ``[n, C]`` and uncertainty ``[n]`` (a new model)."""
        if len(probs) != self._n or len(unc) != self._n:
            raise ValueError(f"rescore gives {len(probs)}/{len(unc)} rows for a backlog of {self._n}")
        if self._probs.shape[1:] != probs.shape[1:]:
            self._probs = np.empty((len(self._emb), probs.shape[1]))
        self._probs[: self._n], self._unc[: self._n] = probs, unc
        self._conf[: self._n] = np.asarray(probs).max(1) if self._n else 0.0

    def set_dup(self, similarity: np.ndarray) -> None:
        """Set each row's guard similarity to ``similarity`` ``[n]``."""
        if len(similarity) != self._n:
            raise ValueError(f"set_dup gives {len(similarity)} rows for a backlog of {self._n}")
        self._dup[: self._n] = similarity

    def raise_dup(self, similarity: np.ndarray) -> None:
        """Raise each row's guard similarity to ``similarity`` ``[n]`` where that is higher."""
        if len(similarity) != self._n:
            raise ValueError(f"raise_dup gives {len(similarity)} rows for a backlog of {self._n}")
        np.maximum(self._dup[: self._n], similarity, out=self._dup[: self._n])
