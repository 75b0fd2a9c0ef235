"""Preference labels: active pair selection against random selection, side by side per seed.

Each seed splits the pairs into a test fifth and a pool, and starts both arms from the same
``start`` random comparisons. Then, round after round, each arm fits the Bradley-Terry reward model
(:mod:`winnow.core.ml.reward`) on the comparisons it has and draws ``batch`` more from the pool with
known probabilities: uniform for random; for active, the pair selector's probabilities
(:mod:`winnow.core.select.pairs`: by default what each answer is expected to tell about the outcomes of
a seeded sample of ``targets`` pool comparisons, ``acquisition`` "epig"; or the reward's epistemic
uncertainty, "bald"; with novelty over prompts and a floor). A simulated annotator answers from the
data (the pair's recorded choice, flipped with probability ``noise``). The reward model's accuracy on
the test pairs (agreement with the recorded choice) is recorded against the number of comparisons.

Two controls say why the curves look as they do. ``ceiling``: the accuracy with the whole pool
compared, the most any selection can reach on these features. ``planted``: the same features and the
same arms, but answers drawn from a known Bradley-Terry reward on them (the all-pairs fit, sharpened
``planted_scale`` times), so the reward is learnable by construction: where active selection saves
comparisons there and not on the real answers, the features, not the selector, are the limit.
``planted_sweep``: the planted control again at each of ``sweep_scales`` (from answers about as noisy
as the real ones to nearly noise-free), over ``sweep_seeds`` seeds (more than the curves: the
comparisons active selection needs to match random are read where both curves flatten, so a few seeds
leave that number to chance): how much selection saves when the features carry the preference
exactly, at each strength of it.

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

The curves above drive the core library (reward model, pair selector, draw probabilities) directly.
``served`` streams the same pairs through a served preference project instead: the embedded loop
(ingest, prelabel, selector, labeling, trainer, close), the project's head being its Bradley-Terry
reward, one run with the project's active strategy and one with ``random``, per seed, on the pool of
that seed's split, and one more whose selector scores comparisons by EPIG against a sample of the
arrivals (``LoopConfig.pair_acquisition``) instead of the members' margin. ``served_planted``: the same
runs on planted answers, planted on the served features (the all-pairs fit on the comparison vectors a
served project reads, sharpened ``planted_scale`` times). People are the simulated annotator
above (on the planted runs, the planted answers); checks, probes and the certified auto-accept work as
in any project, at ``served_precision``. Reported per run: the reward model's
accuracy on the test pairs at each model version (against the human comparisons it learned from),
the final labels' accuracy against the recorded choices, the share the model labeled under a
certified threshold and that share's precision, and the system's own certified bounds. Each pair's
replies are tagged "model-x" and "model-y", model-x holding the chosen one with probability
``eval_win``, so the project's win rate of model-x (``winnow.core.loop.evaluation``: from the arrival
draws and the reward model's predictions) is checked against the true one, people's answers to every
comparison in its evaluation set.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from winnow.bench.common import environment, new_figure, save_figure, write_json
from winnow.core.data.preferences import PreferencePair, hh_rlhf_harmless, load_pairs
from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.comparisons import feature_text, pair_vectors
from winnow.core.domain.records import PREFERENCE_CLASSES, Item, ModelVersion, Project, Response
from winnow.core.domain.settings import LoopConfig
from winnow.core.ml.evaluation import evaluation_probabilities, win_rate
from winnow.core.ml.reward import RewardConfig, fit_reward
from winnow.core.select.index import VectorIndex
from winnow.core.select.pairs import most_uncertain_pairs, novelty, pair_probabilities, predictive_information
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
    served_seeds: int = 5      # seeds of the served-path runs (each: an active and a random stream)
    served_strategy: str = "uncertainty"
    served_precision: float = 0.8  # precision target of the served project's auto-accepted preferences
    served_evaluation: int = 10    # per 100 comparisons: the "evaluation" arm's evaluation budget, taken from
                                   # the labeling budget (same comparisons in all), to narrow the win rates
    acquisition: str = "epig"  # active's score across prompts: "epig" (predictive_information) or "bald"
    targets: int = 500         # pool comparisons EPIG scores the information about (a seeded sample)
    sweep_scales: tuple[float, ...] = (3.0, 10.0, 30.0, 100.0)  # the planted sweep's strengths (planted_scale's)
    sweep_seeds: int = 20      # seeds of each planted sweep point (0 skips the sweep)

    def __post_init__(self) -> None:
        for name, low in (("seeds", 1), ("budget", 2), ("start", 1), ("batch", 1), ("sweep_seeds", 0), ("targets", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInput(name, f"must be an integer >= {low}, got {value!r}")
        if self.start >= self.budget:
            raise InvalidInput("start", f"must be below the budget ({self.budget}), got {self.start}")
        if not 0.0 <= self.noise < 0.5:
            raise InvalidInput("noise", f"must be in [0, 0.5), got {self.noise}")
        for name, scale in [("planted_scale", self.planted_scale)] + [("sweep_scales", x) for x in self.sweep_scales]:
            if isinstance(scale, bool) or not (isinstance(scale, (int, float)) and 0 < scale < float("inf")):
                raise InvalidInput(name, f"must be a positive finite number, got {scale!r}")
        if self.acquisition not in ("epig", "bald"):
            raise InvalidInput("acquisition", f"must be 'epig' or 'bald', got {self.acquisition!r}")
        if not 0.05 <= self.test_share <= 0.5:
            raise InvalidInput("test_share", f"must be in [0.05, 0.5], got {self.test_share}")


def _arm(active: bool, a: np.ndarray, b: np.ndarray, prompts: np.ndarray, answer: np.ndarray, truth: np.ndarray,
         pool: np.ndarray, test: np.ndarray, plan: PreferencePlan, seed: int, name: str) -> dict[int, float]:
    """One arm's learning curve: comparisons -> test accuracy (against ``truth``)."""
    rng = np.random.default_rng(seed)
    compared = list(rng.choice(pool, plan.start, replace=False))
    targets = np.sort(rng.choice(pool, min(plan.targets, len(pool)), replace=False))
    target_vectors = a[targets] - b[targets]  # the comparisons EPIG scores information about, fixed per arm
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
            score = pairs.uncertainty
            if plan.acquisition == "epig":  # what each answer tells about the pool's outcomes (a sample of it)
                score = predictive_information(a[rest] - b[rest], target_vectors, fit)
            index = VectorIndex(prompts.shape[1])
            index.add(np.arange(len(compared)), prompts[compared])
            probability = pair_probabilities(score, novelty(prompts[rest], index), want,
                                             plan.diversity, plan.floor, plan.sharpness)
        else:
            probability = np.full(len(rest), want / len(rest))
        u = uniforms(seed, name, [str(i) for i in rest.tolist()], f"look-{look}")
        drawn = rest[u < probability]
        look += 1
        compared += drawn[: plan.budget - len(compared)].tolist()


def _planted_answers(a: np.ndarray, b: np.ndarray, w_star: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The planted control's answers (1: A, 0: B) drawn from the Bradley-Terry reward ``w_star``, and P(A)."""
    p_star = 1 / (1 + np.exp(-(a - b) @ w_star))
    return (np.random.default_rng(777).random(len(a)) < p_star).astype(float), p_star


def _planted_curves(a, b, prompts, w_star: np.ndarray, plan: PreferencePlan) -> dict:
    """Both arms on answers drawn from the Bradley-Terry reward ``w_star`` (module doc: ``planted``), scored
    against its own preference; with the share of answers that agree with it."""
    answer, p_star = _planted_answers(a, b, w_star)
    out = _curves(a, b, prompts, answer, p_star > 0.5, plan, "planted")
    out["answer_agrees_with_truth"] = round(float(np.mean(np.maximum(p_star, 1 - p_star))), 4)
    return out


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
                             runtime=None, progress=lambda _: None) -> dict:
    """Both arms on real answers and on planted ones, the ceiling, model evaluation and the served
    runs; JSON at ``out`` and a PNG beside it. ``runtime``: its encoder makes the features and the
    served projects run on it (default: ONNX Runtime with the cached MiniLM encoder)."""
    pairs: list[PreferencePair] = load_pairs(jsonl) if jsonl is not None else hh_rlhf_harmless()
    if len(pairs) < plan.budget + 10:
        raise InvalidInput("budget", f"{plan.budget} comparisons need more pairs than the {len(pairs)} given")
    if runtime is None:
        from winnow.core.ml.runtime import make_runtime

        runtime = make_runtime("onnx")
    encode = runtime.encoder.encode
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
    planted = _planted_curves(a, b, prompts, w_star, plan)
    progress({"planted": {k: planted[k] for k in ("random_accuracy", "active_accuracy", "labels_to_match_random")}})
    sweep = []
    for scale in plan.sweep_scales if plan.sweep_seeds else ():
        run = _planted_curves(a, b, prompts, scale * everything.weight[0], replace(plan, seeds=plan.sweep_seeds))
        sweep.append({"planted_scale": scale, "seeds": plan.sweep_seeds,
                      **{k: run[k] for k in ("answer_agrees_with_truth", "random_accuracy", "active_accuracy",
                                             "labels_to_match_random", "share_of_random")}})
        progress({"planted_sweep": sweep[-1]})
    evaluation = {"real": _evaluation(chosen, rejected, flips, plan),
                  "planted": _evaluation(chosen, rejected, flips, plan, w_star)}
    progress({"evaluation": {k: evaluation[k]["width"] for k in evaluation}})
    served = served_planted = None
    if plan.served_seeds:
        served = _served(pairs, first_is_chosen, answer == 1, first_is_chosen, plan, runtime, progress)
        # planted on the served features (a comparison's unit difference, each reply read with the end of its
        # prompt): the all-pairs fit there, sharpened planted_scale times, so the served reward can learn it
        v = _served_vectors(pairs, first_is_chosen, encode)
        w_served = plan.planted_scale * fit_reward(v, np.zeros_like(v), answer, plan.config).weight[0]
        planted_answer, p_star = _planted_answers(v, np.zeros_like(v), w_served)
        served_planted = _served(pairs, first_is_chosen, planted_answer == 1, p_star > 0.5, plan, runtime, progress,
                                 planted=True)
        served_planted["answer_agrees_with_truth"] = round(float(np.mean(np.maximum(p_star, 1 - p_star))), 4)
    result = {"benchmark": "preferences", "pairs": len(pairs), "seeds": plan.seeds,
              "random_labels": real["random_labels"], "random_accuracy": real["random_accuracy"],
              "active_accuracy": real["active_accuracy"], "labels_to_match_random": real["labels_to_match_random"],
              "share_of_random": real["share_of_random"], "ceiling_accuracy": ceiling,
              "curves": real, "planted": planted, "planted_sweep": sweep,
              "interval_coverage": min(evaluation[k]["interval_coverage"] for k in evaluation),
              "evaluation": evaluation, "served": served, "served_planted": served_planted,
              "details": {"dataset": str(jsonl) if jsonl else "hh-rlhf harmless-base test (shipped)",
                          "features": f"{runtime.encoder.encoder_id} embedding of context + reply; reward linear, "
                                      "Laplace posterior",
                          "noise": plan.noise, "start": plan.start, "batch": plan.batch, "diversity": plan.diversity,
                          "acquisition": plan.acquisition, "targets": plan.targets,
                          "floor": plan.floor, "sharpness": plan.sharpness, "members": plan.config.members,
                          "l2": plan.config.l2,
                          "planted_scale": plan.planted_scale, "test_share": plan.test_share,
                          "sweep_scales": list(plan.sweep_scales), "sweep_seeds": plan.sweep_seeds,
                          "eval_win": plan.eval_win, "eval_repeats": plan.eval_repeats,
                          "environment": environment()}}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    _plot(out.with_suffix(".png"), result)
    return result


def _served_vectors(pairs: list[PreferencePair], first_is_chosen: np.ndarray, encode) -> np.ndarray:
    """float64 ``[pairs, dim]``: each pair's comparison vector as a served project reads it (reply A is the
    chosen one where ``first_is_chosen``)."""
    a = [feature_text(p.prompt, p.chosen if f else p.rejected) for p, f in zip(pairs, first_is_chosen)]
    b = [feature_text(p.prompt, p.rejected if f else p.chosen) for p, f in zip(pairs, first_is_chosen)]
    return pair_vectors(encode(a), encode(b)).astype(np.float64)


def _served_run(pairs: list[PreferencePair], first_is_chosen: np.ndarray, answer_a: np.ndarray, truth_a: np.ndarray,
                pool: np.ndarray, test: np.ndarray, runtime, arm: ServedArm, plan: PreferencePlan, seed: int,
                workdir: Path) -> dict:
    """One stream of the pool's pairs through an embedded preference project (module doc): people answer A
    where ``answer_a`` [pairs], and A is the better reply where ``truth_a`` (what accuracy is measured
    against); with the arm's ``evaluation_budget`` (per 100) that much of the rate goes to model
    evaluation's own draws."""
    from winnow.core.data.simulate import SimulatedAnnotators
    from winnow.core.loop.embedded import EmbeddedLoop
    from winnow.core.loop.evaluation import win_rates
    from winnow.core.loop.quality import certified_quality
    from winnow.core.ml.head import OnnxHead
    from winnow.core.ml.runtime import OnnxRuntime
    from winnow.core.ml.scoring import mean_probs

    started = time.perf_counter()

    def texts(rows: np.ndarray) -> tuple[list[str], list[str]]:
        a = [pairs[i].chosen if first_is_chosen[i] else pairs[i].rejected for i in rows]
        b = [pairs[i].rejected if first_is_chosen[i] else pairs[i].chosen for i in rows]
        return a, b

    test_vectors = _served_vectors([pairs[i] for i in test], first_is_chosen[test], runtime.encoder.encode)
    test_truth = truth_a[test]
    curve: list[dict] = []
    seen = [0]
    first_certified = [None]

    def on_version(model: ModelVersion) -> None:
        probs = mean_probs(OnnxHead(Path(model.path)).logits(test_vectors), model.temperature)
        accuracy = float(np.mean((probs[:, 0] > probs[:, 1]) == test_truth))
        curve.append({"human_labels": model.n_train, "test_accuracy": accuracy,
                      "threshold": model.threshold if np.isfinite(model.threshold) else None})
        if first_certified[0] is None and np.isfinite(model.threshold):
            first_certified[0] = seen[0] / len(pool)

    rate = max(1, round(100 * plan.budget / len(pool)) - arm.evaluation_budget)
    project = Project(f"pref-{arm.strategy}", PREFERENCE_CLASSES, budget_labels=rate, budget_per_items=100,
                      precision_target=plan.served_precision, strategy=arm.strategy, kind="preference")
    a_pool, b_pool = texts(pool)
    ids = [f"pair-{i}" for i in pool]
    # model evaluation: "model-x" wrote the recorded chosen reply with probability ``eval_win``
    x_chosen = np.random.default_rng(9000 + seed).random(len(pairs)) < plan.eval_win
    x_is_a = {item_id: bool(x_chosen[i] == first_is_chosen[i]) for item_id, i in zip(ids, pool)}
    items = [Item(project.name, item_id, pairs[i].prompt, time.time(),
                  (Response(a, "model-x" if x_is_a[item_id] else "model-y"),
                   Response(b, "model-y" if x_is_a[item_id] else "model-x")))
             for item_id, i, a, b in zip(ids, pool, a_pool, b_pool)]
    recorded = {item_id: "A" if truth_a[i] else "B" for item_id, i in zip(ids, pool)}
    answers = {item_id: "A" if answer_a[i] else "B" for item_id, i in zip(ids, pool)}
    people = SimulatedAnnotators(answers, ("A", "B"), (0.0,), seed)  # flips are drawn once, in ``answers``
    order = np.random.default_rng(seed).permutation(len(items))
    loop = EmbeddedLoop(workdir, project, OnnxRuntime(runtime.encoder),
                        LoopConfig(seed=seed, evaluation_budget=arm.evaluation_budget,
                                   pair_acquisition=arm.pair_acquisition, uncertainty=arm.uncertainty),
                        on_version=on_version)
    try:
        for start in range(0, len(items), 100):
            seen[0] = min(start + 100, len(items))
            loop.ingest([items[k] for k in order[start:start + 100]])
            loop.run_until_idle(people)
        loop.close_stream(people)
        labels = loop.store.labels(project.name)
        quality = certified_quality(loop.store, project.name)
        rates = win_rates(loop.store, project.name)
        reachable = [d.item_id for d in loop.store.arrival_draws(project.name) if d.probability > 0]
    finally:
        loop.close()
    # the true win rate of model-x on the comparisons in the evaluation set: people's answers to all
    x_wins = [(answers[i] == "A") == x_is_a[i] for i in reachable]
    evaluation = None
    if rates:
        [rate] = rates
        truth = float(np.mean(x_wins))
        evaluation = {"estimate": round(rate.estimate, 4), "lower": round(rate.lower, 4), "upper": round(rate.upper, 4),
                      "width": round(rate.width, 4),
                      "true_win_rate": round(truth, 4), "covered": rate.lower <= truth <= rate.upper,
                      "comparisons": rate.comparisons, "items": rate.items, "unreachable": rate.unreachable}
    auto = [x for x in labels if x.aggregation == "auto_accept"]
    human = [x for x in labels if x.source == "human"]
    return {
        "strategy": arm.strategy, "pair_acquisition": arm.pair_acquisition, "uncertainty": arm.uncertainty,
        "seed": seed, "items": len(items), "human_labels": len(human),
        "human_fraction": round(len(human) / len(items), 4),
        "final_label_accuracy": round(float(np.mean([x.label == recorded[x.item_id] for x in labels])), 4),
        "auto_accepted_fraction": round(len(auto) / len(items), 4),
        "auto_accept_precision": (round(float(np.mean([x.label == recorded[x.item_id] for x in auto])), 4)
                                  if auto else None),
        "first_certified_at_fraction": first_certified[0],
        "certified_accuracy_lower_bound": quality.accuracy_lower_bound,
        "certified_auto_accept_precision_lower_bound": quality.auto_accepted_precision_lower_bound,
        "test_accuracy": curve[-1]["test_accuracy"] if curve else None, "win_rate": evaluation,
        "win_rate_width": evaluation["width"] if evaluation else None,
        "curve": curve, "wall_s": round(time.perf_counter() - started, 1)}


@dataclass(frozen=True)
class ServedArm:
    """One arm of the served runs: the project's strategy, how its selector scores comparisons
    (``LoopConfig.pair_acquisition`` and ``uncertainty``) and its evaluation budget (per 100)."""

    name: str
    strategy: str
    pair_acquisition: str = "uncertainty"
    uncertainty: str = "margin"
    evaluation_budget: int = 0


def _served_arms(plan: PreferencePlan, planted: bool) -> list[ServedArm]:
    """The served arms: active (a served project's default: the members' margin), random, epig (the active
    strategy scoring comparisons by EPIG, ``--pair-acquisition epig``) and, on the real answers, the
    evaluation arm (the active one with ``served_evaluation`` per 100 of its rate moved to model evaluation's
    budget: the same human comparisons, spent to narrow the win-rate interval)."""
    arms = [ServedArm("active", plan.served_strategy, "uncertainty"), ServedArm("random", "random", "uncertainty"),
            ServedArm("epig", plan.served_strategy, "epig")]
    if not planted and plan.served_evaluation:
        arms.append(ServedArm("evaluation", plan.served_strategy, "uncertainty", "margin", plan.served_evaluation))
    return arms


def _served(pairs: list[PreferencePair], first_is_chosen: np.ndarray, answer_a: np.ndarray, truth_a: np.ndarray,
            plan: PreferencePlan, runtime, progress, planted: bool = False) -> dict:
    """The served runs of every arm (:func:`_served_arms`) per seed (module doc), and their means; on the
    real answers, or (``planted``) on the planted control's."""
    arms = _served_arms(plan, planted)
    runs: dict[str, list[dict]] = {arm.name: [] for arm in arms}
    with tempfile.TemporaryDirectory(prefix="winnow-pref-") as tmp:
        for seed in range(plan.served_seeds):
            test, pool = _split(len(pairs), seed, plan)
            for arm in arms:
                run = _served_run(pairs, first_is_chosen, answer_a, truth_a, pool, test, runtime, arm, plan, seed,
                                  Path(tmp) / f"{arm.name}-{seed}")
                runs[arm.name].append(run)
                progress({"served_planted" if planted else "served": arm.name, "seed": seed, **{k: run[k] for k in (
                    "human_labels", "test_accuracy", "final_label_accuracy", "auto_accepted_fraction",
                    "auto_accept_precision", "certified_auto_accept_precision_lower_bound", "win_rate_width")}})
    keys = ("human_fraction", "final_label_accuracy", "auto_accepted_fraction", "auto_accept_precision",
            "first_certified_at_fraction", "certified_accuracy_lower_bound",
            "certified_auto_accept_precision_lower_bound", "test_accuracy", "win_rate_width")

    def mean(values: list) -> float | None:
        values = [v for v in values if v is not None]
        return round(float(np.mean(values)), 4) if values else None

    covered = [r["win_rate"]["covered"] for arm_runs in runs.values() for r in arm_runs if r["win_rate"]]
    return {arm: {**{k: mean([r[k] for r in arm_runs]) for k in keys},
                  "bound_held": all(r["certified_auto_accept_precision_lower_bound"] is None
                                    or r["auto_accept_precision"] is None
                                    or r["certified_auto_accept_precision_lower_bound"] <= r["auto_accept_precision"]
                                    for r in arm_runs),
                  # runs whose auto-accepted preferences fell short of the precision target, measured
                  "auto_accept_below_target": sum(r["auto_accept_precision"] is not None
                                                  and r["auto_accept_precision"] < plan.served_precision
                                                  for r in arm_runs),
                  "runs": arm_runs} for arm, arm_runs in runs.items()} | {
        "strategy": plan.served_strategy, "precision_target": plan.served_precision, "seeds": plan.served_seeds,
        "evaluation_budget": 0 if planted else plan.served_evaluation,
        "arms": {arm.name: {"strategy": arm.strategy, "pair_acquisition": arm.pair_acquisition,
                            "uncertainty": arm.uncertainty} for arm in arms},
        "win_rate_intervals_covered": f"{sum(covered)} of {len(covered)}"}


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
    served, served_planted, sweep = result.get("served"), result.get("served_planted"), result.get("planted_sweep")
    ncols = 3 + bool(served) + bool(served_planted) + bool(sweep)
    fig, axes = new_figure((5.3 * ncols, 4), ncols=ncols)
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
    panels = [(run, title) for run, title in ((served, "served preference project"),
                                              (served_planted, "served project, planted answers")) if run]
    for ax, (runs, title) in zip(axes[3:], panels):
        for arm, colour in (("random", "tab:gray"), ("active", "tab:blue"), ("evaluation", "tab:orange"),
                            ("epig", "tab:green")):
            for k, run in enumerate(runs.get(arm, {}).get("runs", [])):
                scored = "EPIG" if run.get("pair_acquisition") == "epig" else run.get("uncertainty", "margin")
                ax.plot([p["human_labels"] for p in run["curve"]], [p["test_accuracy"] for p in run["curve"]],
                        color=colour, alpha=0.7, marker=".",
                        label=f"{arm} ({run['strategy']}, {scored})" if k == 0 else None)
        ax.set(xlabel="human comparisons (the version's training set)", ylabel="reward model accuracy on test pairs",
               title=f"{title}, {runs['seeds']} seeds")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if sweep:
        ax = axes[-1]
        agree = [p["answer_agrees_with_truth"] for p in sweep]
        share = [p["share_of_random"] if p["share_of_random"] is not None else np.nan for p in sweep]
        ax.plot(agree, share, color="tab:blue", marker="o", label="active selection (planted answers)")
        for p, x, y in zip(sweep, agree, share):
            ax.annotate(f"x{p['planted_scale']:g}", (x, y if np.isfinite(y) else 1.0), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
        ax.axhline(1.0, color="tab:gray", linestyle=":", linewidth=1, label="random's budget")
        ax.axhline(0.7, color="tab:red", linestyle="--", linewidth=1, label="a 30% saving")
        ax.set(xlabel="planted answers that agree with the planted preference",
               ylabel="comparisons to match random, share of its budget", ylim=(0, 1.1),
               title=f"planted sweep, {sweep[0]['seeds']} seeds a point")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    save_figure(fig, path)
