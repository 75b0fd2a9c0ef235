"""Short `winnow bench chaos` runs: processes SIGKILLed at random moments while items stream in and
annotators answer, and still every acknowledged item ends with exactly one final label, on the
labels topic too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from winnow.bench.chaos import ChaosPlan, run_chaos
from winnow.bench.cluster import ServerUnavailable

# five classes, half the items to people, half the checkable ones checked, the first model at 60 labels: models
# with a threshold come early, so the selector's auto-accept and swap paths run under the kills too
EARLY_MODELS = {"classes": 5, "budget_labels": 50,
                "serve_settings": {"WINNOW_AUDIT_PROBABILITY": "0.5", "WINNOW_FIRST_MODEL_LABELS": "60"}}


def _assert_targets(result: dict, plan: ChaosPlan) -> None:
    assert result["kills"] == plan.kills
    assert result["acknowledged"] == plan.items
    assert result["lost"] == 0 and result["duplicated"] == 0
    assert result["labeled_once"] == result["acknowledged"]
    assert result["topic_labels"] == result["acknowledged"] and result["missing_from_topic"] == 0


@pytest.mark.slow
def test_serve_all_killed_three_times_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    plan = ChaosPlan(items=300, kills=3, seed=1, deadline_s=170.0, **EARLY_MODELS)
    result = run_chaos(plan, tmp_path / "chaos.json", workdir=tmp_path / "run")
    _assert_targets(result, plan)
    assert result["labels_by_aggregation"].get("auto_accept", 0) > 0
    assert (tmp_path / "chaos.json").exists()


@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.postgres
def test_six_services_on_kafka_killed_with_a_broker_restart_lose_and_duplicate_nothing(
        tmp_path: Path, postgres_dsn: str) -> None:
    """The broker is this test's own (started with deploy/kafka-local.sh, so it can be restarted)."""
    plan = ChaosPlan(items=300, kills=3, seed=2, bus="kafka", deadline_s=170.0, **EARLY_MODELS)
    try:
        result = run_chaos(plan, tmp_path / "chaos-kafka.json", workdir=tmp_path / "run", postgres_dsn=postgres_dsn)
    except ServerUnavailable as e:  # no java or mvn to start a broker with
        if os.environ.get("CI"):
            raise
        pytest.skip(f"cannot start a Kafka broker: {e}")
    _assert_targets(result, plan)
    assert result["broker_restarts"] == 1 and result["labels_by_aggregation"].get("auto_accept", 0) > 0
