"""Exact cosine-similarity vector index and k-means on FAISS, on the CPU or one GPU.

Vectors are float32 ``[n, D]`` and L2-normalised by the caller, so the inner product is the cosine.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from winnow.core.domain.errors import InvalidInput

try:
    import faiss
except ImportError:  # an image without FAISS (the GPU bench's): the numpy and torch paths still run
    faiss = None


def _faiss():
    """The FAISS module; a clear error where it is not installed."""
    if faiss is None:
        raise ImportError("FAISS is not installed: pip install faiss-cpu (or a GPU build)")
    return faiss


def resolve_device(device: int | None) -> int:
    """Return the FAISS device to use: a GPU id ``>= 0``, or ``-1`` for the CPU.

    ``None`` means GPU 0 when FAISS sees a GPU, else the CPU.
    """
    n_gpus = _faiss().get_num_gpus()
    if device is None:
        return 0 if n_gpus > 0 else -1
    if not -1 <= device < n_gpus:
        raise InvalidInput("device", f"{device!r} is not -1 (CPU) or a GPU id below {n_gpus}")
    return device


def set_threads(n: int) -> int:
    """Set how many OpenMP threads FAISS's CPU searches and k-means use in this process; returns the
    previous number.

    A stage that shares its cores with the model (the selector beside the prelabel worker) runs
    small searches and clusterings between the model's batches: with several threads each call
    stalls whenever the model preempts one of them, so there one thread is cheaper.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidInput("threads", f"must be an integer of at least 1, got {n!r}")
    previous = _faiss().omp_get_max_threads()
    _faiss().omp_set_num_threads(n)
    return previous


@cache
def _gpu_resources() -> faiss.StandardGpuResources:
    return _faiss().StandardGpuResources()


def _on_device(index: faiss.Index, device: int) -> faiss.Index:
    """``index`` itself on the CPU, else a copy of it on GPU ``device``."""
    return index if device < 0 else _faiss().index_cpu_to_gpu(_gpu_resources(), device, index)


def as_vectors(field: str, vectors: object, dim: int | None = None) -> np.ndarray:
    """Validate and convert to a C-contiguous float32 ``[n, dim]`` matrix of finite values.

    Raises
    ------
    InvalidInput
        Naming ``field``, when the array is not 2-d, has another width than ``dim``, or holds
        NaN or infinity.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise InvalidInput(field, f"expected a 2-d array [n, D], got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise InvalidInput(field, f"expected dimension {dim}, got shape {x.shape}")
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise InvalidInput(field, f"row {bad} is not finite: {x[bad][:4]}...")
    return x


class VectorIndex:
    """Exact inner-product index over caller-chosen int64 ids (FAISS ``IndexIDMap2(IndexFlatIP)``).

    The vectors live on the CPU, which makes ``remove`` possible; with a GPU ``device`` searches
    run on a GPU copy, made again after the first search that follows a change.

    Parameters
    ----------
    dim : int
        Vector dimension ``D``.
    device : int or None
        ``-1`` for the CPU, a GPU id, or ``None`` for GPU 0 when one exists (see `resolve_device`).
    """

    def __init__(self, dim: int, device: int | None = None) -> None:
        if dim < 1:
            raise InvalidInput("dim", f"must be at least 1, got {dim!r}")
        self.dim = dim
        self.device = resolve_device(device)
        self._index = _faiss().IndexIDMap2(_faiss().IndexFlatIP(dim))
        self._searcher: faiss.Index | None = None

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def build(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the whole content with ``vectors`` ``[n, D]`` under ``ids`` ``[n]``."""
        self._index.reset()
        self._searcher = None
        self.add(ids, vectors)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add ``vectors`` ``[n, D]`` under ``ids`` ``[n]`` (int64, distinct).

        An id already in the index is replaced, so adding the same item twice (a redelivered
        message) leaves one copy.
        """
        x = as_vectors("vectors", vectors, self.dim)
        ids = self._as_ids(ids)
        if len(ids) != len(x):
            raise InvalidInput("ids", f"{len(ids)} ids for {len(x)} vectors")
        if len(np.unique(ids)) != len(ids):
            raise InvalidInput("ids", "ids within one call must be distinct")
        if len(x) == 0:
            return
        self.remove(ids)
        self._index.add_with_ids(x, ids)
        self._searcher = None

    def remove(self, ids: np.ndarray) -> int:
        """Remove ``ids`` ``[n]``; ids not in the index are ignored. Returns how many went."""
        ids = self._as_ids(ids)
        if len(ids) == 0 or len(self) == 0:
            return 0
        removed = int(self._index.remove_ids(ids))
        if removed:
            self._searcher = None
        return removed

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar indexed vectors of each query.

        Parameters
        ----------
        queries : np.ndarray
            float32 ``[q, D]``.
        k : int
            Neighbours per query, at least 1 (at most 2048 on a GPU).

        Returns
        -------
        scores : np.ndarray
            float32 ``[q, k]`` inner products, best first; ``-inf`` where the index holds fewer
            than ``k`` vectors.
        ids : np.ndarray
            int64 ``[q, k]``; ``-1`` where the index holds fewer than ``k`` vectors.
        """
        x = as_vectors("queries", queries, self.dim)
        if k < 1:
            raise InvalidInput("k", f"must be at least 1, got {k!r}")
        if len(self) == 0 or len(x) == 0:
            return np.full((len(x), k), -np.inf, np.float32), np.full((len(x), k), -1, np.int64)
        if self._searcher is None:
            self._searcher = _on_device(self._index, self.device)
        scores, ids = self._searcher.search(x, k)
        scores[ids < 0] = -np.inf
        return scores, ids

    def max_similarity(self, queries: np.ndarray) -> np.ndarray:
        """Highest cosine of each query ``[q, D]`` to any indexed vector: float32 ``[q]``.

        ``-inf`` for every query when the index is empty.
        """
        return self.search(queries, 1)[0][:, 0]

    @staticmethod
    def _as_ids(ids: np.ndarray) -> np.ndarray:
        out = np.ascontiguousarray(ids, dtype=np.int64)
        if out.ndim != 1:
            raise InvalidInput("ids", f"expected a 1-d array of int64, got shape {out.shape}")
        return out


def max_similarity_to(queries: np.ndarray, vectors: np.ndarray, block: int = 8192) -> np.ndarray:
    """Highest cosine of each query ``[q, D]`` to any of ``vectors`` ``[m, D]``: float32 ``[q]`` (``-inf``
    when there are none), by blocked matrix products on the CPU. For one exhaustive search of many
    queries against a set held in memory, as k-center's against its anchors: a FAISS flat index pays
    for its top-k bookkeeping there (here 4.7x slower than the plain product at 200,000 x 10,000)."""
    x = as_vectors("queries", queries)
    return blocked_max_similarity(x, as_vectors("vectors", vectors, x.shape[1]), block)


def blocked_max_similarity(x: np.ndarray, v: np.ndarray, block: int = 8192, cells: int = 1 << 22) -> np.ndarray:
    """:func:`max_similarity_to` of float32 ``[q, D]`` queries and ``[m, D]`` vectors that the caller
    has validated already; products of at most ``block`` queries and ``cells`` query-vector pairs, so
    memory stays bounded whatever ``m``."""
    out = np.full(len(x), -np.inf, np.float32)
    if not len(v) or not len(x):
        return out
    for start in range(0, len(x), block):
        part = x[start:start + block]
        step = max(256, cells // len(part))
        view = out[start:start + block]
        for first in range(0, len(v), step):
            np.maximum(view, (part @ v[first:first + step].T).max(axis=1), out=view)
    return out


def kmeans_input(vectors: np.ndarray, k: int, niter: int) -> np.ndarray:
    """The vectors of a k-means as float32 ``[n, D]``; InvalidInput naming ``vectors``, ``k`` (not in
    1..n) or ``niter`` (below 1)."""
    x = as_vectors("vectors", vectors)
    if not 1 <= k <= len(x):
        raise InvalidInput("k", f"must be between 1 and the number of vectors {len(x)}, got {k!r}")
    if niter < 1:
        raise InvalidInput("niter", f"must be at least 1, got {niter!r}")
    return x


def kmeans(
    vectors: np.ndarray, k: int, seed: int, niter: int = 20, device: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (unit-norm centroids, cosine assignment) with ``faiss.Kmeans``.

    Deterministic for a given ``seed``, data and device.

    Parameters
    ----------
    vectors : np.ndarray
        float32 ``[n, D]``, L2-normalised.
    k : int
        Number of clusters, ``1 <= k <= n``.
    seed : int
        Seed of FAISS's centroid initialisation and subsampling.
    niter : int
        Lloyd iterations.
    device : int or None
        As in `VectorIndex`.

    Returns
    -------
    centroids : np.ndarray
        float32 ``[k, D]``.
    assignment : np.ndarray
        int64 ``[n]``, the nearest centroid of each vector; a cluster may end up with none.
    """
    x = kmeans_input(vectors, k, niter)
    device = resolve_device(device)
    km = _faiss().Kmeans(
        x.shape[1], k, niter=niter, seed=seed, spherical=True, min_points_per_centroid=1
    )
    km.index = _on_device(_faiss().IndexFlatIP(x.shape[1]), device)
    km.train(x)
    return km.centroids, km.assign(x)[1]
