"""The selector's backlog: scored items that have neither a final label nor a task, with the state each
selection step needs kept in step per item, so that a step costs work in proportion to what arrived
and what it decides, not to what waits.
"""

from __future__ import annotations

import numpy as np

SPARE = 4  # rows kept above the shortlist cutoff, in shortlists (``Backlog.most_uncertain``)


class Backlog:
    """Items waiting for the budget, and per item (rows in step with ``ids``):

    - ``emb`` float32 ``[n, D]``: the item's embedding;
    - ``probs`` ``[n, C]`` and ``unc`` ``[n]``: the current head's calibrated probabilities and
      uncertainty (replaced together by :meth:`rescore` when the model changes);
    - ``conf`` ``[n]``: the highest of ``probs`` per row (what the threshold is compared with);
    - ``dup`` float32 ``[n]`` and ``dup_at`` int64 ``[n]``: the highest cosine to the near-duplicate
      guard's first ``dup_at`` items (``-inf`` and 0 when the row was never checked); the selector
      brings a row's up to date against the guard's later items only, when a pick needs the row.

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
        self._dup_at = np.zeros(0, np.int64)
        self._cutoff: float | None = None  # an uncertainty with a few shortlists' rows above it (most_uncertain)

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
    dup_at = property(lambda self: self._dup_at[: self._n], doc="int64 ``[n]`` of the live rows (a view).")

    def add(self, ids: list[str], emb: np.ndarray, probs: np.ndarray, unc: np.ndarray) -> None:
        """Append items: ``emb`` ``[m, D]``, ``probs`` ``[m, C]``, ``unc`` ``[m]``; not checked against
        the guard yet (``dup`` ``-inf``, ``dup_at`` 0).

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
        self._dup[rows], self._dup_at[rows] = -np.inf, 0
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
        self._dup_at = grown(self._dup_at, (capacity,), np.int64)

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
        for array in (self._emb, self._probs, self._unc, self._conf, self._dup, self._dup_at):
            array[holes] = array[movers]
        for hole, mover in zip(holes.tolist(), movers.tolist()):
            self._ids[hole] = self._ids[mover]
            self._index[self._ids[hole]] = hole
        del self._ids[k:]
        self._emb[k:self._n] = 0  # nothing of a dropped (perhaps erased) item stays in memory
        self._probs[k:self._n] = 0
        self._n = k

    def most_uncertain(self, k: int) -> np.ndarray:
        """Rows (ascending) of the ``k`` most uncertain items (every row when ``k >= n``; ties broken
        either way). One comparison per row: the cutoff a partition of the whole backlog found, with
        ``SPARE * k`` rows above it, holds until fewer than ``k`` rows are left above it (picks drop
        them, arrivals above it join) or the scores change (:meth:`rescore`); only then is the
        backlog partitioned again."""
        n = self._n
        if k >= n:
            return np.arange(n)
        unc = self.unc
        if self._cutoff is not None:
            above = np.flatnonzero(unc >= self._cutoff)
            if len(above) >= k:
                return np.sort(above[np.argpartition(unc[above], len(above) - k)[len(above) - k:]])
        m = min(n, SPARE * k)
        part = np.argpartition(unc, n - m)[n - m:]
        self._cutoff = float(unc[part].min())
        return np.sort(part[np.argpartition(unc[part], m - k)[m - k:]])

    def rescore(self, probs: np.ndarray, unc: np.ndarray) -> None:
        """Replace every row's probabilities ``[n, C]`` and uncertainty ``[n]`` (a new model)."""
        if len(probs) != self._n or len(unc) != self._n:
            raise ValueError(f"rescore gives {len(probs)}/{len(unc)} rows for a backlog of {self._n}")
        if self._probs.shape[1:] != probs.shape[1:]:
            self._probs = np.empty((len(self._emb), probs.shape[1]))
        self._probs[: self._n], self._unc[: self._n] = probs, unc
        self._conf[: self._n] = np.asarray(probs).max(1) if self._n else 0.0
        self._cutoff = None

    def raise_dup(self, rows: np.ndarray, similarity: np.ndarray, upto: int) -> None:
        """Raise ``rows``' (int indices) guard similarity to ``similarity`` where that is higher: it
        covers the guard's items up to ``upto`` now (``dup_at``)."""
        rows = np.asarray(rows, np.int64)
        if len(similarity) != len(rows) or (rows.size and not 0 <= rows.min() <= rows.max() < self._n):
            raise ValueError(f"raise_dup gives {len(similarity)} similarities for rows {rows[:4]}... "
                             f"of a backlog of {self._n}")
        self._dup[rows] = np.maximum(self._dup[rows], similarity)
        self._dup_at[rows] = upto

    def forget_dup(self) -> None:
        """Every row unchecked again (the guard was rebuilt)."""
        self._dup[: self._n], self._dup_at[: self._n] = -np.inf, 0
