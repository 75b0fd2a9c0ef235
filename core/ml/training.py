"""Fitting the head on human labels, cross-fitted calibration and threshold, and model versions on disk."""

from __future__ import annotations

import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from winnow.core.domain.errors import InvalidInput, ModelFileError
from winnow.core.domain.settings import TrainConfig
from winnow.core.ml.autoaccept import ThresholdChoice, choose_threshold
from winnow.core.ml.head import Head, HeadConfig, save_model
from winnow.core.ml.neighbours import NeighbourBlend, blend_probs, choose_weight, votes
from winnow.core.ml.scoring import (
    expected_calibration_error,
    fit_temperature,
    mean_probs,
)


@dataclass(frozen=True)
class TrainResult:
    """A fitted head with the calibration and auto-accept threshold cross-fitted on its own labels."""

    head: Head
    temperature: float  # of the version's logits: 1 where ``blend`` holds the head's own
    threshold: ThresholdChoice
    metrics: dict[str, float]
    blend: NeighbourBlend | None = None  # the neighbours' vote blended with the head, if it helped
    checks: Checks | None = None  # the checks its threshold was chosen on (``checks.npz``)

    def probs(self, embeddings: np.ndarray) -> np.ndarray:
        """The calibrated probabilities ``[n, C]`` this version gives ``embeddings`` ``[n, D]`` (what its
        engines give: the head, blended with the vote where it has one)."""
        logits = head_logits(self.head, embeddings)
        if self.blend is not None:
            logits = self.blend.log_probs(embeddings, logits)
        return mean_probs(logits, self.temperature)


CHECKS_FILE = "checks.npz"


@dataclass(frozen=True)
class Checks:
    """The checks a version's threshold was chosen on, as the choice saw them: out-of-fold confidence and
    correctness [n] and each check's weight [n]. A selector weighs them again to the mix of another
    population (a backlog) before it labels that with the version (``autoaccept.threshold_for_mix``)."""

    confidence: np.ndarray
    correct: np.ndarray
    weights: np.ndarray

    def save(self, folder: Path) -> None:
        """Write ``checks.npz`` into ``folder`` (a version's folder while it is written)."""
        np.savez(Path(folder) / CHECKS_FILE, confidence=self.confidence.astype(np.float64),
                 correct=self.correct.astype(bool), weights=self.weights.astype(np.float64))

    @classmethod
    def load(cls, folder: Path) -> Checks | None:
        """The checks of the version in ``folder``; None for a version written without them.
        ModelFileError naming the file when it cannot be read or its arrays disagree."""
        path = Path(folder) / CHECKS_FILE
        if not path.exists():
            return None
        try:
            with np.load(path) as f:
                checks = cls(f["confidence"], f["correct"], f["weights"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # a truncated file: BadZipFile
            raise ModelFileError(f"{path}: cannot read the checks ({e})") from e
        n = checks.confidence.shape
        if len(n) != 1 or checks.correct.shape != n or checks.weights.shape != n \
                or checks.correct.dtype != np.bool_ or not np.isfinite(checks.confidence).all() \
                or not (np.isfinite(checks.weights) & (checks.weights > 0)).all():
            raise ModelFileError(f"{path}: inconsistent checks (confidence {checks.confidence.shape}, correct "
                                 f"{checks.correct.shape} {checks.correct.dtype}, weights {checks.weights.shape})")
        return checks


def fit_head(
    embeddings: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    config: TrainConfig,
    init: Head | None = None,
    seed: int | None = None,
) -> Head:
    """Fit a head on embeddings float32 [n, D] and class ids [n]; warm-start from ``init`` when given.

    An ensemble (``members > 1``) trains each member on its own Poisson(1) bootstrap weights.
    Initial weights, bootstrap weights and dropout masks come from one local ``torch.Generator``
    seeded with ``seed`` (default ``config.seed``): the process-wide torch seed is never touched,
    so training beside threads that run models changes neither them nor its own result.
    """
    if len(embeddings) != len(labels) or len(labels) == 0:
        raise InvalidInput("labels", f"need one label per embedding and at least one, got {len(labels)} for {len(embeddings)}")
    generator = torch.Generator().manual_seed(config.seed if seed is None else seed)
    head = Head(HeadConfig(embeddings.shape[1], n_classes, config.hidden, config.members, config.dropout), generator)
    warm = init is not None and init.config == head.config
    if warm:
        head.load_state_dict(init.state_dict())
    x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))  # [n, D]
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))  # [n]
    if config.hidden == 0 and config.members == 1:
        return _fit_logistic(head, x, y, config, warm)
    weights = torch.ones(len(y), config.members)
    if config.members > 1:
        weights = torch.poisson(torch.ones(len(y), config.members), generator=generator)  # [n, M]
    weights = weights / weights.sum(0, keepdim=True)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    head.train()
    for _ in range(config.warm_steps if warm else config.steps):
        optimizer.zero_grad()
        x_in = x * config.input_scale
        logits = head(x_in, generator)  # [n, M, C]
        loss = F.cross_entropy(logits.permute(0, 2, 1), y[:, None].expand(-1, config.members), reduction="none")
        (loss * weights).sum().backward()
        optimizer.step()
    _fold_input_scale(head, config.input_scale)
    return head.eval()


def _fold_input_scale(head: Head, scale: float) -> None:
    """Make the head take unscaled embeddings: the first layer's weights absorb ``scale``."""
    with torch.no_grad():
        (head.hidden_weight if head.config.hidden else head.out_weight).mul_(scale)


def _fit_logistic(head: Head, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, warm: bool) -> Head:
    """Multinomial logistic regression by L-BFGS (strong Wolfe line search), warm-started when given."""
    scale = config.input_scale
    weight = (head.out_weight[0].detach() / scale if warm else torch.zeros_like(head.out_weight[0])).requires_grad_()
    bias = (head.out_bias[0].detach().clone() if warm else torch.zeros_like(head.out_bias[0])).requires_grad_()
    x_in = x * scale  # [n, D]
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=config.max_iter, history_size=10,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x_in @ weight + bias, y) + 0.5 * config.l2 * (weight * weight).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        head.out_weight.copy_((weight.detach() * scale)[None])
        head.out_bias.copy_(bias.detach()[None])
    return head.eval()


def head_logits(head: Head, embeddings: np.ndarray) -> np.ndarray:
    """Logits float32 [n, members, classes] of a torch head (training-time scoring)."""
    with torch.inference_mode():
        return head(torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))).numpy()


Fitter = Callable[..., Head]  # fit_head's signature: (embeddings, labels, n_classes, config, init=, seed=) -> Head


def cross_fitted_logits(embeddings: np.ndarray, labels: np.ndarray, n_classes: int, config: TrainConfig,
                        fitter: Fitter = fit_head) -> np.ndarray:
    """Out-of-fold logits [n, members, classes]: each item scored by a head that never saw its label."""
    n = len(labels)
    folds = min(config.folds, n)
    order = np.random.default_rng(config.seed).permutation(n)
    out = None
    for k in range(folds):
        held = order[k::folds]
        train = np.setdiff1d(order, held, assume_unique=True)
        head = fitter(embeddings[train], labels[train], n_classes, config, seed=config.seed + 1 + k)
        if out is None:
            out = np.zeros((n, head.config.members, n_classes), dtype=np.float32)
        out[held] = head_logits(head, embeddings[held])
    return out


def train(
    embeddings: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    precision_target: float,
    config: TrainConfig,
    init: Head | None = None,
    gold_embeddings: np.ndarray | None = None,
    gold_labels: np.ndarray | None = None,
    threshold_mask: np.ndarray | None = None,
    threshold_weights: np.ndarray | None = None,
    extra_embeddings: np.ndarray | None = None,
    extra_labels: np.ndarray | None = None,
    fitter: Fitter = fit_head,
    ids: Sequence[str] | None = None,
) -> TrainResult:
    """Fit the head on all human labels and choose its temperature and auto-accept threshold.

    The threshold never sees the labels of the items it will accept: it is chosen on out-of-fold
    predictions for the human-labelled items [cross-fitting], with a one-sided Clopper-Pearson bound
    (``autoaccept.choose_threshold``) on the items of ``threshold_mask`` [n] when given (the items
    drawn where the model would label them: people's other picks are the hard items and would bias
    it), each weighted by ``threshold_weights`` [n] (``1 / probability`` of its draw) when given and
    ``config.threshold_weights`` is ``inverse_probability`` (else each counts once). Gold answers (operator-given) are
    held out of training and only evaluated on. ``extra_embeddings`` / ``extra_labels`` (certified
    model labels: self-training) join the final fit only, never the cross-fitting that calibrates and
    chooses the threshold. ``fitter`` fits a head (``fit_head``, or a preference project's
    :func:`~winnow.core.ml.reward.fit_preference_head`). A classification head may be blended with its
    labeled neighbours' vote (``config.neighbours``, :mod:`winnow.core.ml.neighbours`); ``ids`` [n] name
    the items, so that an erasure can take their vectors out of the version's bank.
    """
    started = time.perf_counter()
    oof = cross_fitted_logits(embeddings, labels, n_classes, config, fitter)  # [n, M, C]
    temperature = fit_temperature(oof, labels)
    oof_probs = mean_probs(oof, temperature)  # [n, C]
    blend, blend_metrics = None, {}
    if fitter is fit_head and config.neighbours and len(labels) > 2 * config.neighbours:
        # the vote of each item's nearest other labeled items in the bank the version keeps (all of them,
        # or a seeded sample of ``neighbour_bank``), weighed against the head out of fold
        bank = np.arange(len(labels))
        if len(bank) > config.neighbour_bank:
            bank = np.sort(np.random.default_rng(config.seed).choice(len(bank), config.neighbour_bank, False))
        own = np.full(len(labels), -1)
        own[bank] = np.arange(len(bank))
        bank_x, bank_y = np.asarray(embeddings, np.float32)[bank], np.asarray(labels, np.int64)[bank]
        vote = votes(bank_x, bank_y, n_classes, embeddings, config.neighbours, config.neighbour_tau, own)
        weight, losses = choose_weight(oof_probs, vote, labels)
        blend_metrics = {"neighbour_weight": weight, **{f"neighbour_logloss_{w}": v for w, v in losses.items()}}
        if weight > 0:
            oof_probs = blend_probs(oof_probs, vote, weight)
            bank_ids = (np.asarray(ids, dtype=str) if ids is not None else np.full(len(labels), ""))[bank]
            blend = NeighbourBlend(bank_x, bank_y, bank_ids, n_classes, config.neighbours, config.neighbour_tau,
                                   weight, temperature)
    correct = oof_probs.argmax(1) == labels
    sample = np.ones(len(labels), bool) if threshold_mask is None else np.asarray(threshold_mask, bool)
    pooled = threshold_weights is None or config.threshold_weights == "pooled"  # TrainConfig's docstring
    w = (np.ones(len(labels)) if pooled else np.asarray(threshold_weights, float))[sample]
    choice = choose_threshold(oof_probs.max(1)[sample], correct[sample], precision_target, config.confidence_level,
                              config.min_support, w)
    if extra_labels is not None and len(extra_labels):
        head = fitter(np.concatenate([embeddings, extra_embeddings]), np.concatenate([labels, extra_labels]),
                      n_classes, config, init=init)
    else:
        head = fitter(embeddings, labels, n_classes, config, init=init)
    metrics = {
        "n_train": float(len(labels)),
        "heldout_accuracy": float(correct.mean()),
        "heldout_ece": float(expected_calibration_error(oof_probs, labels)),
        "threshold_sample": float(w.sum() ** 2 / (w**2).sum()) if len(w) else 0.0,
        "threshold_sample_coverage": float(choice.coverage),
        **blend_metrics,
        "train_s": time.perf_counter() - started,
    }
    checks = Checks(oof_probs.max(1)[sample], correct[sample], w)
    result = TrainResult(head, 1.0 if blend is not None else temperature, choice, metrics, blend, checks)
    if gold_embeddings is not None and gold_labels is not None and len(gold_labels):
        metrics["gold_accuracy"] = float((result.probs(gold_embeddings).argmax(1) == gold_labels).mean())
    return result


def write_version(folder: Path, result: TrainResult, version: str, classes: Sequence[str], config: TrainConfig,
                  encoder: str | None = None, extra: Callable[[Path], None] | None = None) -> None:
    """Save a trained head as a model-version folder (safetensors + ONNX + meta.json, atomically);
    ``encoder``: the encoder model whose vectors it was fitted on (``meta["encoder"]``); ``extra``
    writes more files into the folder before it appears (a preference project's reward model). A version
    with a neighbour vote (``result.blend``) also holds ``neighbours.npz`` and ``meta["neighbours"]``;
    its engines return blended log-probabilities (temperature 1), its head.onnx the head's own logits. The
    checks its threshold was chosen on (``result.checks``) go in ``checks.npz``."""
    threshold = result.threshold
    blend = result.blend

    def write_extra(tmp: Path) -> None:
        if blend is not None:
            blend.save(tmp)
        if result.checks is not None:
            result.checks.save(tmp)
        if extra is not None:
            extra(tmp)

    described = {} if blend is None else {"neighbours": blend.described()}
    save_model(folder, result.head, {**described,
        "version": version,
        "encoder": encoder,
        "classes": list(classes),
        "temperature": result.temperature,
        "threshold": threshold.threshold if np.isfinite(threshold.threshold) else None,
        "candidate_threshold": threshold.candidate if np.isfinite(threshold.candidate) else None,
        "threshold_choice": {k: (v if not isinstance(v, float) or np.isfinite(v) else None)
                             for k, v in asdict(threshold).items()},
        "metrics": result.metrics,
        "train_config": asdict(config),
    }, write_extra)
