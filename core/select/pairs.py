"""Active pair selection for preference projects: which pair of a prompt's responses to ask a person
about, and how likely each prompt's pair is to be asked at all.

Within a prompt: the pair whose comparison the reward model is least sure of, by its epistemic
uncertainty (BALD over the reward's posterior members, :func:`winnow.core.ml.reward.preference`),
not by how close the two rewards are: a pair people themselves split on teaches the model nothing.
Across prompts: BAL-PM's two signals (Melo et al. 2024), that uncertainty and diversity over
prompts, here the cosine distance from the prompt to the nearest prompt people have already
compared (a FAISS index of their embeddings), each scaled by its mean over the candidates and mixed
by ``diversity``. Or, in place of the uncertainty, what a comparison's answer is expected to tell
about the outcomes of the comparisons the reward will be asked to predict
(:func:`predictive_information`, EPIG: Smith, Foster & Rainforth 2023): BALD ranks comparisons by how
much they would move the reward's weights, also in directions that no comparison that matters varies
in. The mix, sharpened by a power and added to a floor, becomes draw probabilities
that sum to the comparisons wanted (:func:`winnow.core.select.sampling.spread`), none of them zero,
so every comparison people give is drawn with a known probability, and the certified estimators of
classification projects (inverse-probability weights) apply unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular
from winnow.core.domain.errors import InvalidInput
from winnow.core.ml.reward import RewardFit, preference
from winnow.core.select.index import VectorIndex
from winnow.core.select.sampling import spread


@dataclass(frozen=True)
class PromptPairs:
    """Per prompt ``[n]``: the chosen pair (``first``, ``second``: indexes into the responses given),
    the model's P(first preferred) and the pair's epistemic uncertainty."""

    first: np.ndarray
    second: np.ndarray
    p_first: np.ndarray
    uncertainty: np.ndarray


def most_uncertain_pairs(rewards: np.ndarray, prompts: Sequence[Sequence[int]]) -> PromptPairs:
    """For each prompt (the row indexes of its responses in ``rewards`` ``[n_responses, members]``,
    at least two), the pair of its responses with the most epistemic uncertainty (first of ties)."""
    rewards = np.asarray(rewards, np.float64)
    first, second, p_first, unc = [], [], [], []
    for k, rows in enumerate(prompts):
        rows = np.asarray(rows, np.int64)
        if len(rows) < 2 or len(set(rows.tolist())) != len(rows):
            raise InvalidInput(f"prompts[{k}]", f"needs two or more distinct responses, got {rows.tolist()}")
        i, j = np.triu_indices(len(rows), 1)
        p, u = preference(rewards[rows[i]], rewards[rows[j]])
        best = int(np.argmax(u))
        first.append(rows[i[best]])
        second.append(rows[j[best]])
        p_first.append(p[best])
        unc.append(u[best])
    return PromptPairs(np.array(first, np.int64), np.array(second, np.int64), np.array(p_first), np.array(unc))


class PairInformation:
    """EPIG scores against fixed targets: :func:`predictive_information`'s computation, with the
    posterior's factor and the targets' part done once, so that a served selector scores each batch of
    comparisons against one version's targets at the cost of the batch alone."""

    def __init__(self, targets: np.ndarray, fit: RewardFit, block: int = 4096) -> None:
        t = np.asarray(targets, np.float64)
        if fit.precision is None:
            raise InvalidInput("fit", "needs the posterior's precision: a fit_reward result, not a reward read "
                                      "from a head")
        self.dim = dim = fit.weight.shape[1]
        if t.ndim != 2 or t.shape[1] != dim or not len(t):
            raise InvalidInput("targets", f"need [t >= 1, {dim}] target comparisons, got shape {t.shape}")
        if not np.isfinite(t).all():
            raise InvalidInput("targets", "comparison vectors must be finite")
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise InvalidInput("block", f"must be an integer >= 1, got {block!r}")
        self.block, self.targets = block, t
        # H = L L', so that x' H^-1 t = (L^-1 x) . (L^-1 t)
        self._chol = np.linalg.cholesky(np.asarray(fit.precision, np.float64))
        self._w = np.asarray(fit.weight[0], np.float64)
        self._lt = solve_triangular(self._chol, t.T, lower=True)  # [dim, t]
        self._s_t, self._v_t = (self._lt**2).sum(0), self._variance(t)
        self._before = np.log1p(self._v_t * self._s_t)

    def _variance(self, v: np.ndarray) -> np.ndarray:  # p(1-p) of each comparison's outcome at the posterior mean
        p = 1.0 / (1.0 + np.exp(-(v @ self._w)))
        return p * (1.0 - p)

    def scores(self, candidates: np.ndarray) -> np.ndarray:
        """Per candidate comparison ``[n, dim]``: the mean over the targets of the information drop."""
        x = np.asarray(candidates, np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InvalidInput("candidates", f"need [n, {self.dim}] candidate comparisons, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise InvalidInput("candidates", "comparison vectors must be finite")
        out = np.empty(len(x))
        for start in range(0, len(x), self.block):  # [block, t] covariances at a time: memory bounded for any pool
            part = x[start:start + self.block]
            lx = solve_triangular(self._chol, part.T, lower=True)  # [dim, b]
            s_x, v_x = (lx**2).sum(0), self._variance(part)
            c = lx.T @ self._lt  # [b, t]
            after = np.maximum(self._s_t[None, :] - c**2 / (s_x + 1.0 / np.maximum(v_x, 1e-12))[:, None], 0.0)
            out[start:start + self.block] = 0.5 * (self._before[None, :] - np.log1p(self._v_t[None, :] * after)).mean(1)
        return out


class TargetSample:
    """A seeded uniform sample of at most ``size`` of the comparison vectors ``[dim]`` that arrived (a
    reservoir: Vitter's algorithm R): the comparisons a served reward will be asked to predict, EPIG's
    targets (:class:`PairInformation`). Each arrival is kept with probability ``size / seen``."""

    def __init__(self, size: int = 500, seed: int = 0) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InvalidInput("size", f"must be an integer >= 1, got {size!r}")
        self.size, self.seen = size, 0
        self._rng = np.random.default_rng(seed)
        self._rows: np.ndarray | None = None  # [<= size, dim]

    def __len__(self) -> int:
        return 0 if self._rows is None else len(self._rows)

    @property
    def vectors(self) -> np.ndarray:
        """float64 ``[min(seen, size), dim]``: the sample (a copy)."""
        return np.zeros((0, 0)) if self._rows is None else self._rows.copy()

    def add(self, vectors: np.ndarray) -> None:
        """Offer ``vectors`` ``[n, dim]``, in order."""
        v = np.asarray(vectors, np.float64)
        if v.ndim != 2 or (self._rows is not None and v.shape[1] != self._rows.shape[1]):
            raise InvalidInput("vectors", f"need [n, dim] comparison vectors of one dim, got shape {v.shape}")
        if not len(v):
            return
        if self._rows is None:
            self._rows = np.zeros((0, v.shape[1]))
        room = min(self.size - len(self._rows), len(v))  # the first ``size`` arrivals are all kept
        if room:
            self._rows = np.vstack([self._rows, v[:room]])
        rest = v[room:]
        if len(rest):  # arrival number k (from 0) replaces a uniform slot with probability size / (k + 1)
            number = self.seen + room + np.arange(len(rest))
            slot = np.floor(self._rng.random(len(rest)) * (number + 1)).astype(np.int64)
            for row, k in zip(np.flatnonzero(slot < self.size).tolist(), slot[slot < self.size].tolist()):
                self._rows[k] = rest[row]
        self.seen += len(v)


def predictive_information(candidates: np.ndarray, targets: np.ndarray, fit: RewardFit,
                           block: int = 4096) -> np.ndarray:
    """Per candidate comparison ``[n, dim]`` (first response's embedding minus the second's): the
    information its answer is expected to give about the outcomes of the ``targets`` ``[t, dim]`` (the
    comparisons the reward will be asked to predict; EPIG, Smith, Foster & Rainforth 2023), in closed form
    for the reward's Laplace posterior ``N(w, H^-1)`` (``fit.precision``), mean over the targets.

    With ``z = w . x`` the comparison's logit, ``s_x = x' H^-1 x`` its posterior variance and ``v_x = p(1-p)``
    at the mean, ``0.5 log(1 + v_t s_t)`` is the linearised information between target ``t``'s outcome and
    the weights (BALD in closed form, MacKay 1992). An answer to candidate ``x`` acts, linearised, as an
    observation of ``z_x`` with noise variance ``1 / v_x``, after which ``z_t``'s variance is
    ``s_t - c^2 / (s_x + 1 / v_x)``, ``c = x' H^-1 t``; the score is the drop of the targets' information.
    Candidates are scored ``block`` at a time (memory: ``block x t`` floats); :class:`PairInformation`
    keeps the targets' part for many calls."""
    return PairInformation(targets, fit, block).scores(candidates)


def novelty(prompt_emb: np.ndarray, compared: VectorIndex | None) -> np.ndarray:
    """Per prompt ``[n]``: 1 - cosine to the nearest prompt already compared (1 when none was)."""
    if compared is None or not len(compared):
        return np.ones(len(prompt_emb))
    return np.clip(1.0 - compared.max_similarity(prompt_emb), 0.0, 2.0)


def pair_probabilities(uncertainty: np.ndarray, novel: np.ndarray, total: float, diversity: float = 0.5,
                       floor: float = 0.2, sharpness: float = 1.0) -> np.ndarray:
    """Draw probabilities ``[n]`` summing to ``min(total, n)``: proportional to ``floor`` plus the
    mix ``(1 - diversity) * uncertainty + diversity * novelty`` (each over its mean) raised to
    ``sharpness`` (higher: closer to taking the top of the ranking), so none is below about
    ``floor / (floor + mean weight)`` of the uniform share ``total / n``."""
    uncertainty, novel = np.asarray(uncertainty, float), np.asarray(novel, float)
    if uncertainty.shape != novel.shape or uncertainty.ndim != 1:
        raise InvalidInput("novel", f"need one novelty per prompt, got {novel.shape} for {uncertainty.shape}")
    if not 0.0 <= diversity <= 1.0:
        raise InvalidInput("diversity", f"must be in [0, 1], got {diversity!r}")
    if not floor > 0:
        raise InvalidInput("floor", f"must be > 0, got {floor!r}")
    if not 0 < sharpness <= 16:
        raise InvalidInput("sharpness", f"must be in (0, 16], got {sharpness!r}")
    if not len(uncertainty):
        return np.zeros(0)

    def scaled(x: np.ndarray) -> np.ndarray:
        mean = x.mean()
        return x / mean if mean > 0 else np.ones_like(x)

    mix = (1 - diversity) * scaled(uncertainty) + diversity * scaled(novel)
    weight = floor + scaled(mix ** sharpness)
    return spread(weight, float(total))
