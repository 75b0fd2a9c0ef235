"""Uncertainty scores from model logits, and temperature scaling that calibrates them.

Logits are shaped ``[n, members, classes]``: ``members`` counts ensemble members or MC-dropout
samples (1 for a plain head). Every score is higher for a more uncertain item.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import entr, logsumexp
from winnow.core.domain.errors import InvalidInput

SCORE_NAMES = ("entropy", "margin", "least_confidence", "bald")
TEMPERATURE_RANGE = (0.05, 20.0)


def _check_temperature(temperature: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, Real) or not (
            np.isfinite(temperature) and temperature > 0):
        raise InvalidInput("temperature", f"must be a finite number > 0, got {temperature!r}")


def _as_logits(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 3 or x.shape[1] < 1 or x.shape[2] < 2:
        raise InvalidInput(
            "logits", f"expected shape [n, members >= 1, classes >= 2], got {list(x.shape)}"
        )
    if not np.isfinite(x).all():
        raise InvalidInput("logits", "contains NaN or infinite values")
    return x


def _as_labels(labels: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,) or not (n == 0 or np.issubdtype(y.dtype, np.integer)):
        raise InvalidInput(
            "labels", f"expected {n} integer class ids, got {y.dtype} {list(y.shape)}"
        )
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        raise InvalidInput("labels", f"class id {y[bad][0]} is outside [0, {n_classes})")
    return y.astype(np.int64)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax of ``logits / temperature`` over the last axis.

    Parameters
    ----------
    logits : float array, shape [..., C]
    temperature : float > 0; above 1 softens, below 1 sharpens.

    Returns
    -------
    float64 array, same shape as ``logits``, rows summing to 1.
    """
    _check_temperature(temperature)
    z = np.asarray(logits, dtype=np.float64) / temperature
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def mean_probs(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Predictive distribution: member probabilities averaged, ``[n, M, C] -> [n, C]``."""
    return softmax(logits, temperature).mean(axis=1)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats, ``[n, C] -> [n]``; ``log C`` for a uniform row, 0 for one-hot."""
    return entr(probs).sum(axis=-1)


def margin_uncertainty(probs: np.ndarray) -> np.ndarray:
    """``1 - (p1 - p2)`` with p1, p2 the two largest probabilities, ``[n, C] -> [n]`` in [0, 1]."""
    top2 = np.partition(probs, -2, axis=-1)[..., -2:]  # [n, 2], ascending
    return 1.0 - (top2[..., 1] - top2[..., 0])


def least_confidence(probs: np.ndarray) -> np.ndarray:
    """``1 - p1``, ``[n, C] -> [n]`` in [0, 1 - 1/C]."""
    return 1.0 - probs.max(axis=-1)


def bald(member_probs: np.ndarray) -> np.ndarray:
    """BALD mutual information ``H(mean_m p_m) - mean_m H(p_m)``, ``[n, M, C] -> [n]``.

    In [0, log C]; high where members are individually confident but disagree (epistemic
    uncertainty) [Houlsby et al. 2011; Gal, Islam & Ghahramani 2017].
    """
    mi = entropy(member_probs.mean(axis=1)) - entropy(member_probs).mean(axis=1)
    return np.maximum(mi, 0.0)  # clip rounding below zero


_PROB_SCORES = {
    "entropy": entropy,
    "margin": margin_uncertainty,
    "least_confidence": least_confidence,
}


@dataclass(frozen=True)
class Scorer:
    """A named uncertainty score at a fixed temperature; ``score(logits [n, M, C]) -> [n]``.

    ``bald`` scores the member probabilities and needs M >= 2; the other scores use the
    mean probabilities. Invalid names or temperatures fail at construction.
    """

    name: str = "entropy"
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in SCORE_NAMES:
            raise InvalidInput(
                "uncertainty",
                f"unknown score {self.name!r}; expected one of {', '.join(SCORE_NAMES)}",
            )
        _check_temperature(self.temperature)

    def score(self, logits: np.ndarray) -> np.ndarray:
        """Uncertainty per item, float64 ``[n]``, higher is more uncertain."""
        x = _as_logits(logits)
        if self.name != "bald":
            return _PROB_SCORES[self.name](mean_probs(x, self.temperature))
        if x.shape[1] < 2:
            raise InvalidInput(
                "logits",
                "bald needs members >= 2 (an ensemble or MC-dropout samples), got 1 member",
            )
        return bald(softmax(x, self.temperature))


def uncertainty(name: str, logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Score ``logits [n, M, C] -> [n]`` by ``name``: entropy|margin|least_confidence|bald."""
    return Scorer(name, temperature).score(logits)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising the NLL of the mean probabilities on labelled items [Guo et al. 2017].

    Parameters
    ----------
    logits : float array, shape [n, M, C]
    labels : int array, shape [n], class ids in [0, C)

    Returns
    -------
    float in ``TEMPERATURE_RANGE``; divide logits by it before the softmax.
    """
    x = _as_logits(logits)
    n, members, n_classes = x.shape
    if n == 0:
        raise InvalidInput("logits", "no items to fit a temperature on")
    y = _as_labels(labels, n, n_classes)
    picked = np.take_along_axis(x, y[:, None, None], axis=2)[..., 0]  # [n, M]

    def nll(log_t: float) -> float:
        t = np.exp(log_t)
        log_p = picked / t - logsumexp(x / t, axis=2)  # [n, M] log p_m(y)
        return float(np.log(members) - logsumexp(log_p, axis=1).mean())

    fit = minimize_scalar(nll, bounds=np.log(TEMPERATURE_RANGE), method="bounded",
                          options={"xatol": 1e-4})
    return float(np.exp(fit.x))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top-class confidence, equal-width bins [Guo et al. 2017].

    ``sum_b |B_b| / n * |accuracy(B_b) - confidence(B_b)|`` with bins ``((b-1)/bins, b/bins]``.

    Parameters
    ----------
    probs : float array, shape [n, C]
    labels : int array, shape [n]
    bins : int >= 1
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or not np.isfinite(p).all():
        raise InvalidInput(
            "probs", f"expected finite probabilities of shape [n >= 1, C], got {list(p.shape)}"
        )
    y = _as_labels(labels, p.shape[0], p.shape[1])
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise InvalidInput("bins", f"must be an integer >= 1, got {bins!r}")
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    b = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    gap = (np.bincount(b, weights=correct, minlength=bins)
           - np.bincount(b, weights=confidence, minlength=bins))
    return float(np.abs(gap).sum() / p.shape[0])
