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
    Candidates are scored ``block`` at a time (memory: ``block x t`` floats)."""
    x, t = np.asarray(candidates, np.float64), np.asarray(targets, np.float64)
    if fit.precision is None:
        raise InvalidInput("fit", "needs the posterior's precision: a fit_reward result, not a reward read from a head")
    dim = fit.weight.shape[1]
    if x.ndim != 2 or x.shape[1] != dim or t.ndim != 2 or t.shape[1] != dim or not len(t):
        raise InvalidInput("targets", f"need [n, {dim}] candidates and [t >= 1, {dim}] targets, got {x.shape} and "
                                      f"{t.shape}")
    for name, v in (("candidates", x), ("targets", t)):
        if not np.isfinite(v).all():
            raise InvalidInput(name, "comparison vectors must be finite")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise InvalidInput("block", f"must be an integer >= 1, got {block!r}")
    chol = np.linalg.cholesky(fit.precision)  # H = L L', so x' H^-1 t = (L^-1 x) . (L^-1 t)
    w = fit.weight[0]

    def variance(v: np.ndarray) -> np.ndarray:  # p(1-p) of each comparison's outcome at the posterior mean
        p = 1.0 / (1.0 + np.exp(-(v @ w)))
        return p * (1.0 - p)

    lt = np.linalg.solve(chol, t.T)  # [dim, t]
    s_t, v_t = (lt**2).sum(0), variance(t)
    before = np.log1p(v_t * s_t)
    out = np.empty(len(x))
    for start in range(0, len(x), block):  # [block, t] covariances at a time: memory bounded for any pool
        part = x[start:start + block]
        lx = np.linalg.solve(chol, part.T)  # [dim, b]
        s_x, v_x = (lx**2).sum(0), variance(part)
        c = lx.T @ lt  # [b, t]
        after = np.maximum(s_t[None, :] - c**2 / (s_x + 1.0 / np.maximum(v_x, 1e-12))[:, None], 0.0)
        out[start:start + block] = 0.5 * (before[None, :] - np.log1p(v_t[None, :] * after)).mean(1)
    return out


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
