"""The Bradley-Terry reward model of preference projects: a linear reward on a response's sentence
embedding, fitted on people's comparisons, with its epistemic uncertainty; saved and loaded as a model
version (reward.safetensors + reward.onnx + meta.json) like the classifier head.

A person prefers response ``a`` over ``b`` with probability ``sigmoid(r(a) - r(b))``, ``r(x) = w . x``
(Bradley & Terry 1952). The fit is L2-regularised logistic regression on embedding differences,
solved by Newton's method; a tie counts as half a win each way. Its epistemic uncertainty is the
Laplace approximation of the posterior, ``N(w, H^-1)`` with ``H`` the Hessian at the optimum
(MacKay 1992): the ensemble's members are the posterior mean (member 0) and draws from it, so the
exported graph gives every member's reward in one matrix product, and the pair selector reads the
uncertainty from the members' disagreement as it does for an ensemble of classifier heads
(BALD, Houlsby et al. 2011; the preference form is BAL-PM's, Melo et al. 2024).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from winnow.core.domain.errors import InvalidInput, ModelFileError
from winnow.core.ml.encoder import export_module, onnx_session
from winnow.core.ml.head import Head, HeadConfig, read_meta, write_version_folder

WEIGHTS_FILE, ONNX_FILE, META_FILE = "reward.safetensors", "reward.onnx", "meta.json"
REWARD_FOLDER = "reward"  # a preference project's model version holds its reward model here
OUTCOMES = {"A": 1.0, "B": 0.0, "tie": 0.5}  # a person's answer -> the share of a win for response A


@dataclass(frozen=True)
class RewardConfig:
    """``members``: the posterior mean plus ``members - 1`` draws; ``l2``: the prior's precision (on
    unit-norm embeddings; larger trusts few comparisons less); ``seed`` for the draws."""

    members: int = 16
    l2: float = 10.0
    max_iter: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("members", 1), ("max_iter", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInput(name, f"must be an integer >= {low}, got {value!r}")
        if isinstance(self.l2, bool) or not isinstance(self.l2, (int, float)) or not (self.l2 > 0 and
                                                                                      math.isfinite(self.l2)):
            raise InvalidInput("l2", f"must be a positive finite number, got {self.l2!r}")


class RewardHead(nn.Module):
    """``members`` linear rewards computed as one matrix product: emb float32 ``[B, dim]`` -> ``[B, members]``."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        if weight.ndim != 2:
            raise InvalidInput("weight", f"must be [members, dim], got shape {tuple(weight.shape)}")
        self.weight = nn.Parameter(weight.to(torch.float32), requires_grad=False)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return emb @ self.weight.T


@dataclass(frozen=True)
class RewardFit:
    """A fitted reward: ``weight`` float64 ``[members, dim]`` (row 0 the posterior mean), and what it saw;
    ``precision`` ``[dim, dim]``: the Laplace posterior's precision ``H`` (its covariance is ``H^-1``), kept
    by :func:`fit_reward` for selection that needs the posterior's covariances (None for a reward read back
    from a head, which carries only its members)."""

    weight: np.ndarray
    n_train: int
    log_loss: float
    precision: np.ndarray | None = None

    def rewards(self, emb: np.ndarray) -> np.ndarray:
        """float64 ``[n, members]``: every member's reward of each response."""
        return np.asarray(emb, np.float64) @ self.weight.T


def _pairs(first: np.ndarray, second: np.ndarray, outcome: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    y = np.asarray(outcome, np.float64)
    if first.ndim != 2 or first.shape != second.shape:
        raise InvalidInput("second", f"need two [n, dim] arrays of one shape, got {first.shape} and {second.shape}")
    if y.shape != (len(first),):
        raise InvalidInput("outcome", f"need one outcome per pair ({len(first)}), got shape {y.shape}")
    if not len(y):
        raise InvalidInput("outcome", "need at least one comparison")
    if not (np.isfinite(first).all() and np.isfinite(second).all()):
        raise InvalidInput("first", "embeddings must be finite")
    if not np.isin(y, (0.0, 0.5, 1.0)).all():
        raise InvalidInput("outcome", "each outcome must be 1 (first better), 0 (second better) or 0.5 (tie)")
    return first - second, y


def laplace_precision(differences: np.ndarray, mean: np.ndarray, l2: float = RewardConfig.l2) -> np.ndarray:
    """The Hessian of the fit's loss at the reward ``mean`` ``[dim]`` on comparisons ``differences``
    ``[n, dim]``: ``sum_i p_i (1 - p_i) d_i d_i' + l2 I`` (the answers do not enter it), the precision of the
    Laplace posterior ``N(mean, H^-1)`` where ``mean`` is the fit's optimum."""
    d = np.asarray(differences, np.float64)
    p = 1.0 / (1.0 + np.exp(-(d @ np.asarray(mean, np.float64))))
    return (d * (p * (1 - p))[:, None]).T @ d + l2 * np.eye(d.shape[1])


def fit_reward(first: np.ndarray, second: np.ndarray, outcome: np.ndarray, config: RewardConfig = RewardConfig(),
               init: RewardFit | None = None) -> RewardFit:
    """Fit on ``n`` comparisons: embeddings of the two responses ``[n, dim]`` each, and ``outcome``
    ``[n]`` (1: the first was preferred, 0: the second, 0.5: a tie). Warm-starts from ``init``'s mean."""
    d, y = _pairs(first, second, outcome)
    dim = d.shape[1]
    w = init.weight[0].copy() if init is not None and init.weight.shape[1] == dim else np.zeros(dim)
    for _ in range(config.max_iter):
        p = 1.0 / (1.0 + np.exp(-(d @ w)))
        step = np.linalg.solve(laplace_precision(d, w, config.l2), d.T @ (p - y) + config.l2 * w)
        w = w - step
        if np.abs(step).max() < 1e-8:
            break
    z = d @ w
    hessian = laplace_precision(d, w, config.l2)
    # draws from N(w, H^-1): w + L^-T e with H = L L^T, so that Cov = (L L^T)^-1
    chol = np.linalg.cholesky(hessian)
    noise = np.random.default_rng(config.seed).standard_normal((dim, config.members - 1))
    draws = w[None, :] + np.linalg.solve(chol.T, noise).T
    log_loss = float(np.mean(np.logaddexp(0, -z) * y + np.logaddexp(0, z) * (1 - y)))
    return RewardFit(np.vstack([w[None, :], draws]), len(y), log_loss, hessian)


def preference(rewards_a: np.ndarray, rewards_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From every member's reward of responses A and B ``[n, members]``: P(A preferred) by the
    posterior mean (member 0) ``[n]``, and the epistemic uncertainty of the comparison ``[n]``: the
    mutual information between the answer and the reward (BALD), over the members (0 with one member)."""
    diff = np.asarray(rewards_a, np.float64) - np.asarray(rewards_b, np.float64)
    p = 1.0 / (1.0 + np.exp(-diff))

    def entropy(q: np.ndarray) -> np.ndarray:
        q = np.clip(q, 1e-12, 1 - 1e-12)
        return -(q * np.log(q) + (1 - q) * np.log(1 - q))

    members = p[:, 1:] if p.shape[1] > 1 else p
    return p[:, 0], np.maximum(entropy(members.mean(1)) - entropy(members).mean(1), 0.0)


TIE_BIAS_RANGE = (-20.0, 10.0)


def _tie_bias(z: np.ndarray, ties: float, n: int) -> float:
    """The tie logit ``b`` at which the head's expected ties, ``sum_i e^b / (e^(z_i/2) + e^(-z_i/2) + e^b)``,
    match the ties seen (smoothed: ``(ties + 0.5) / (n + 1)`` of the comparisons); by bisection (monotone in b)."""
    target = (ties + 0.5) / (n + 1) * len(z)
    scale = np.logaddexp(z / 2, -z / 2)  # log(e^(z/2) + e^(-z/2))
    low, high = TIE_BIAS_RANGE
    for _ in range(60):
        mid = (low + high) / 2
        expected = np.sum(1.0 / (1.0 + np.exp(scale - mid)))
        low, high = (mid, high) if expected < target else (low, mid)
    return (low + high) / 2


def preference_head(fit: RewardFit, tie_bias: float) -> Head:
    """The reward as a classifier head over PREFERENCE_CLASSES (A, B, tie) on comparison vectors ``v``:
    member ``m``'s logits are ``(w_m . v / 2, -w_m . v / 2, tie_bias)``, so ``P(A) / P(B) = e^(w_m . v)``
    (Bradley-Terry) and a tie gets ``e^b / (e^(z/2) + e^(-z/2) + e^b)`` (Davidson 1970's model of ties):
    the selector, the calibration and the certified threshold read it as they read any head."""
    members, dim = fit.weight.shape
    head = Head(HeadConfig(dim, 3, 0, members, 0.0))
    w = torch.from_numpy(fit.weight).to(torch.float32)  # [M, D]
    with torch.no_grad():
        head.out_weight.copy_(torch.stack([w / 2, -w / 2, torch.zeros_like(w)], dim=2))  # [M, D, 3]
        head.out_bias.copy_(torch.tensor([0.0, 0.0, tie_bias]).expand(members, 3))
    return head.eval()


def reward_of(head: Head) -> RewardFit:
    """The reward a preference head carries (:func:`preference_head`): ``w_m = 2 x`` its A column."""
    weight = 2.0 * head.out_weight.detach()[:, :, 0].to(torch.float64).numpy()
    return RewardFit(weight, 0, float("nan"))


def fit_preference_head(embeddings: np.ndarray, labels: np.ndarray, n_classes: int, config, init=None,
                        seed: int | None = None) -> Head:
    """:func:`fit_reward` on comparison vectors ``[n, D]`` and answers (class ids of PREFERENCE_CLASSES:
    0 A, 1 B, 2 tie), as a :func:`preference_head`; the training's signature (``config`` a
    ``TrainConfig``: its seed draws the posterior's members), warm-started from ``init``'s reward."""
    if n_classes != 3:
        raise InvalidInput("n_classes", f"a preference head answers A, B or tie (3 classes), got {n_classes}")
    y = np.asarray(labels)
    if not np.isin(y, (0, 1, 2)).all():
        raise InvalidInput("labels", "each answer must be 0 (A), 1 (B) or 2 (tie)")
    outcome = np.choose(y, (1.0, 0.0, 0.5))
    v = np.asarray(embeddings, np.float64)
    start = reward_of(init) if init is not None and init.config.dim == v.shape[1] else None
    fit = fit_reward(v, np.zeros_like(v), outcome, RewardConfig(seed=config.seed if seed is None else seed), init=start)
    return preference_head(fit, _tie_bias(v @ fit.weight[0], float(np.sum(y == 2)), len(y)))


def save_reward(folder: Path, fit: RewardFit, meta: dict) -> None:
    """Write a reward model version: reward.safetensors, reward.onnx (``embeddings`` float32 ``[batch,
    dim]`` -> ``rewards`` ``[batch, members]``) and meta.json (``meta`` needs ``version``; ``kind``,
    ``members``, ``dim`` and ``n_train`` are added). Written into a temporary sibling renamed last."""
    version = meta.get("version")
    if not isinstance(version, str) or not version or "/" in version:
        raise InvalidInput("meta.version", f"must be a non-empty string without '/', got {version!r}")
    members, dim = fit.weight.shape
    full = {**meta, "kind": "reward", "members": members, "dim": dim, "n_train": fit.n_train,
            "log_loss": fit.log_loss, "precision": fit.precision is not None}
    head = RewardHead(torch.from_numpy(fit.weight)).eval()
    tensors = {"weight": head.weight.detach().contiguous()}
    if fit.precision is not None:
        precision = np.asarray(fit.precision, np.float64)
        if precision.shape != (dim, dim) or not np.isfinite(precision).all():
            raise InvalidInput("precision", f"must be a finite [{dim}, {dim}] matrix, got shape {precision.shape}")
        tensors["precision"] = torch.from_numpy(precision).contiguous()

    def write(tmp: Path) -> None:
        save_file(tensors, tmp / WEIGHTS_FILE)
        export_module(head, (torch.zeros(2, dim),), tmp / ONNX_FILE, ["embeddings"], ["rewards"],
                      {"embeddings": {0: "batch"}, "rewards": {0: "batch"}})
        (tmp / META_FILE).write_text(json.dumps(full, indent=2, sort_keys=True))

    write_version_folder(folder, write)


def load_reward_meta(folder: Path) -> dict:
    """meta.json of a reward version; ModelFileError naming the file when missing, incomplete or not a reward."""
    path = Path(folder) / META_FILE
    meta = read_meta(path)
    if meta.get("kind") != "reward":
        raise ModelFileError(f"{path}: not a reward model's metadata")
    missing = [k for k in ("version", "members", "dim") if not isinstance(meta.get(k), (str, int))]
    if missing:
        raise ModelFileError(f"{path}: missing keys {missing}")
    return meta


def load_reward_fit(folder: Path) -> RewardFit:
    """The reward a version's reward folder holds, its posterior's precision included where it was saved
    (``precision`` None otherwise: versions written before it was kept); ModelFileError naming the file."""
    meta = load_reward_meta(folder)
    path = Path(folder) / WEIGHTS_FILE
    try:
        tensors = load_file(path)
        weight = tensors["weight"].to(torch.float64).numpy()
    except (OSError, SafetensorError, KeyError) as e:
        raise ModelFileError(f"{path}: cannot load reward weights ({e})") from e
    members, dim = int(meta["members"]), int(meta["dim"])
    precision = tensors["precision"].numpy() if "precision" in tensors else None
    if weight.shape != (members, dim) or (precision is not None and precision.shape != (dim, dim)):
        raise ModelFileError(f"{path}: tensors do not match {META_FILE} ({members} members, dim {dim})")
    log_loss = meta.get("log_loss")
    return RewardFit(weight, int(meta.get("n_train") or 0), float(log_loss) if log_loss is not None else float("nan"),
                     precision)


class RewardEngine:
    """A loaded reward version on ONNX Runtime (``onnx``) or PyTorch (``torch``):
    ``rewards(emb [n, dim]) -> float32 [n, members]``."""

    def __init__(self, folder: Path, engine: str = "onnx", device: str = "auto") -> None:
        self.folder = Path(folder)
        self.meta = load_reward_meta(self.folder)
        self.members, self.dim = int(self.meta["members"]), int(self.meta["dim"])
        if engine == "onnx":
            self._session = onnx_session(self.folder / ONNX_FILE, device, threads=1)
            if self._session.get_outputs()[0].shape[1:] != [self.members]:
                raise ModelFileError(f"{self.folder / ONNX_FILE}: rewards shape does not match {META_FILE}")
            self._head = None
        elif engine == "torch":
            path = self.folder / WEIGHTS_FILE
            try:
                weight = load_file(path)["weight"]
            except (OSError, SafetensorError, KeyError) as e:
                raise ModelFileError(f"{path}: cannot load reward weights ({e})") from e
            if tuple(weight.shape) != (self.members, self.dim):
                raise ModelFileError(f"{path}: weights of shape {tuple(weight.shape)} do not match {META_FILE}")
            self._head = RewardHead(weight).eval()
        else:
            raise InvalidInput("engine", f"must be 'onnx' or 'torch', got {engine!r}")

    @property
    def version(self) -> str:
        return self.meta["version"]

    def rewards(self, emb: np.ndarray) -> np.ndarray:
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise InvalidInput("embeddings", f"expected [n, {self.dim}], got shape {emb.shape}")
        if not len(emb):
            return np.zeros((0, self.members), np.float32)
        if self._head is None:
            return self._session.run(["rewards"], {"embeddings": emb})[0]
        with torch.inference_mode():
            return self._head(torch.from_numpy(emb)).numpy()
