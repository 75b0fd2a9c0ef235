"""The chaos benchmark's plan checks and its counting (the runs themselves are in tests/integration)."""

from __future__ import annotations

import pytest
from winnow.bench.chaos import ChaosPlan, count
from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.records import Label


def _label(item_id: str, label: str = "a", source: str = "model", key: str = "") -> Label:
    return Label("p", item_id, label, source, "v1", 0.9, None, "auto_accept", "1", 1.0, key or f"{item_id}:x")


@pytest.mark.parametrize("field, kwargs", [
    ("bus", {"bus": "redis"}), ("items", {"items": 0}), ("items", {"items": 10**6}), ("kills", {"kills": -1}),
    ("chunk", {"chunk": 0}), ("classes", {"classes": 1}), ("serve_settings", {"serve_settings": {"AUDIT_PROBABILITY": "0.5"}}), ("items", {"items": 3156}), ("uptime_s", {"uptime_s": (3.0, 1.0)}), ("uptime_s", {"uptime_s": (0.0, 1.0)}),
])
def test_a_bad_plan_names_its_field(field: str, kwargs: dict) -> None:
    with pytest.raises(InvalidInput) as error:
        ChaosPlan(**kwargs)
    assert error.value.field == field


def test_count_finds_lost_duplicated_and_missing_labels() -> None:
    acknowledged = {"i0", "i1", "i2", "i3", "i4"}
    stored = [_label("i0"), _label("i1"), _label("i2"), _label("i2", key="i2:y"), _label("i3")]  # i2 twice, i4 lost
    on_topic = [_label("i0"), _label("i0"),  # published twice, the same label: fine
                _label("i1"), _label("i1", "b"),  # two different labels for i1
                _label("i2")]  # i3 never reached the topic
    assert count(acknowledged, stored, on_topic) == {
        "acknowledged": 5, "labeled_once": 3, "topic_labels": 3, "lost": 1, "duplicated": 2,
        "missing_from_topic": 2, "topic_messages": 5,
    }
    everything = [_label(i) for i in sorted(acknowledged)]
    clean = count(acknowledged, everything, everything + everything)
    assert (clean["lost"], clean["duplicated"], clean["labeled_once"], clean["topic_labels"]) == (0, 0, 5, 5)
