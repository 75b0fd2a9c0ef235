"""Certified bounds on model-label errors from randomized human audits: an anytime-valid upper
bound on how many model labels are wrong, valid at every look the system takes.

The setting (design-based: the only randomness the guarantee relies on is the system's own coin):
every time the model would give an item its label (a *trial*: at arrival, when a new version
re-scores the backlog, at close), the selector first sends the item to a person with a known
probability ``pi`` set before the draw. Drawn items are labeled by people, so the model's error on
them is observed; the others keep the model's label, and their errors are what is bounded.

For a trial ``i`` with error ``g_i`` (0 or 1, fixed before the draw) and draw ``xi_i ~ Bernoulli(pi_i)``,
the factor ``exp(-lam * xi_i * g_i / pi_i) / E[...]`` has conditional mean 1, so the product over
trials is a nonnegative martingale for every fixed ``lam >= 0``, and so is a fixed mixture over a
grid of ``lam`` [Ville 1939; Waudby-Smith & Ramdas 2024, "Estimating means of bounded random
variables by betting", JRSS-B; the inverse-probability-weighted form of Waudby-Smith et al. 2022,
"Anytime-valid off-policy inference for contextual bandits"]. An error contributes

- ``rho_i(lam) - lam / pi_i`` (< 0) when the item was drawn and the person disagreed (observed),
- ``rho_i(lam) = -log(1 - pi_i + pi_i * exp(-lam / pi_i))`` (>= 0) when it was not drawn (hidden),

and a correct label contributes 0. The hidden errors are unknown; ``rho`` grows with ``pi``, so the
configuration with ``k`` hidden errors that makes the martingale smallest puts them on the ``k``
undrawn trials with the smallest ``pi`` (the same trials for every ``lam``). The upper bound is the
largest ``k`` whose smallest martingale stays below ``1 / alpha``. By Ville's inequality the true
number of hidden errors exceeds the bound at *any* time with probability at most ``alpha``: the
bound may be recomputed after every answer and every model version without spending more error.

A trial with ``pi = 0`` (no budget left to check it) has ``rho = 0``: it is counted as a possible
error at no cost to the evidence, which is what an honest bound must do with an unchecked label.
Drawn trials whose answer has not come in yet are taken as errors (the conservative choice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from winnow.core.domain.errors import InvalidInput

# the betting fractions of the mixture: log-spaced, equal weights (fixed before any data)
LAMBDAS = np.geomspace(1e-3, 20.0, 40)


@dataclass(frozen=True)
class Trials:
    """The audit record of one family of model labels (numpy arrays, one row per trial).

    Attributes
    ----------
    probability : float64 [n]
        Chance the trial's item went to a person, set before the draw; in [0, 1].
    drawn : bool [n]
        Whether it did (then people label it and the model's label is not used).
    error : float64 [n]
        For drawn trials: 1.0 when the people's label differs from the model's, 0.0 when it agrees,
        NaN while the answer is pending. Ignored for trials not drawn.
    """

    probability: np.ndarray
    drawn: np.ndarray
    error: np.ndarray

    @staticmethod
    def of(probability, drawn, error) -> "Trials":
        """Validated trials; InvalidInput names the first bad field."""
        p = np.asarray(probability, np.float64)
        d = np.asarray(drawn, bool)
        e = np.asarray(error, np.float64)
        if p.ndim != 1 or not np.isfinite(p).all() or ((p < 0) | (p > 1)).any():
            raise InvalidInput("probability", "expected a 1-D array of values in [0, 1]")
        if d.shape != p.shape:
            raise InvalidInput("drawn", f"has shape {list(d.shape)} but probability has {list(p.shape)}")
        if e.shape != p.shape:
            raise InvalidInput("error", f"has shape {list(e.shape)} but probability has {list(p.shape)}")
        if (d & (p == 0)).any():
            raise InvalidInput("drawn", "a trial with probability 0 cannot have been drawn")
        known = d & ~np.isnan(e)
        if not np.isin(e[known], (0.0, 1.0)).all():
            raise InvalidInput("error", "drawn trials need 0 (agree), 1 (disagree) or NaN (pending)")
        return Trials(p, d, e)

    def __len__(self) -> int:
        return len(self.probability)


def _mixture_below(logm: np.ndarray, threshold: float) -> np.ndarray:
    """Whether the equal-weight mixture over the lambdas (axis 0) of ``exp(logm)`` stays below
    ``exp(threshold)`` (``1 / alpha``); a column that is ``-inf`` throughout is below."""
    top = logm.max(0)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):  # a -inf column: settled by the where below
        mixture = safe + np.log(np.exp(logm - safe).mean(0))
    return np.where(top == -np.inf, True, mixture < threshold)


def _rho(pi: np.ndarray, lambdas: np.ndarray) -> np.ndarray:
    """``rho[l, i] = -log(1 - pi_i + pi_i * exp(-lam_l / pi_i))`` (0 where ``pi_i`` is 0), ``[L, n]``."""
    pi = np.asarray(pi, np.float64)[None, :]
    lam = lambdas[:, None]
    safe = np.where(pi > 0, pi, 1.0)
    inner = -np.expm1(-lam / safe)  # 1 - exp(-lam / pi), accurate for small lam / pi
    return np.where(pi > 0, -np.log1p(-pi * inner), 0.0)


@dataclass(frozen=True)
class ErrorBound:
    """How many of a family's model labels may be wrong, certified at ``confidence``.

    ``labels`` model labels were kept (trials not drawn); ``observed_errors`` of the drawn trials
    showed the model wrong; ``hidden_errors_upper`` is the anytime-valid upper bound on the wrong
    labels among the kept ones, and ``estimate`` the unbiased (inverse-probability) estimate of it.
    """

    labels: int
    drawn: int
    observed_errors: int
    pending: int
    estimate: float
    hidden_errors_upper: int
    confidence: float

    @property
    def precision_lower(self) -> float | None:
        """Certified lower bound on the share of the kept model labels that are right (None: none kept)."""
        return None if not self.labels else 1.0 - self.hidden_errors_upper / self.labels


def error_bound(trials: Trials, confidence: float = 0.95) -> ErrorBound:
    """The anytime-valid upper bound on wrong model labels among the trials not drawn (module doc)."""
    if not 0.0 < confidence < 1.0:
        raise InvalidInput("confidence", f"must be strictly between 0 and 1, got {confidence!r}")
    p, d, e = trials.probability, trials.drawn, trials.error
    pending = d & np.isnan(e)
    observed = d & ~pending & (e == 1.0)
    errors_seen = observed | pending  # pending answers are taken as disagreements
    # hidden trials grouped by probability, smallest first: where k hidden errors weigh least
    values, counts = np.unique(p[~d], return_counts=True)
    threshold = np.log(1.0 / (1.0 - confidence))
    # log-factors of the seen errors, per lambda: sum of rho - lam / pi
    pe = p[errors_seen]
    seen = (_rho(pe, LAMBDAS) - LAMBDAS[:, None] / pe[None, :]).sum(1) if pe.size else np.zeros(len(LAMBDAS))
    k_max = 0
    if values.size:
        rho = _rho(values, LAMBDAS)  # [L, u]: one hidden error at each probability
        before = seen[:, None] + np.concatenate([np.zeros((len(LAMBDAS), 1)), np.cumsum(rho * counts, 1)[:, :-1]], 1)

        def passes(logm: np.ndarray) -> np.ndarray:
            return _mixture_below(logm, threshold)

        # every count is monotone: whole groups pass up to the first that does not
        full = passes(before + rho * counts)  # [u]: all of group j hidden-wrong, on top of those before
        j = int(np.argmin(full)) if not full.all() else values.size
        k_max = int(counts[:j].sum())
        if j < values.size:  # part of group j: m = 0 passes (the groups before did), all of it fails
            lo, hi = 0, int(counts[j])
            while lo + 1 < hi:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if passes((before[:, j] + mid * rho[:, j])[:, None])[0] else (lo, mid)
            k_max += lo
    estimate = float((1.0 / p[observed]).sum() - observed.sum()) if observed.any() else 0.0
    return ErrorBound(labels=int((~d).sum()), drawn=int(d.sum()), observed_errors=int(observed.sum()),
                      pending=int(pending.sum()), estimate=estimate, hidden_errors_upper=k_max,
                      confidence=confidence)


def _sigma(pi: np.ndarray, lambdas: np.ndarray) -> np.ndarray:
    """``sigma[l, i] = log(1 - pi_i + pi_i * exp(lam_l / pi_i))`` (+inf where ``pi_i`` is 0), ``[L, n]``:
    the log of the mean of ``exp(lam * xi / pi)`` for an error drawn with probability ``pi``."""
    pi = np.asarray(pi, np.float64)[None, :]
    lam = lambdas[:, None]
    safe = np.where(pi > 0, pi, 1.0)
    with np.errstate(divide="ignore"):
        out = np.logaddexp(np.log1p(-safe), np.log(safe) + lam / safe)
    return np.where(pi > 0, out, np.inf)


def hidden_errors_lower(trials: Trials, confidence: float = 0.95) -> int:
    """The anytime-valid *lower* bound on wrong model labels among the trials not drawn: evidence that a
    family's labels are worse than claimed, valid at every look (the mirror image of :func:`error_bound`).

    For a fixed ``lam >= 0`` the factor ``exp(lam * xi_i * g_i / pi_i) / E[...]`` also has conditional
    mean 1, so ``M = prod_i exp(g_i * (lam * xi_i / pi_i - sigma_i(lam)))`` is a nonnegative martingale
    and so is the same fixed mixture over ``lam``. An observed error adds ``lam / pi - sigma >= 0``, a
    hidden one subtracts ``sigma``, a correct label adds nothing. ``sigma`` falls as ``pi`` rises, so
    among configurations with ``k`` hidden errors the mixture is smallest with them on the undrawn trials
    of smallest ``pi`` (a trial with ``pi = 0`` could hide any error: ``sigma = inf``). Every ``k`` whose
    smallest mixture stays below ``1 / alpha`` is plausible; the bound is the least of them, and by
    Ville's inequality it exceeds the true count at *any* time with probability at most ``alpha``.
    Pending answers count as agreements (the conservative choice here)."""
    if not 0.0 < confidence < 1.0:
        raise InvalidInput("confidence", f"must be strictly between 0 and 1, got {confidence!r}")
    p, d, e = trials.probability, trials.drawn, trials.error
    observed = d & ~np.isnan(e) & (e == 1.0)
    threshold = np.log(1.0 / (1.0 - confidence))
    po = p[observed]
    logm = ((LAMBDAS[:, None] / po[None, :] - _sigma(po, LAMBDAS)).sum(1) if po.size
            else np.zeros(len(LAMBDAS)))  # [L]: k = 0

    def plausible(logm_k: np.ndarray) -> bool:
        return bool(_mixture_below(logm_k, threshold))

    if plausible(logm):
        return 0
    values, counts = np.unique(p[~d], return_counts=True)  # ascending: where hidden errors weigh most
    k = 0
    for value, count in zip(values, counts):
        sigma = _sigma(np.array([value]), LAMBDAS)[:, 0]  # [L]
        if plausible(logm - count * sigma):  # within this group: the least m that is plausible
            lo, hi = 0, int(count)  # m = lo is not plausible, m = hi is
            while lo + 1 < hi:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if plausible(logm - mid * sigma) else (mid, hi)
            return k + hi
        logm, k = logm - count * sigma, k + int(count)
    return k  # not even every kept label wrong makes the errors seen plausible: all of them, the most there is
