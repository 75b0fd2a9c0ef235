"""Model evaluation from preference comparisons: one model's win rate against another on a set of
prompts, with a confidence interval that uses the reward model's predictions so that fewer human
comparisons are needed.

The target is the win rate people would give on this evaluation set: ``theta = mean_i y_i`` over its
``N`` comparisons (``y_i``: 1 when model A's response is preferred, 0 when B's, 0.5 for a tie), had
every one been answered. Each comparison goes to a person with a known probability ``pi_i`` set
before its draw (Poisson sampling: independent draws); the reward model predicts ``f_i``, the chance
A is preferred, for all of them. The estimator is the active-inference one (Zrnic & Candes 2024,
"Active Statistical Inference", ICML; with uniform ``pi`` it is prediction-powered inference,
Angelopoulos et al. 2023, Science):

    theta_hat = (1/N) sum_i [ f_i + (xi_i / pi_i) (y_i - f_i) ]

unbiased for ``theta`` whatever the predictions are (the correction term undoes their bias, in
expectation over the draws). Its design variance is ``(1/N^2) sum_i (1 - pi_i) / pi_i (y_i - f_i)^2``,
estimated without bias by ``(1/N^2) sum_i xi_i (1 - pi_i) / pi_i^2 (y_i - f_i)^2``; the interval is
the normal one around the estimate (clipped to [0, 1]). The better the predictions, the smaller the
residuals ``y - f`` and the narrower the interval for the same comparisons; the reward model is never
trusted, only used. Without a reward model the predictions are the constant 1/2 (``classical``): the
same estimator, the Horvitz-Thompson mean of the answers.

Where to ask (``evaluation_probabilities``): the variance is smallest with ``pi_i`` proportional to
the expected residual ``sqrt(E (y_i - f_i)^2)``, ``sqrt(f_i (1 - f_i))`` under the model's own
probabilities; mixed with the uniform draw (Zrnic & Candes' safeguard against a model that is
confidently wrong, whose comparisons would otherwise carry huge weights).

The interval is asymptotic (one look, a central limit); its coverage is checked by simulation over
many seeds in the tests and in ``winnow bench preferences`` (``interval_coverage``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm
from winnow.core.domain.errors import InvalidInput
from winnow.core.select.sampling import spread


@dataclass(frozen=True)
class WinRate:
    """Model A's win rate against model B on the evaluation set, and its interval.

    ``comparisons``: human answers it rests on; ``items``: comparisons in the set (``N``);
    ``method``: ``active_inference`` (with the reward model's predictions) or ``classical``."""

    estimate: float
    lower: float
    upper: float
    confidence: float
    comparisons: int
    items: int
    method: str

    @property
    def width(self) -> float:
        return self.upper - self.lower


def _vector(name: str, values, n: int | None = None, low: float = 0.0, high: float = 1.0,
            nan_ok: bool = False) -> np.ndarray:
    a = np.asarray(values, np.float64)
    if a.ndim != 1 or (n is not None and a.size != n):
        raise InvalidInput(name, f"expected a 1-D array of {n if n is not None else 'any'} values, got {list(a.shape)}")
    known = a[~np.isnan(a)] if nan_ok else a
    if (not nan_ok and not np.isfinite(a).all()) or ((known < low) | (known > high)).any():
        raise InvalidInput(name, f"expected values in [{low}, {high}]")
    return a


def win_rate(outcome, drawn, probability, predicted=None, confidence: float = 0.95) -> WinRate:
    """Model A's win rate over ``N`` comparisons (module doc).

    Parameters
    ----------
    outcome : float [N]
        People's answer for drawn comparisons (1 A, 0 B, 0.5 tie); ignored (may be NaN) elsewhere.
    drawn : bool [N]
        Whether the comparison went to a person.
    probability : float [N]
        Its chance to, set before the draw: > 0 where drawn.
    predicted : float [N], optional
        The reward model's P(A preferred) for every comparison; None: the constant 1/2 (classical).
    confidence : float in (0, 1)
        Two-sided coverage of the interval.
    """
    d = np.asarray(drawn)
    if d.ndim != 1 or d.dtype != np.bool_:
        raise InvalidInput("drawn", f"expected a 1-D bool array, got {d.dtype} {list(d.shape)}")
    n = d.size
    if not n:
        raise InvalidInput("drawn", "the evaluation set is empty")
    pi = _vector("probability", probability, n)
    if (d & (pi <= 0)).any():
        raise InvalidInput("probability", "a drawn comparison needs a probability > 0")
    y = _vector("outcome", outcome, n, nan_ok=True)
    if np.isnan(y[d]).any():
        raise InvalidInput("outcome", "every drawn comparison needs its answer (1, 0 or 0.5)")
    f = np.full(n, 0.5) if predicted is None else _vector("predicted", predicted, n)
    if not 0.0 < confidence < 1.0:
        raise InvalidInput("confidence", f"must be strictly between 0 and 1, got {confidence!r}")
    residual = np.where(d, np.nan_to_num(y) - f, 0.0)
    safe = np.where(d, pi, 1.0)
    estimate = float((f.sum() + (residual / safe).sum()) / n)
    variance = float((d * (1.0 - pi) / safe**2 * residual**2).sum() / n**2)
    half = norm.ppf(0.5 + confidence / 2) * np.sqrt(variance)
    return WinRate(estimate, max(0.0, estimate - half), min(1.0, estimate + half), confidence, int(d.sum()), n,
                   "classical" if predicted is None else "active_inference")


def evaluation_probabilities(predicted, budget: float, uniform_share: float = 0.5) -> np.ndarray:
    """Probabilities ``[N]`` summing to ``min(budget, N)`` that narrow the win-rate interval most
    (module doc): ``(1 - uniform_share)`` of the budget in proportion to ``sqrt(f (1 - f))``, the rest
    uniform, so no comparison's chance is below ``uniform_share * budget / N``."""
    f = _vector("predicted", predicted)
    if not 0.0 < uniform_share <= 1.0:
        raise InvalidInput("uniform_share", f"must be in (0, 1], got {uniform_share!r}")
    if not np.isfinite(budget) or budget < 0:
        raise InvalidInput("budget", f"must be a number >= 0, got {budget!r}")
    n = f.size
    if not n or budget >= n:
        return np.ones(n)
    uniform = np.full(n, budget / n)
    spread_part = spread(np.sqrt(f * (1.0 - f)) + 1e-9, budget)
    return np.clip(uniform_share * uniform + (1.0 - uniform_share) * spread_part, 0.0, 1.0)
