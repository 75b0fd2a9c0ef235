"""Which items go to people: pool-mode selectors, a near-duplicate guard and a stream budget.

Selectors take arrays, never models: embeddings (float32 ``[n, D]``, L2-normalised), class
probabilities ``[n, C]``, an uncertainty score per item (any scorer) and the embeddings of items
already labeled or queued.
"""

from __future__ import annotations

import inspect
from typing import Callable
from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from winnow.core.domain.errors import EmptyPoolError, InvalidInput
from winnow.core.domain.validation import STRATEGIES
from winnow.core.select.gpu import cuda_device, farthest_first_cuda, max_similarity_cuda
from winnow.core.select.index import (
    as_vectors,
    blocked_max_similarity,
    kmeans,
    max_similarity_to,
    resolve_device,
)


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
    On the CPU: one blocked product of the candidates with the anchors (module ``index``: FAISS's top-k
    costs more), then :func:`farthest_first`, which reads the ``[N, D]`` candidates once per ``block``
    picks instead of once per pick. On a CUDA device both run in torch (:mod:`winnow.core.select.gpu`).

    Parameters
    ----------
    device : int or None
        ``-1`` for the CPU, a CUDA device id, or ``None`` for device 0 when torch sees a GPU.
    """

    lazy_anchors = 2048  # above this many anchors the CPU path bounds the anchor distances (``anchor_bounds``)

    def __init__(self, device: int | None = None) -> None:
        self.device = cuda_device(device)

    def _select(self, candidates: Candidates, n: int, rng: np.random.Generator) -> np.ndarray:
        x = candidates.embeddings  # [N, D]
        if candidates.anchor_similarity is not None:
            similarity = candidates.anchor_similarity.astype(np.float32)
        elif self.device < 0 and len(candidates.anchors) > self.lazy_anchors:
            # many anchors: bounds from a sample of them, each row made exact only if a scan reaches it
            bounds, refine = anchor_bounds(x, candidates.anchors)
            return farthest_first(x, bounds, n, refine=refine)
        elif self.device < 0:
            similarity = max_similarity_to(x, candidates.anchors)  # -inf without anchors
        else:
            similarity = max_similarity_cuda(x, candidates.anchors, self.device)
        min_dist = 2.0 - 2.0 * similarity  # [N]; inf without anchors
        first = None if np.isfinite(min_dist).any() else int(rng.integers(len(x)))
        if self.device >= 0:
            return farthest_first_cuda(x, min_dist, n, first, self.device)
        return farthest_first(x, min_dist, n, first)


def farthest_first(x: np.ndarray, min_dist: np.ndarray, n: int, first: int | None = None,
                   block: int = 64, refine: Callable[[np.ndarray], np.ndarray] | None = None,
                   refine_ahead: int = 1024) -> np.ndarray:
    """``n`` rows of ``x`` (float32 ``[N, D]``, unit rows) by farthest-first traversal: each the row whose
    squared distance (``2 - 2 cos``) to its nearest centre is largest, given ``min_dist`` [N] (to the
    anchors; inf where there are none) and the picks before it; ``first`` is the first pick, if given.

    Exact, and bandwidth-light (lazy evaluation): a row's stored distance is an upper bound that the
    picks since the last fold have not lowered yet. A pick scans the rows in the order of their bounds,
    lowers each scanned row's bound to its exact distance (against those few recent picks only), and
    stops once the best exact distance is at least the next row's bound: no unscanned row can beat it.
    Every ``block`` picks, all bounds are made exact again in one matrix product ``[N, D] x [D, block]``,
    so the candidates are read once per ``block`` picks, not once per pick (the cost of the classic loop,
    bound by memory bandwidth: 67 s for 1,000 picks of 1,000,000 on two cores).

    ``refine``: ``min_dist`` holds only upper bounds on the distance to the anchors, and
    ``refine(rows)`` gives the exact ones; a row is refined the first time a scan reaches it. The
    picks are the same (the scan only ever needs an upper bound to skip a row), and the rows no scan
    reaches never pay for their distance to every anchor (:func:`anchor_bounds`).
    """
    size = len(x)
    stale = np.array(min_dist, dtype=np.float32)  # upper bounds on each row's squared distance
    loose = np.ones(size, bool) if refine is not None else None  # rows whose anchor distance is a bound
    refined = np.zeros(size if refine is not None else 0, np.float32)  # exact anchor distances computed ...
    unapplied = np.zeros(size if refine is not None else 0, bool)  # ... and not folded into ``stale`` yet
    picks = np.empty(n, dtype=np.int64)
    pending: list[int] = []  # picks not folded into ``stale`` yet
    order, pos = np.zeros(0, np.int64), 0  # rows by bound, largest first; how far the scan went
    frontier, exact = np.zeros(0, np.int64), np.zeros(0, np.float32)  # scanned rows, their exact distance
    scanned = np.zeros(size, bool)
    top = min(size, 4096)  # rows ordered after a fold (all of them once a scan goes past these)

    def distance_to_pending(rows: np.ndarray) -> np.ndarray:
        return 2.0 - 2.0 * (x[rows] @ x[pending].T).max(axis=1)

    def fold() -> None:
        nonlocal order, pos, frontier, exact
        if pending:
            centres = x[pending].T  # [D, B]
            for start in range(0, size, 65536):
                part = slice(start, start + 65536)
                np.minimum(stale[part], 2.0 - 2.0 * (x[part] @ centres).max(axis=1), out=stale[part])
            stale[pending] = -np.inf  # picked: never again (earlier picks are -inf already)
            pending.clear()
        if refine is not None and unapplied.any():  # the order is made again below: tighten it first
            np.minimum(stale, np.where(unapplied, refined, np.inf), out=stale)
            unapplied[:] = False
        head = np.argpartition(-stale, top - 1)[:top] if top < size else np.arange(size)
        order = head[np.argsort(-stale[head], kind="stable")]
        pos, frontier, exact = 0, np.zeros(0, np.int64), np.zeros(0, np.float32)
        scanned[:] = False

    fold()
    for t in range(n):
        if t == 0 and first is not None:
            pick = first
        else:
            while pos < len(order) and (not len(frontier) or exact.max() < stale[order[pos]]):
                rows = order[pos:pos + 64]
                pos += 64
                if pos >= len(order) and len(order) < size:  # past the ordered head: order every row
                    order, pos = np.argsort(-stale, kind="stable"), 0
                rows = rows[(stale[rows] > -np.inf) & ~scanned[rows]]
                scanned[rows] = True
                if not len(rows):
                    continue
                base = stale[rows]
                if loose is not None:
                    if loose[rows].any():  # the exact distance to the anchors, once, for these rows and
                        # the next loose ones in order (one larger product). It is kept aside until the next
                        # fold: ``stale`` changes only there, so the order the scan relies on stays true
                        ahead = np.concatenate([rows[loose[rows]], order[pos:pos + refine_ahead]])
                        ahead = np.unique(ahead[loose[ahead]])
                        refined[ahead] = refine(ahead)
                        loose[ahead], unapplied[ahead] = False, True
                    base = np.where(unapplied[rows], np.minimum(base, refined[rows]), base)
                values = base if not pending else np.minimum(base, distance_to_pending(rows))
                frontier, exact = np.concatenate([frontier, rows]), np.concatenate([exact, values])
            k = int(np.argmax(exact))
            pick = int(frontier[k])
            frontier, exact = np.delete(frontier, k), np.delete(exact, k)
        picks[t] = pick
        stale[pick] = -np.inf
        pending.append(pick)
        if len(frontier):  # the scanned rows' exact distances, with the new pick
            np.minimum(exact, 2.0 - 2.0 * (x[frontier] @ x[pick]), out=exact)
        if len(pending) >= block or (t == 0 and first is not None):  # no bound was finite before the first
            fold()
    return picks


def anchor_bounds(x: np.ndarray, anchors: np.ndarray, seed: int = 0, sample: int = 1024,
                  ) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Upper bounds on each row's squared distance to its nearest anchor, and the function that makes
    them exact for given rows (``farthest_first(..., refine=)``): the bound is the distance to the
    nearest of ``sample`` anchors drawn with ``seed`` (any anchor's distance bounds the nearest one's),
    one ``[N, D] x [D, sample]`` product instead of ``[N, D] x [D, M]``."""
    chosen = anchors if len(anchors) <= sample else anchors[
        np.sort(np.random.default_rng(seed).choice(len(anchors), sample, replace=False))]
    bounds = 2.0 - 2.0 * max_similarity_to(x, chosen)

    def refine(rows: np.ndarray) -> np.ndarray:
        return 2.0 - 2.0 * max_similarity_to(x[rows], anchors)

    return bounds, refine


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

    def __init__(self, block: int = 64) -> None:
        self.block = _count("block", block, 1)

    def _select(self, candidates: Candidates, n: int, rng: np.random.Generator) -> np.ndarray:
        x = np.asarray(candidates.embeddings, np.float32)  # [N, D]
        probs = candidates.probs  # [N, C]
        a = np.array(probs, np.float32)
        a[np.arange(len(a)), probs.argmax(axis=1)] -= 1.0
        sq_norm = (a * a).sum(axis=1, dtype=np.float64) * (x * x).sum(axis=1, dtype=np.float64)  # [N] = |g_i|^2
        return _kmeans_plus_plus(x, a, sq_norm, n, rng, self.block)


def _kmeans_plus_plus(x: np.ndarray, a: np.ndarray, sq_norm: np.ndarray, n: int, rng: np.random.Generator,
                      block: int) -> np.ndarray:
    """BADGE's k-means++ seeding on the gradient embeddings ``a_i ⊗ x_i`` (``sq_norm``: their squared norms).

    Each pick after the first is drawn with probability proportional to its squared distance to the
    nearest pick so far, by rejection sampling on upper bounds: a row is proposed in proportion to its
    stored distance (exact as of the last fold), and accepted with probability exact / stored, its
    exact distance taken against the picks since that fold only. An accepted row is thus drawn exactly
    in proportion to its exact distance (a pick's own is 0: never accepted again). Every ``block``
    picks one matrix product per factor makes every stored distance exact, so the candidates are read
    once per ``block`` picks, not once per pick.
    """
    size = len(x)
    stale = np.zeros(size)  # squared distance to the nearest pick, as of the last fold
    cumulative, total = np.zeros(size), 0.0
    picks = np.empty(n, dtype=np.int64)
    picked = np.zeros(size, bool)
    pending: list[int] = []

    def distance_to_pending(rows: np.ndarray | slice) -> np.ndarray:
        d = sq_norm[rows][:, None] + sq_norm[pending][None, :] \
            - 2.0 * (a[rows] @ a[pending].T).astype(np.float64) * (x[rows] @ x[pending].T)
        return np.maximum(d.min(axis=1), 0.0)

    def fold(first: bool) -> None:
        nonlocal cumulative, total
        for start in range(0, size, 65536):
            part = slice(start, start + 65536)
            d = distance_to_pending(part)
            stale[part] = d if first else np.minimum(stale[part], d)
        stale[pending] = 0.0  # exactly, despite rounding
        pending.clear()
        cumulative = np.cumsum(stale)
        total = float(cumulative[-1])

    picks[0] = int(np.argmax(sq_norm))
    picked[picks[0]] = True
    pending.append(int(picks[0]))
    fold(first=True)
    for t in range(1, n):
        rejected = 0
        while True:
            if total <= 0.0:  # every distance is 0: uniform among the rows not picked
                rest = np.flatnonzero(~picked)
                pick = int(rest[rng.integers(len(rest))])
                break
            if rejected >= 64 and pending:  # the recent picks took most of the mass: make the bounds exact
                fold(first=False)
                rejected = 0
                continue
            pick = min(int(np.searchsorted(cumulative, rng.random() * total, side="right")), size - 1)
            exact = 0.0 if picked[pick] else stale[pick] if not pending else \
                min(stale[pick], float(distance_to_pending(np.array([pick]))[0]))
            if exact > 0.0 and rng.random() * stale[pick] < exact:
                break
            rejected += 1
        picks[t] = pick
        picked[pick] = True
        pending.append(pick)
        if len(pending) >= block:
            fold(first=False)
    return picks


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

    The items are kept in the order they were added, never removed (a caller that must forget one
    builds a new guard), so a caller that has checked a vector against the first ``m`` items checks it
    against the later ones only: ``max_similarity(vectors, since=m)``. That is how the stream selector
    keeps each backlog row's similarity without searching the whole guard again at every pick. Exact,
    by blocked matrix products on the CPU (:func:`~winnow.core.select.index.blocked_max_similarity`).

    Parameters
    ----------
    dim : int
        Embedding dimension ``D``.
    threshold : float
        Cosine at or above which two items count as duplicates, in ``(-1, 1]``.
    """

    def __init__(self, dim: int, threshold: float = 0.95) -> None:
        if not -1.0 < threshold <= 1.0:
            raise InvalidInput("threshold", f"must be in (-1, 1], got {threshold!r}")
        self.dim = _count("dim", dim, 1)
        self.threshold = threshold
        self._vectors = np.zeros((0, dim), np.float32)  # spare capacity beyond the first ``_n`` rows
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, vectors: np.ndarray) -> None:
        """Remember items with embeddings ``[n, D]`` (labeled or queued), after those added before."""
        x = as_vectors("vectors", vectors, self.dim)
        if self._n + len(x) > len(self._vectors):
            grown = np.empty((max(self._n + len(x), 2 * len(self._vectors), 64), self.dim), np.float32)
            grown[: self._n] = self._vectors[: self._n]
            self._vectors = grown
        self._vectors[self._n: self._n + len(x)] = x
        self._n += len(x)

    def max_similarity(self, vectors: np.ndarray, since: int = 0) -> np.ndarray:
        """float32 ``[n]``: each of ``vectors`` ``[n, D]``'s highest cosine to the items added after the
        first ``since`` (``-inf`` where there are none)."""
        x = as_vectors("queries", vectors, self.dim)
        if isinstance(since, bool) or not isinstance(since, (int, np.integer)) or not 0 <= since <= self._n:
            raise InvalidInput("since", f"must be an integer between 0 and {self._n}, got {since!r}")
        return blocked_max_similarity(x, self._vectors[since: self._n])

    def is_duplicate(self, vectors: np.ndarray) -> np.ndarray:
        """bool ``[n]``: whether each of ``vectors`` ``[n, D]`` nearly duplicates a known item."""
        return self.max_similarity(vectors) >= self.threshold


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
        self.observed = 0  # items that earned credit

    def earned(self, share: float = 1.0) -> int:
        """Whole tasks in ``share`` of all the credit the observed items earned (spent or not)."""
        return int(share * self.observed * self.labels // self.per_items)

    @property
    def credit(self) -> Fraction:
        """Tasks that may still be granted, fractional."""
        return Fraction(self._units, self.per_items)

    @property
    def whole(self) -> int:
        """Whole tasks that may still be granted (``floor(credit)``, without building a Fraction)."""
        return self._units // self.per_items

    def observe(self, n_items: int) -> None:
        """Accrue credit for ``n_items`` arriving items."""
        n_items = _count("n_items", n_items, 0)
        self._units += self.labels * n_items
        self.observed += n_items

    def grant(self, requested: int) -> int:
        """How many of ``requested`` tasks may be sent now (whole credit, at most ``requested``).

        The granted tasks are spent.
        """
        requested = _count("requested", requested, 0)
        granted = min(requested, self._units // self.per_items)
        self._units -= granted * self.per_items
        return granted
