"""Model evaluation in a served preference project: every pair of models' win rate, with the interval
of :func:`winnow.core.ml.evaluation.win_rate`, from each comparison's draw at its arrival look.

The sample: at its arrival look every comparison gets its chance of a person, ``pi_i``, before its
draw, and the selector keeps both (``Store.arrival_draws``) with ``f_i``, the reward model's expected
outcome for response A at that look. That model had learned only from answers given before the item
arrived, and the draw came after ``pi_i`` and ``f_i`` were fixed, so each term
``f_i + xi_i (y_i - f_i) / pi_i`` is unbiased for ``y_i`` given the past: the active-inference
estimator (Zrnic & Candes 2024) in its sequential form. Answers people gave to a comparison later
(picked from the backlog, checked at another look) are not in the sample; the comparison counts as
undrawn there, which costs width, never validity.

The evaluation set of models X and Y is every comparison whose two responses came from them (in
either order), oriented so that ``y = 1`` means X's response was preferred. Left out of it, and
counted: comparisons whose arrival look found no credit (``pi = 0``: they could not have been asked,
so no unbiased term exists for them) and drawn comparisons whose answer is not in yet (``pending``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from winnow.core.ml.evaluation import WinRate, win_rate
from winnow.core.ports.store import Store

OUTCOME = {"A": 1.0, "B": 0.0, "tie": 0.5}


@dataclass(frozen=True)
class ModelWinRate(WinRate):
    """Model ``model_a``'s win rate against ``model_b`` (a tie counts half) on their comparisons.

    ``items``: comparisons in the evaluation set; ``comparisons``: those answered by people through
    their arrival draw (the sample); ``pending``: drawn but not answered yet; ``unreachable``: those
    whose arrival look had no credit (both left out of ``items``)."""

    model_a: str
    model_b: str
    pending: int
    unreachable: int


def pair_win_rates(model_a: list[str], model_b: list[str], probability: np.ndarray, drawn: np.ndarray,
                   expected: np.ndarray, outcome: np.ndarray, confidence: float = 0.95) -> list[ModelWinRate]:
    """Win rates of every pair of models (module doc) from per-comparison arrays: the models of
    responses A and B, the arrival draw's probability and result, the expected outcome for A and the
    answer (1 A, 0 B, 0.5 tie; NaN where no person answered). Pairs sorted by name, ``model_a`` first."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for k, (a, b) in enumerate(zip(model_a, model_b)):
        if a and b and a != b:
            groups[tuple(sorted((a, b)))].append(k)
    out = []
    for (first, second), rows in sorted(groups.items()):
        rows = np.array(rows)
        flip = np.array([model_a[k] != first for k in rows])  # response A came from ``second``
        pi, d = probability[rows], drawn[rows]
        y = np.where(flip, 1.0 - outcome[rows], outcome[rows])
        f = np.where(flip, 1.0 - expected[rows], expected[rows])
        pending = d & np.isnan(y)
        keep = (pi > 0) & ~pending
        if not keep.any():
            continue
        w = win_rate(np.where(d[keep], y[keep], np.nan), d[keep], pi[keep], f[keep], confidence)
        out.append(ModelWinRate(float(w.estimate), float(w.lower), float(w.upper), confidence, w.comparisons, w.items,
                                w.method, first, second, int(pending.sum()), int((pi <= 0).sum())))
    return out


def win_rates(store: Store, project: str, confidence: float = 0.95) -> list[ModelWinRate]:
    """Every pair of models' win rate in a preference project now (empty for a classification project,
    or while no comparison names two models)."""
    draws = store.arrival_draws(project)
    if not draws:
        return []
    ids = [d.item_id for d in draws]
    items = {i.item_id: i for i in store.find_items(project, ids)}
    answered = {label.item_id: OUTCOME.get(label.label, np.nan)
                for label in store.labels(project) if label.source in ("human", "gold")}
    kept = [d for d in draws if d.item_id in items and len(items[d.item_id].responses) == 2]
    return pair_win_rates([items[d.item_id].responses[0].model for d in kept],
                          [items[d.item_id].responses[1].model for d in kept],
                          np.array([d.probability for d in kept]), np.array([d.drawn for d in kept], bool),
                          np.array([d.expected for d in kept]),
                          np.array([answered.get(d.item_id, np.nan) for d in kept]), confidence)
