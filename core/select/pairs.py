"""Active pair selection for preference projects: which pair of a prompt's responses to ask a person
about, and how likely each prompt's pair is to be asked at all.

Within a prompt: the pair whose comparison the reward model is least sure of, by its epistemic
uncertainty (BALD over the reward's posterior members, :func:`winnow.core.ml.reward.preference`),
not by how close the two rewards are: a pair people themselves split on teaches the model nothing.
Across prompts: BAL-PM's two signals (Melo et al. 2024), that uncertainty and diversity over
prompts, here the cosine distance from the prompt to the nearest prompt people have already
compared (a FAISS index of their embeddings), each scaled by its mean over the candidates and mixed
by ``diversity``. The mix, sharpened by a power and added to a floor, becomes draw probabilities
that sum to the comparisons wanted (:func:`winnow.core.select.sampling.spread`), none of them zero,
so every comparison people give is drawn with a known probability, and the certified estimators of
classification projects (inverse-probability weights) apply unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from winnow.core.domain.errors import InvalidInput
from winnow.core.ml.reward import preference
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
