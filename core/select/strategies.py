"""Which items go to people: pool-mode selectors, a near-duplicate guard and a stream budget.

Selectors take arrays, never models: embeddings (float32 ``[n, D]``, L2-normalised), class
probabilities ``[n, C]``, an uncertainty score per item (any scorer) and the embeddings of items
already labeled or queued.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from winnow.core.domain.errors import EmptyPoolError, InvalidInput
from winnow.core.domain.validation import STRATEGIES
from winnow.core.select.index import VectorIndex, as_vectors, kmeans, resolve_device


@dataclass(frozen=True, eq=False)
class Candidates:
    """The pool a selector picks from; shapes are checked and dtypes fixed on construction.

    Attributes
    ----------
    embeddings : np.ndarray
        float32 ``[n, D]``, L2-normalised.
    probs : np.ndarray
        float64 ``[n, C]``, class probabilities (rows sum to 1).
    uncertainty : np.ndarray
        float64 ``[n]``, higher means more uncertain.
    anchors : np.ndarray or None
        float32 ``[m, D]``, embeddings of items already labeled or queued; ``None`` becomes
        ``[0, D]``.
    anchor_similarity : np.ndarray or None
        float32 ``[n]``: each candidate's highest cosine to any item labeled or queued (``-inf`` with
        none), when the caller has it already (the stream selector's near-duplicate guard); it
        stands for ``anchors``, which are then not searched again.
    """

    embeddings: np.ndarray
    probs: np.ndarray
    uncertainty: np.ndarray
    anchors: np.ndarray | None = None
    anchor_similarity: np.ndarray | None = None

    def __post_init__(self) -> None:
        emb = as_vectors("embeddings", self.embeddings)
        n, dim = emb.shape
        probs = np.asarray(self.probs, dtype=np.float64)
        if probs.ndim != 2 or len(probs) != n or not np.isfinite(probs).all():
            raise InvalidInput("probs", f"expected finite [{n}, C], got shape {probs.shape}")
        unc = np.asarray(self.uncertainty, dtype=np.float64)
        if unc.shape != (n,) or not np.isfinite(unc).all():
            raise InvalidInput("uncertainty", f"expected finite [{n}], got shape {unc.shape}")
        anchors = np.empty((0, dim), np.float32) if self.anchors is None else self.anchors
        if self.anchor_similarity is not None:
            sim = np.asarray(self.anchor_similarity, np.float32)
            if sim.shape != (n,) or np.isnan(sim).any() or (sim > 1.0 + 1e-4).any():
                raise InvalidInput("anchor_similarity", f"expected [{n}] cosines (or -inf), got shape {sim.shape}")
            object.__setattr__(self, "anchor_similarity", sim)
        for name, value in (
            ("embeddings", emb),
            ("probs", probs),
            ("uncertainty", unc),
            ("anchors", as_vectors("anchors", anchors, dim)),
        ):
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return len(self.embeddings)


def _count(field: str, value: object, minimum: int) -> int:
    """``value`` as an int, or InvalidInput naming ``field`` if it is not an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidInput(field, f"must be an integer of at least {minimum}, got {value!r}")
    return int(value)


class Strategy(ABC):
    """Picks the items to label from a pool of candidates (pool mode)."""

    def select(self, candidates: Candidates, n: int, rng: np.random.Generator) -> np.ndarray:
        """Pick up to ``n`` candidates.

        Parameters
        ----------
        candidates : Candidates
            The pool, ``N`` items.
        n : int
            Batch size, at least 1.
        rng : np.random.Generator
            Source of every random choice, so a seed fixes the result.

        Returns
        -------
        np.ndarray
            int64 ``[min(n, N)]``: distinct indices into ``candidates``, in pick order.

        Raises
        ------
        EmptyPoolError
            When ``N == 0``.
        InvalidInput
            When ``n < 1``.
        """
        n = _count("n", n, 1)
        if len(candidates) == 0:
            raise EmptyPoolError("no candidates to select from")
        return np.asarray(self._select(candidates, min(n, len(candidates)), rng), dtype=np.int64)

    @abstractmethod
    def _select(self, candidates: Candidates, n: int, rng: np.random.Generator) -> np.ndarray:
        """Pick exactly ``n`` distinct indices, ``1 <= n <= len(candidates)``."""

    def shortlist(self, n: int) -> int | None:
        """How many of the most uncertain candidates a pick of ``n`` looks at (it picks the same from
        them as from the whole pool), or None when it looks at every candidate."""
        return None


class RandomStrategy(Strategy):
    """Uniform sampling without replacement: the baseline every strategy must beat."""

    def _select(self, candidates: Candidates, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(len(candidates), size=n, replace=False)


class UncertaintyStrategy(Strategy):
    """The ``n`` most uncertain items; ties go to the lower index."""

    def _select(self, candidates: Candidates, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.argsort(-candidates.uncertainty, kind="stable")[:n]

    def shortlist(self, n: int) -> int:
        return n


class KCenterGreedy(Strategy):
    """Core-set by farthest-first traversal of the embeddings [Sener & Savarese 2018].

    The anchors are the initial centres; without anchors the first centre is drawn from ``rng``.
    Each pick is the candidate farthest (squared Euclidean, ``2 - 2 cos``) from every centre so far.
    Cost: one FAISS search of the candidates against the anchors, then one ``[N, D]`` matrix-vector
    product per pick.

    Parameters
    ----------
    device : int or None
        FAISS device for the anchor search (see `winnow.core.select.index.resolve_device`).
    """

    def __init__(self, device: int | None = None) -> None:
        self.device = resolve_device(device)

    def _select(self, candidates: Candidates, n: int, rng: np.random.Generator) -> np.ndarray:
        x = candidates.embeddings  # [N, D]
        if candidates.anchor_similarity is not None:
            similarity = candidates.anchor_similarity.astype(np.float32)
        else:
            anchors = VectorIndex(x.shape[1], self.device)
            anchors.add(np.arange(len(candidates.anchors)), candidates.anchors)
            similarity = anchors.max_similarity(x)  # -inf without anchors
        min_dist = 2.0 - 2.0 * similarity  # [N]; inf without anchors
        no_anchors = not np.isfinite(min_dist).any()
        picks = np.empty(n, dtype=np.int64)
        for t in range(n):
            first_is_random = t == 0 and no_anchors
            pick = int(rng.integers(len(x))) if first_is_random else int(np.argmax(min_dist))
            picks[t] = pick
            np.minimum(min_dist, 2.0 - 2.0 * (x @ x[pick]), out=min_dist)
            min_dist[pick] = -np.inf  # stays the minimum: never picked again
        return picks


class ClusterMargin(Strategy):
    """Cluster the most uncertain items, then take the most uncertain of each cluster.

    After [Citovsky et al. 2021, "Batch Active Learning at Scale"]: the ``pool_factor * n`` most
    uncertain candidates are clustered into ``n`` groups with spherical k-means; each non-empty
    group gives its most uncertain member, and empty groups are filled with the most uncertain
    remaining candidates. Picks come in order of uncertainty.

    Parameters
    ----------
    pool_factor : int
        Size of the uncertain pool relative to the batch, at least 1.
    niter : int
        k-means iterations.
    device : int or None
        FAISS device for k-means.
    """

    def __init__(self, pool_factor: int = 10, niter: int = 20, device: int | None = None) -> None:
        self.pool_factor = _count("pool_factor", pool_factor, 1)
        self.niter = _count("niter", niter, 1)
        self.device = resolve_device(device)

    def shortlist(self, n: int) -> int:
        return self.pool_factor * n

    def _select(self, candidates: Candidates, n: int, rng: np.random.Generator) -> np.ndarray:
        order = np.argsort(-candidates.uncertainty, kind="stable")
        pool = order[: self.pool_factor * n]  # most uncertain first
        if len(pool) == n:
            return pool
        seed = int(rng.integers(2**31 - 1))
        _, cluster = kmeans(candidates.embeddings[pool], n, seed, self.niter, self.device)
        _, first = np.unique(cluster, return_index=True)  # most uncertain position per cluster
        taken = np.zeros(len(pool), dtype=bool)
        taken[first] = True
        fill = np.flatnonzero(~taken)[: n - len(first)]
        return pool[np.sort(np.concatenate([first, fill]))]


class Badge(Strategy):
    """k-means++ seeding on gradient embeddings [Ash et al. 2020, "Deep Batch Active Learning by
    Diverse, Uncertain Gradient Lower Bounds"].

    The gradient embedding of item ``i`` is ``g_i = a_i ⊗ x_i`` with ``a_i = p_i - onehot(argmax
    p_i)``. It is never materialised (``[N, C*D]``): ``|g_i|^2 = |a_i|^2 |x_i|^2`` and
    ``g_i . g_j = (a_i . a_j)(x_i . x_j)``. The first pick is the largest gradient norm, each
    next one is drawn from ``rng`` with probability proportional to the squared distance to the
    nearest pick so far (uniform among the rest once all distances are zero). Anchors are not used:
    the model that produced ``probs`` already reflects the labeled items.
    """

    def _select(self, candidates: Candidates, n: int, rng: np.random.Generator) -> np.ndarray:
        x = candidates.embeddings  # [N, D]
        probs = candidates.probs  # [N, C]
        a = probs.copy()
        a[np.arange(len(a)), probs.argmax(axis=1)] -= 1.0
        sq_norm = (a * a).sum(axis=1) * (x * x).sum(axis=1, dtype=np.float64)  # [N] = |g_i|^2
        picks = np.empty(n, dtype=np.int64)
        picks[0] = np.argmax(sq_norm)
        min_dist = np.full(len(x), np.inf)
        for t in range(n):
            pick = picks[t]
            dist = sq_norm + sq_norm[pick] - 2.0 * ((a @ a[pick]) * (x @ x[pick]))
            np.minimum(min_dist, np.maximum(dist, 0.0), out=min_dist)
            min_dist[pick] = 0.0  # exactly, despite rounding: never drawn again
            if t + 1 < n:
                weights = min_dist if min_dist.sum() > 0 else self._unpicked(len(x), picks[: t + 1])
                picks[t + 1] = rng.choice(len(x), p=weights / weights.sum())
        return picks

    @staticmethod
    def _unpicked(size: int, picked: np.ndarray) -> np.ndarray:
        weights = np.ones(size)
        weights[picked] = 0.0
        return weights


_SELECTORS: dict[str, type[Strategy]] = {
    "random": RandomStrategy,
    "uncertainty": UncertaintyStrategy,
    "kcenter": KCenterGreedy,
    "cluster_margin": ClusterMargin,
    "badge": Badge,
}
if tuple(_SELECTORS) != STRATEGIES:  # the domain validates names without FAISS: the two lists must agree
    raise ImportError(f"strategy registry {tuple(_SELECTORS)} differs from the domain's names {STRATEGIES}")


def make_strategy(name: str, **kwargs: object) -> Strategy:
    """The selector called ``name`` (one of `STRATEGIES`), built with ``kwargs``.

    Raises
    ------
    InvalidInput
        Field ``strategy`` for an unknown name or arguments the strategy does not take.
    """
    cls = _SELECTORS.get(name)
    if cls is None:
        raise InvalidInput("strategy", f"unknown strategy {name!r}; expected one of {STRATEGIES}")
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as err:
        raise InvalidInput("strategy", f"{name!r} does not take {sorted(kwargs)}: {err}") from None
    return cls(**kwargs)


class NearDuplicateGuard:
    """Flags items nearly identical (cosine ``>= threshold``) to ones already labeled or queued.

    Parameters
    ----------
    dim : int
        Embedding dimension ``D``.
    threshold : float
        Cosine at or above which two items count as duplicates, in ``(-1, 1]``.
    device : int or None
        FAISS device of the backing `VectorIndex`.
    """

    def __init__(self, dim: int, threshold: float = 0.95, device: int | None = None) -> None:
        if not -1.0 < threshold <= 1.0:
            raise InvalidInput("threshold", f"must be in (-1, 1], got {threshold!r}")
        self.threshold = threshold
        self.index = VectorIndex(dim, device)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Remember items ``[n]`` with embeddings ``[n, D]`` (labeled or queued)."""
        self.index.add(ids, vectors)

    def is_duplicate(self, vectors: np.ndarray) -> np.ndarray:
        """bool ``[n]``: whether each of ``vectors`` ``[n, D]`` nearly duplicates a known item."""
        return self.index.max_similarity(vectors) >= self.threshold


class BudgetController:
    """Stream-mode label budget: ``labels`` tasks per ``per_items`` arriving items, exactly.

    Credit is kept as an integer number of ``1/per_items`` units, so after ``M`` observed items
    with every grant requested in full, exactly ``floor(M * labels / per_items)`` tasks have been
    granted.

    Parameters
    ----------
    labels : int
        Tasks allowed per ``per_items`` items, ``0 <= labels <= per_items``.
    per_items : int
        Size of the window the rate is stated over, at least 1.
    """

    def __init__(self, labels: int, per_items: int) -> None:
        self.per_items = _count("per_items", per_items, 1)
        self.labels = _count("labels", labels, 0)
        if self.labels > self.per_items:
            raise InvalidInput("labels", f"must be at most per_items={per_items}, got {labels!r}")
        self._units = 0  # credit in 1/per_items tasks

    @property
    def credit(self) -> Fraction:
        """Tasks that may still be granted, fractional."""
        return Fraction(self._units, self.per_items)

    def observe(self, n_items: int) -> None:
        """Accrue credit for ``n_items`` arriving items."""
        self._units += self.labels * _count("n_items", n_items, 0)

    def grant(self, requested: int) -> int:
        """How many of ``requested`` tasks may be sent now (whole credit, at most ``requested``).

        The granted tasks are spent.
        """
        requested = _count("requested", requested, 0)
        granted = min(requested, self._units // self.per_items)
        self._units -= granted * self.per_items
        return granted
