"""Stream selection with known probabilities: each item's chance of going to a person is set
before its draw, and the label budget holds exactly over the stream.

Why stochastic: a human label drawn with a known probability is an unbiased sample of where it was
drawn from, with weight ``1 / probability``; the certified bounds (:mod:`winnow.core.ml.certify`)
and the threshold's estimate are built on such draws. Why the budget check per item: the budget is
exact. The draws run one item at a time, and an item whose turn finds less than one whole label of
credit is not funded: its probability is 0, and the caller decides what that means (an item the
model would label then waits, so no label is given unchecked during the stream). After ``M``
arrivals at most ``floor(M * labels / per_items)`` items were drawn, whatever the later looks do.

Uniforms come from a keyed hash of (seed, project, item, look), not from a generator's state: a
look repeated after a crash draws the same way, and no two looks share a uniform. (Keep the seed
private where producers could choose item ids adversarially.)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from winnow.core.domain.errors import InvalidInput
from winnow.core.select.strategies import BudgetController


def uniforms(seed: int, project: str, item_ids: list[str], look: str) -> np.ndarray:
    """float64 ``[n]`` in [0, 1): one independent-looking uniform per (seed, project, item, look)."""
    out = np.empty(len(item_ids))
    prefix = f"{seed}\x1f{project}\x1f{look}\x1f".encode()
    for k, item_id in enumerate(item_ids):
        digest = hashlib.blake2b(prefix + item_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        out[k] = int.from_bytes(digest, "big") / 2.0**64
    return out


@dataclass(frozen=True)
class Draws:
    """The outcome of one look at ``n`` items: ``probability`` float64 ``[n]`` (set before each draw,
    0 where no budget was left), ``drawn`` bool ``[n]`` and ``funded`` bool ``[n]``: whether a whole
    label of credit was there when the item's turn came (an unfunded item had probability 0)."""

    probability: np.ndarray
    drawn: np.ndarray
    funded: np.ndarray


class StreamSampler:
    """Per-item draws under an exact budget (module doc): the sampler observes arrivals on the
    budget and spends its credit."""

    def __init__(self, budget: BudgetController) -> None:
        self.budget = budget

    def draw(self, probability: np.ndarray, u: np.ndarray, arriving: bool = True, keep: int = 0) -> Draws:
        """Draw ``n`` items one at a time with ``probability`` ``[n]`` in [0, 1] and uniforms ``u``
        ``[n]``. ``arriving``: the items are new to the stream (each earns the budget its credit
        before its turn); False for a later look at items already counted. An item is funded (may be
        drawn) while the budget holds a whole label beyond ``keep``."""
        p = np.asarray(probability, float)
        n = len(p)
        if len(u) != n or not np.isfinite(p).all() or ((p < 0) | (p > 1)).any():
            raise InvalidInput("probability", f"need {len(u)} probabilities in [0, 1], got {n}")
        out = np.zeros(n)
        drawn = np.zeros(n, bool)
        funded = np.zeros(n, bool)
        for k in range(n):
            if arriving:
                self.budget.observe(1)
            if self.budget.whole - keep < 1:
                continue  # no whole label left for it: this item cannot be drawn (probability 0)
            funded[k] = True
            out[k] = p[k]
            if u[k] < p[k]:
                drawn[k] = self.budget.grant(1) == 1
        return Draws(out, drawn, funded)


def draw_with_extra(base: StreamSampler, extra: StreamSampler, p: np.ndarray, q: np.ndarray, u: np.ndarray,
                    v: np.ndarray) -> Draws:
    """Arriving items drawn by two samplers on budgets of their own: each item's base draw (``p``, ``u``
    on ``base``'s budget) and, where that did not draw it, an extra draw (``q``, ``v`` on ``extra``'s).
    Both chances are set before the item's draws (each depends on the earlier items only), so the
    item's probability of a person, ``1 - (1 - p') (1 - q')`` with the funded ``p'`` and ``q'``, is
    known before its draw as every estimator here needs. Each budget stays exact: the extra budget pays
    only for the items its own draw sent. ``funded`` is the base budget's."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    n = len(p)
    for name, values, uniform in (("probability", p, u), ("extra_probability", q, v)):
        if len(values) != n or len(uniform) != n or not np.isfinite(values).all() or (
                (values < 0) | (values > 1)).any():
            raise InvalidInput(name, f"need {n} probabilities in [0, 1] and as many uniforms")
    probability, drawn, funded = np.zeros(n), np.zeros(n, bool), np.zeros(n, bool)
    for k in range(n):
        base.budget.observe(1)
        extra.budget.observe(1)
        funded[k] = base.budget.whole >= 1
        p_k = p[k] if funded[k] else 0.0
        q_k = q[k] if extra.budget.whole >= 1 else 0.0
        probability[k] = 1.0 - (1.0 - p_k) * (1.0 - q_k)
        if u[k] < p_k:
            drawn[k] = base.budget.grant(1) == 1
        elif v[k] < q_k:
            drawn[k] = extra.budget.grant(1) == 1
    return Draws(probability, drawn, funded)


def spread(weights: np.ndarray, total: float) -> np.ndarray:
    """Probabilities ``clip(s * weights, 0, 1)`` ``[n]`` whose sum is ``total`` (all 1 when ``total >= n``):
    how the close spends the credit that is left, in proportion to each item's weight."""
    w = np.asarray(weights, float)
    if total >= len(w) or not len(w):
        return np.ones(len(w))
    if total <= 0 or not (w > 0).any():
        return np.zeros(len(w))
    lo, hi = 0.0, 1.0
    while np.clip(hi * w, 0, 1).sum() < total:
        hi *= 2.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.clip(mid * w, 0, 1).sum() < total else (lo, mid)
    return np.clip(lo * w, 0.0, 1.0)
