"""Preference labels: active pair selection against random selection, side by side per seed.

Each seed splits the pairs into a test fifth and a pool, and starts both arms from the same
``start`` random comparisons. Then, round after round, each arm fits the Bradley-Terry reward model
(:mod:`winnow.core.ml.reward`) on the comparisons it has and draws ``batch`` more from the pool with
known probabilities: uniform for random; for active, the pair selector's probabilities
(:mod:`winnow.core.select.pairs`: the reward's epistemic uncertainty and novelty over prompts, with a
floor). A simulated annotator answers from the data (the pair's recorded choice, flipped with
probability ``noise``). The reward model's accuracy on the test pairs (agreement with the recorded
choice) is recorded against the number of comparisons.

Two controls say why the curves look as they do. ``ceiling``: the accuracy with the whole pool
compared, the most any selection can reach on these features. ``planted``: the same features and the
same arms, but answers drawn from a known Bradley-Terry reward on them (the all-pairs fit, sharpened
``planted_scale`` times), so the reward is learnable by construction: where active selection saves
comparisons there and not on the real answers, the features, not the selector, are the limit.

Model evaluation (``evaluation``, ``interval_coverage``): a simulation with a known win rate on the
same pairs. Per seed, the reward model is fitted on ``budget`` comparisons and the other pairs form an
evaluation set on which "model A" answered with the recorded chosen reply with probability
``eval_win`` and with the rejected one otherwise; people's answers are the recorded choices (flipped
with probability ``noise``), so A's true win rate on the set is known. For each number of human
comparisons, ``eval_repeats`` draws give the interval of :func:`winnow.core.ml.evaluation.win_rate`
three ways: classical (people alone, uniform draws), prediction-powered (the reward model's
predictions, uniform draws) and active (draws where the model is unsure); their mean width and how
often they contained the true win rate. The same runs with planted answers show what a reward model
that carries the preference saves.

This drives the core library (reward model, pair selector, draw probabilities) directly; a served
preference project (proto, store, API) is not built yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from winnow.bench.common import environment, new_figure, save_figure, write_json
from winnow.core.data.preferences import PreferencePair, hh_rlhf_harmless, load_pairs
from winnow.core.domain.errors import InvalidInput
from winnow.core.ml.evaluation import evaluation_probabilities, win_rate
from winnow.core.ml.reward import RewardConfig, fit_reward
from winnow.core.select.index import VectorIndex
from winnow.core.select.pairs import most_uncertain_pairs, novelty, pair_probabilities
from winnow.core.select.sampling import uniforms


@dataclass(frozen=True)
class PreferencePlan:
    seeds: int = 5
    budget: int = 800          # random's full budget (comparisons)
    start: int = 50            # random comparisons both arms begin with
    batch: int = 25            # comparisons drawn per round
    noise: float = 0.0         # share of the simulated annotator's answers flipped
    diversity: float = 0.0     # measured here: novelty over prompts did not help on these features
    floor: float = 0.1
    sharpness: float = 4.0
    planted_scale: float = 3.0
    test_share: float = 0.2
    eval_win: float = 0.65     # model A's chance of having the recorded chosen reply (model evaluation)
    eval_sizes: tuple[int, ...] = (50, 100, 200, 400)  # human comparisons of the evaluation set
    eval_repeats: int = 100    # draws per seed and size
    eval_confidence: float = 0.95
    config: RewardConfig = RewardConfig()

    def __post_init__(self) -> None:
        for name, low in (("seeds", 1), ("budget", 2), ("start", 1), ("batch", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInput(name, f"must be an integer >= {low}, got {value!r}")
        if self.start >= self.budget:
            raise InvalidInput("start", f"must be below the budget ({self.budget}), got {self.start}")
        if not 0.0 <= self.noise < 0.5:
            raise InvalidInput("noise", f"must be in [0, 0.5), got {self.noise}")
        if not 0.05 <= self.test_share <= 0.5:
            raise InvalidInput("test_share", f"must be in [0.05, 0.5], got {self.test_share}")


def _arm(active: bool, a: np.ndarray, b: np.ndarray, prompts: np.ndarray, answer: np.ndarray, truth: np.ndarray,
         pool: np.ndarray, test: np.ndarray, plan: PreferencePlan, seed: int, name: str) -> dict[int, float]:
    """One arm's learning curve: comparisons -> test accuracy (against ``truth``)."""
    rng = np.random.default_rng(seed)
    compared = list(rng.choice(pool, plan.start, replace=False))
    curve: dict[int, float] = {}
    fit, look = None, 0
    while True:
        fit = fit_reward(a[compared], b[compared], answer[compared], plan.config, init=fit)
        p_first = 1 / (1 + np.exp(-(a[test] - b[test]) @ fit.weight[0]))
        curve[len(compared)] = float(np.mean((p_first > 0.5) == truth[test]))
        if len(compared) >= plan.budget:
            return curve
        rest = np.setdiff1d(pool, compared)
        want = min(plan.batch, plan.budget - len(compared), len(rest))
        if active:
            rows = np.concatenate([rest, rest + len(a)])  # each candidate's two responses
            rewards = fit.rewards(np.vstack([a, b])[rows])
            k = len(rest)
            pairs = most_uncertain_pairs(rewards, [(j, j + k) for j in range(k)])
            index = VectorIndex(prompts.shape[1])
            index.add(np.arange(len(compared)), prompts[compared])
            probability = pair_probabilities(pairs.uncertainty, novelty(prompts[rest], index), want,
                                             plan.diversity, plan.floor, plan.sharpness)
        else:
            probability = np.full(len(rest), want / len(rest))
        u = uniforms(seed, name, [str(i) for i in rest.tolist()], f"look-{look}")
        drawn = rest[u < probability]
        look += 1
        compared += drawn[: plan.budget - len(compared)].tolist()


def _split(n: int, seed: int, plan: PreferencePlan) -> tuple[np.ndarray, np.ndarray]:
    """A seed's test pairs and pool (the same split for both arms, the controls and the ceiling)."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(plan.test_share * n))
    return order[:n_test], order[n_test:]


def _curves(a, b, prompts, answer, truth, plan: PreferencePlan, name: str) -> dict:
    runs = {"random": [], "active": []}
    for seed in range(plan.seeds):
        test, pool = _split(len(a), seed, plan)
        if len(pool) < plan.budget:
            raise InvalidInput("budget", f"{plan.budget} comparisons but the pool holds {len(pool)} pairs")
        for arm in runs:
            runs[arm].append(_arm(arm == "active", a, b, prompts, answer, truth, pool, test, plan, 1000 * seed + 7,
                                  f"{name}-{arm}"))
    grid = np.arange(plan.start, plan.budget + 1, plan.batch)
    out: dict = {"labels": grid.tolist()}
    for arm, curves in runs.items():
        # each curve at the grid's points: the accuracy of the last fit made with at most that many
        table = np.array([[curve[max(k for k in curve if k <= g)] for g in grid] for curve in curves])
        out[f"{arm}_mean"] = table.mean(0).round(4).tolist()
        out[f"{arm}_sd"] = table.std(0).round(4).tolist()
    random_accuracy = out["random_mean"][-1]
    reached = [g for g, v in zip(grid.tolist(), out["active_mean"]) if v >= random_accuracy]
    out.update(random_labels=plan.budget, random_accuracy=random_accuracy, active_accuracy=out["active_mean"][-1],
               labels_to_match_random=reached[0] if reached else None)
    out["share_of_random"] = None if not reached else round(reached[0] / plan.budget, 3)
    return out


def run_preference_benchmark(out: Path, plan: PreferencePlan = PreferencePlan(), jsonl: Path | None = None,
                             encode=None, progress=lambda _: None) -> dict:
    """Both arms on real answers and on planted ones, the ceiling; JSON at ``out`` and a PNG beside it.
    ``encode``: texts -> unit-norm embeddings (default: the runtime's cached MiniLM encoder)."""
    pairs: list[PreferencePair] = load_pairs(jsonl) if jsonl is not None else hh_rlhf_harmless()
    if len(pairs) < plan.budget + 10:
        raise InvalidInput("budget", f"{plan.budget} comparisons need more pairs than the {len(pairs)} given")
    if encode is None:
        from winnow.core.ml.runtime import make_runtime

        encode = make_runtime("onnx").encoder.encode
    chosen = encode([p.feature_text(p.chosen) for p in pairs]).astype(np.float64)
    rejected = encode([p.feature_text(p.rejected) for p in pairs]).astype(np.float64)
    prompts = encode([p.context for p in pairs]).astype(np.float32)
    progress("encoded")
    rng = np.random.default_rng(12345)
    first_is_chosen = rng.random(len(pairs)) < 0.5  # which reply is shown as A, at random
    a = np.where(first_is_chosen[:, None], chosen, rejected)
    b = np.where(first_is_chosen[:, None], rejected, chosen)
    flips = rng.random(len(pairs)) < plan.noise
    answer = np.where(first_is_chosen != flips, 1.0, 0.0)  # the simulated annotator's answer: A (1) or B (0)
    real = _curves(a, b, prompts, answer, first_is_chosen, plan, "real")
    progress({"real": {k: real[k] for k in ("random_accuracy", "active_accuracy", "labels_to_match_random")}})
    everything = fit_reward(a, b, answer, plan.config)
    ceiling = _ceiling(a, b, answer, first_is_chosen, plan)
    w_star = plan.planted_scale * everything.weight[0]
    p_star = 1 / (1 + np.exp(-(a - b) @ w_star))
    planted_answer = (np.random.default_rng(777).random(len(pairs)) < p_star).astype(float)
    planted = _curves(a, b, prompts, planted_answer, p_star > 0.5, plan, "planted")
    planted["answer_agrees_with_truth"] = round(float(np.mean(np.maximum(p_star, 1 - p_star))), 4)
    progress({"planted": {k: planted[k] for k in ("random_accuracy", "active_accuracy", "labels_to_match_random")}})
    evaluation = {"real": _evaluation(chosen, rejected, flips, plan),
                  "planted": _evaluation(chosen, rejected, flips, plan, w_star)}
    progress({"evaluation": {k: evaluation[k]["width"] for k in evaluation}})
    result = {"benchmark": "preferences", "pairs": len(pairs), "seeds": plan.seeds,
              "random_labels": real["random_labels"], "random_accuracy": real["random_accuracy"],
              "active_accuracy": real["active_accuracy"], "labels_to_match_random": real["labels_to_match_random"],
              "share_of_random": real["share_of_random"], "ceiling_accuracy": ceiling,
              "curves": real, "planted": planted,
              "interval_coverage": min(evaluation[k]["interval_coverage"] for k in evaluation),
              "evaluation": evaluation,
              "details": {"dataset": str(jsonl) if jsonl else "hh-rlhf harmless-base test (shipped)",
                          "features": "MiniLM embedding of context + reply; reward linear, Laplace posterior",
                          "noise": plan.noise, "start": plan.start, "batch": plan.batch, "diversity": plan.diversity,
                          "floor": plan.floor, "sharpness": plan.sharpness, "members": plan.config.members,
                          "l2": plan.config.l2,
                          "planted_scale": plan.planted_scale, "test_share": plan.test_share,
                          "eval_win": plan.eval_win, "eval_repeats": plan.eval_repeats,
                          "environment": environment()}}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    _plot(out.with_suffix(".png"), result)
    return result


def _evaluation(chosen: np.ndarray, rejected: np.ndarray, flips: np.ndarray, plan: PreferencePlan,
                planted_w: np.ndarray | None = None) -> dict:
    """Win-rate intervals on an evaluation set with a known win rate (module doc); ``planted_w``:
    answers drawn from that Bradley-Terry reward instead of the recorded choices."""
    methods = ("classical", "prediction_powered", "active")
    sizes = [s for s in plan.eval_sizes if s < len(chosen) - plan.budget]
    widths = {m: {s: [] for s in sizes} for m in methods}
    hits = {m: {s: [] for s in sizes} for m in methods}
    truths = []
    for seed in range(plan.seeds):
        rng = np.random.default_rng(5000 + seed)
        order = rng.permutation(len(chosen))
        train, held = order[: plan.budget], order[plan.budget:]
        gets_chosen = rng.random(len(chosen)) < plan.eval_win  # model A's reply: the chosen one, or not
        a = np.where(gets_chosen[:, None], chosen, rejected)
        b = np.where(gets_chosen[:, None], rejected, chosen)
        if planted_w is None:
            y = (gets_chosen != flips).astype(float)  # people's answer: A (1) or B (0)
        else:
            y = (rng.random(len(chosen)) < 1 / (1 + np.exp(-(a - b) @ planted_w))).astype(float)
        fit = fit_reward(a[train], b[train], y[train], plan.config)  # the reward model, on other prompts
        f = 1 / (1 + np.exp(-(a[held] - b[held]) @ fit.weight[0]))  # its P(A preferred) on the set
        y_held, n = y[held], len(held)
        truth = float(y_held.mean())
        truths.append(truth)
        for size in sizes:
            uniform, active = np.full(n, size / n), evaluation_probabilities(f, size)
            for r in range(plan.eval_repeats):
                u = np.random.default_rng([seed, size, r]).random((2, n))
                for method, pi, row in (("classical", uniform, 0), ("prediction_powered", uniform, 0),
                                        ("active", active, 1)):
                    d = u[row] < pi
                    w = win_rate(np.where(d, y_held, np.nan), d, pi, None if method == "classical" else f,
                                 plan.eval_confidence)
                    widths[method][size].append(w.width)
                    hits[method][size].append(w.lower <= truth <= w.upper)
    coverage = {m: float(np.mean([h for s in sizes for h in hits[m][s]])) for m in methods}
    return {"sizes": sizes, "true_win_rate_mean": round(float(np.mean(truths)), 4),
            "confidence": plan.eval_confidence,
            "width": {m: [round(float(np.mean(widths[m][s])), 4) for s in sizes] for m in methods},
            "coverage": {m: round(c, 4) for m, c in coverage.items()},
            "interval_coverage": round(float(np.mean(list(coverage.values()))), 4)}


def _ceiling(a, b, answer, truth, plan: PreferencePlan) -> float:
    """Test accuracy with the whole pool compared, mean over the seeds' splits."""
    scores = []
    for seed in range(plan.seeds):
        test, pool = _split(len(a), seed, plan)
        fit = fit_reward(a[pool], b[pool], answer[pool], plan.config)
        scores.append(np.mean(((a[test] - b[test]) @ fit.weight[0] > 0) == truth[test]))
    return round(float(np.mean(scores)), 4)


def _plot(path: Path, result: dict) -> None:
    fig, axes = new_figure((16, 4), ncols=3)
    for ax, (title, curves) in zip(axes[:2], (("real answers (HH-RLHF)" if "hh-rlhf" in result["details"]["dataset"]
                                            else "real answers", result["curves"]),
                                           ("planted Bradley-Terry answers, same features", result["planted"]))):
        xs = np.array(curves["labels"])
        for arm, colour in (("random", "tab:gray"), ("active", "tab:blue")):
            mean, sd = np.array(curves[f"{arm}_mean"]), np.array(curves[f"{arm}_sd"])
            ax.plot(xs, mean, color=colour, label=f"{arm} selection")
            ax.fill_between(xs, mean - sd, mean + sd, color=colour, alpha=0.2)
        ax.axhline(curves["random_accuracy"], color="tab:gray", linestyle=":", linewidth=1)
        if curves["labels_to_match_random"]:
            ax.axvline(curves["labels_to_match_random"], color="tab:blue", linestyle=":", linewidth=1)
        ax.set(xlabel="human comparisons", ylabel="reward model accuracy on held-out pairs", title=title)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].axhline(result["ceiling_accuracy"], color="black", linestyle="--", linewidth=1)
    ax = axes[2]
    for answers, style in (("real", "-"), ("planted", "--")):
        run = result["evaluation"][answers]
        for method, colour in (("classical", "tab:gray"), ("prediction_powered", "tab:green"), ("active", "tab:blue")):
            ax.plot(run["sizes"], run["width"][method], linestyle=style, color=colour, marker=".",
                    label=f"{answers}: {method.replace('_', '-')} (covered {run['coverage'][method]:.3f})")
    ax.set(xlabel="human comparisons", ylabel=f"width of the {result['evaluation']['real']['confidence']:.0%} interval",
           title="model evaluation: win-rate interval")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
