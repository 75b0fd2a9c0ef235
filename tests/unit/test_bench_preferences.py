"""`winnow bench preferences` end to end on a small file with a planted preference: both arms, the
controls and the JSON keys the issue names (its numbers come from the committed run, never asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from winnow.bench.preferences import PreferencePlan, run_preference_benchmark
from winnow.core.domain.errors import InvalidInput
from winnow.core.ml.runtime import OnnxRuntime
from winnow.core.testing.fakes import CrcEncoder


class UnitCrc(CrcEncoder):
    def encode(self, texts):
        x = super().encode(texts)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def _unit(texts):
    return UnitCrc(12).encode(texts)


def _file(tmp_path: Path, n: int = 300) -> Path:
    """Pairs whose chosen reply is the one a fixed direction of the fake embedding prefers."""
    w = np.random.default_rng(1).standard_normal(12)
    rows = []
    for k in range(n):
        x, y = f"reply one {k}", f"reply two {k}"
        ex, ey = _unit([f"prompt {k}\n{x}", f"prompt {k}\n{y}"])
        chosen, rejected = (x, y) if ex @ w > ey @ w else (y, x)
        rows.append(json.dumps({"prompt": f"prompt {k}", "chosen": chosen, "rejected": rejected}))
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(rows))
    return path


def test_the_benchmark_writes_both_curves_and_its_controls(tmp_path: Path) -> None:
    out = tmp_path / "prefs.json"
    plan = PreferencePlan(seeds=2, budget=120, start=20, batch=20, eval_sizes=(40, 80), eval_repeats=30,
                          served_seeds=1, sweep_scales=(0.5, 30.0), sweep_seeds=3)
    result = run_preference_benchmark(out, plan, _file(tmp_path), runtime=OnnxRuntime(UnitCrc(12)))
    saved = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    for key in ("random_labels", "random_accuracy", "active_accuracy", "labels_to_match_random", "seeds",
                "ceiling_accuracy", "curves", "planted", "interval_coverage", "evaluation"):
        assert key in saved
    evaluation = saved["evaluation"]["real"]
    assert evaluation["sizes"] == [40, 80] and set(evaluation["width"]) == {"classical", "prediction_powered", "active"}
    assert all(a > b for a, b in zip(evaluation["width"]["classical"], evaluation["width"]["classical"][1:]))
    # the learnable preference: the reward model's predictions narrow the interval
    assert evaluation["width"]["prediction_powered"][-1] < evaluation["width"]["classical"][-1]
    assert 0.85 <= saved["interval_coverage"] <= 1.0
    assert saved["random_labels"] == 120 and saved["seeds"] == 2 and saved["pairs"] == 300
    curves = result["curves"]
    assert curves["labels"] == list(range(20, 121, 20)) and len(curves["active_mean"]) == 6
    assert curves["random_mean"][-1] > 0.8  # the planted direction is learnable by either arm
    assert saved["ceiling_accuracy"] >= 0.85
    # the planted sweep: one point per strength, each over its own seeds; a stronger planted reward gives
    # answers that agree with it more, and both arms learn it better
    weak, strong = saved["planted_sweep"]
    assert [weak["planted_scale"], strong["planted_scale"]] == [0.5, 30.0] and weak["seeds"] == strong["seeds"] == 3
    assert 0.5 <= weak["answer_agrees_with_truth"] < strong["answer_agrees_with_truth"] <= 1.0
    assert weak["random_accuracy"] < strong["random_accuracy"]
    for point in (weak, strong):
        match = point["labels_to_match_random"]
        assert match is None or (20 <= match <= 120 and point["share_of_random"] == round(match / 120, 3))
    assert saved["details"]["sweep_seeds"] == 3
    # the served path: the same pairs streamed through a preference project, active and random
    served = saved["served"]
    for arm in ("active", "random"):
        [run] = served[arm]["runs"]
        assert run["items"] == 240 and run["human_labels"] <= 0.55 * 240  # 120 of 240: a rate of 50 per 100
        assert run["curve"] and run["test_accuracy"] > 0.75
        assert run["final_label_accuracy"] > 0.8
        rate = run["win_rate"]  # model-x's win rate in the served project, against its true one
        assert rate["items"] + rate["unreachable"] == 240 and rate["lower"] <= rate["estimate"] <= rate["upper"]
    assert served["active"]["runs"][0]["strategy"] == "uncertainty"
    # the evaluation arm: the same comparisons, 10 per 100 of them on model evaluation's own budget
    [run] = served["evaluation"]["runs"]
    assert run["human_labels"] <= 0.55 * 240 and run["win_rate"]["comparisons"] > 0
    assert served["evaluation_budget"] == 10 and served["evaluation"]["win_rate_width"] == run["win_rate_width"]
    assert run["pair_acquisition"] == served["active"]["runs"][0]["pair_acquisition"] == "uncertainty"
    # the same strategy scoring comparisons by EPIG; and all of it again on the planted control's answers
    planted = saved["served_planted"]
    assert set(served["arms"]) == {"active", "random", "epig", "evaluation"}
    assert set(planted["arms"]) == {"active", "random", "epig"} and planted["evaluation_budget"] == 0
    assert planted["arms"]["epig"] == {"strategy": "uncertainty", "pair_acquisition": "epig", "uncertainty": "margin"}
    assert 0.5 <= planted["answer_agrees_with_truth"] <= 1.0
    for runs in (served, planted):
        for arm in runs["arms"]:
            [run] = runs[arm]["runs"]
            assert run["items"] == 240 and run["human_labels"] <= 0.55 * 240 and run["curve"]
            assert 0.0 <= run["final_label_accuracy"] <= 1.0
            assert run["pair_acquisition"] == runs["arms"][arm]["pair_acquisition"]


def test_a_budget_beyond_the_pairs_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as raised:
        run_preference_benchmark(tmp_path / "x.json", PreferencePlan(seeds=1, budget=400), _file(tmp_path, 100),
                                 runtime=OnnxRuntime(UnitCrc(12)))
    assert raised.value.field == "budget"
    with pytest.raises(InvalidInput) as raised:
        PreferencePlan(start=900, budget=800)
    assert raised.value.field == "start"


@pytest.mark.parametrize("scale", [0.0, -1.0, float("inf"), float("nan"), "3"])
def test_a_planted_scale_that_is_not_a_positive_number_is_refused(scale) -> None:
    with pytest.raises(InvalidInput) as raised:
        PreferencePlan(planted_scale=scale)
    assert raised.value.field == "planted_scale"


@pytest.mark.parametrize(("field", "value"), [("sweep_seeds", -1), ("sweep_seeds", 2.0), ("sweep_seeds", True),
                                              ("sweep_scales", (3.0, 0.0)), ("sweep_scales", (float("nan"),))])
def test_a_sweep_that_is_not_seeds_and_positive_scales_is_refused(field, value) -> None:
    with pytest.raises(InvalidInput) as raised:
        PreferencePlan(**{field: value})
    assert raised.value.field == field


def test_no_sweep_seeds_skip_the_sweep(tmp_path: Path) -> None:
    plan = PreferencePlan(seeds=1, budget=60, start=20, batch=20, eval_sizes=(40,), eval_repeats=5, served_seeds=0,
                          sweep_seeds=0)
    result = run_preference_benchmark(tmp_path / "p.json", plan, _file(tmp_path, 120), runtime=OnnxRuntime(UnitCrc(12)))
    assert result["planted_sweep"] == [] and (tmp_path / "p.png").stat().st_size > 0


@pytest.mark.parametrize(("field", "value"), [("acquisition", "margin"), ("acquisition", None), ("targets", 0),
                                              ("targets", 1.5)])
def test_an_unknown_acquisition_or_no_targets_is_refused(field, value) -> None:
    with pytest.raises(InvalidInput) as raised:
        PreferencePlan(**{field: value})
    assert raised.value.field == field


def test_both_acquisitions_run_the_active_arm(tmp_path: Path) -> None:
    results = {}
    for acquisition in ("epig", "bald"):
        plan = PreferencePlan(seeds=1, budget=100, start=20, batch=20, eval_sizes=(40,), eval_repeats=5,
                              served_seeds=0, sweep_seeds=0, acquisition=acquisition, targets=50)
        results[acquisition] = run_preference_benchmark(tmp_path / f"{acquisition}.json", plan, _file(tmp_path, 200),
                                                        runtime=OnnxRuntime(UnitCrc(12)))
        assert results[acquisition]["details"]["acquisition"] == acquisition
    # the same random arm; the active arms draw differently
    assert results["epig"]["curves"]["random_mean"] == results["bald"]["curves"]["random_mean"]
    assert results["epig"]["curves"]["active_mean"] != results["bald"]["curves"]["active_mean"]
