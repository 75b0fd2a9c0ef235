"""The labeling page's JSON API (through Starlette's test client): the same leases, identities and
errors as the gRPC API, and the model's suggestion only on ordinary tasks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from winnow.core.access.tokens import issue
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.records import Item, Project, Task
from winnow.core.domain.settings import LoopConfig
from winnow.core.loop.ingest import ingest
from winnow.core.loop.topics import create_topics
from winnow.services.api.auth import Authenticator
from winnow.services.api.operations import WinnowApi
from winnow.services.web.app import labeling_app

P = "web"


@pytest.fixture
def page(tmp_path: Path) -> Iterator[tuple[TestClient, SqliteStore, dict[str, str]]]:
    bus, store = SqliteBus(tmp_path / "bus.sqlite"), SqliteStore(tmp_path / "store.sqlite")
    project = Project(P, ("pos", "neg"), guideline_version="g7", guideline="Positive: praise.\nNegative: blame.")
    store.create_project(project)
    create_topics(bus, P, 1)
    ingest(bus.producer(), store, project, [Item(P, f"i{k}", f"text {k}") for k in range(4)])
    store.add_tasks([Task(P, "i0", 0.9, "v1", 0.0, "label", 1.0, "neg"),
                     Task(P, "i1", 0.8, "v1", 0.0, "holdout", 0.1, "pos")])
    tokens = {name: issue(store, "test", role, P, name, time.time())[0]
              for name, role in (("ann", "annotator"), ("viv", "viewer"), ("rev", "reviewer"), ("bob", "annotator"))}
    app = labeling_app(WinnowApi(bus, store, LoopConfig()), Authenticator(store))
    with TestClient(app) as client:
        yield client, store, tokens
    bus.close()
    store.close()


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_page_and_its_assets_are_served(page) -> None:
    client, _, _ = page
    html = client.get("/")
    assert html.status_code == 200 and "<title>Winnow · labeling</title>" in html.text
    assert "default-src 'self'" in html.headers["content-security-policy"] and html.headers["x-frame-options"] == "DENY"
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/app.css").status_code == 200


def test_an_annotator_leases_answers_and_skips_as_itself(page) -> None:
    client, store, tokens = page
    me = client.get("/api/me", headers=_as(tokens["ann"])).json()
    assert (me["name"], me["project"], me["classes"], me["guideline_version"], me["answers"]) == \
        ("ann", P, ["pos", "neg"], "g7", 0)
    assert me["guideline"] == "Positive: praise.\nNegative: blame."
    leases = client.post("/api/lease", json={"max_tasks": 5}, headers=_as(tokens["ann"])).json()["leases"]
    assert [(x["item_id"], x["kind"], x["suggestion"]) for x in leases] == [("i0", "label", "neg"),
                                                                          ("i1", "holdout", None)]
    assert client.post("/api/heartbeat", json={"item_ids": ["i0", "i1"]}, headers=_as(tokens["ann"])).json() == \
        {"extended": 2}
    done = client.post("/api/submit", json={"item_id": "i0", "label": "pos"}, headers=_as(tokens["ann"])).json()
    assert done == {"recorded": True, "final_labels": 1}
    assert client.post("/api/skip", json={"item_id": "i1"}, headers=_as(tokens["ann"])).status_code == 200
    [label] = store.labels(P)
    assert (label.item_id, label.label, label.source_id, label.guideline_version) == ("i0", "pos", "ann", "g7")
    assert [r.action for r in store.audit_trail(P) if r.actor == "ann"] == ["lease", "submit", "skip"]


@pytest.mark.parametrize(("path", "body", "who", "status", "field"), [
    ("/api/lease", {}, None, 401, None),
    ("/api/lease", {}, "wn_000000000000_" + "A" * 43, 401, None),
    ("/api/lease", {}, "viv", 403, None),  # a viewer may not label
    ("/api/lease", {"max_tasks": 0}, "ann", 400, "max_tasks"),
    ("/api/lease", {"max_tasks": "ten"}, "ann", 400, "max_tasks"),
    ("/api/submit", {"item_id": "i2", "label": "pos"}, "ann", 409, None),  # no lease held
    ("/api/submit", {"item_id": "i0"}, "ann", 400, "label"),
    ("/api/submit", {"item_id": "ghost", "label": "pos"}, "ann", 404, "item_id"),
    ("/api/submit", {"item_id": "i0", "label": "meh"}, "ann", 400, "label"),
    ("/api/heartbeat", {"item_ids": "i0"}, "ann", 400, "item_ids"),
])
def test_errors_are_json_with_the_status_of_their_kind(page, path, body, who, status, field) -> None:
    client, store, tokens = page
    headers = {} if who is None else _as(tokens.get(who, who))
    response = client.post(path, json=body, headers=headers)
    assert response.status_code == status, response.text
    assert "error" in response.json() and response.json().get("field") == field
    assert store.annotations(P) == []


def test_a_body_that_is_not_a_json_object_is_refused(page) -> None:
    client, _, tokens = page
    for raw in (b"not json", b"[1, 2]"):
        response = client.post("/api/lease", content=raw, headers=_as(tokens["ann"]))
        assert response.status_code == 400 and response.json()["field"] == "body"


def test_the_reviewer_sees_quality_budget_and_disagreements(page) -> None:
    client, store, tokens = page
    store.add_tasks([Task(P, "i2", 0.95, None, 0.0, "label", 1.0, None, None, 2)])  # two answers wanted
    answers = {"ann": {"i1": "neg", "i2": "pos"}, "bob": {"i2": "neg"}}  # i1: a holdout the model called "pos"
    for who, mine in answers.items():
        client.post("/api/lease", json={}, headers=_as(tokens[who]))
        for item_id, label in mine.items():
            assert client.post("/api/submit", json={"item_id": item_id, "label": label},
                               headers=_as(tokens[who])).status_code == 200
    report = client.get("/api/review", headers=_as(tokens["rev"])).json()
    assert report["budget"] == {"labels": 25, "per_items": 100} and report["items"] == 4
    assert {a["name"]: a["answers"] for a in report["annotators"]} == {"ann": 2, "bob": 1}
    found = {d["item_id"]: (d["answers"], d["model_label"]) for d in report["disagreements"]}
    assert found == {"i1": ({"ann": "neg"}, "pos"), "i2": ({"ann": "pos", "bob": "neg"}, None)}
    assert "accuracy_lower_bound" in report["quality"]
    assert client.get("/api/review", headers=_as(tokens["ann"])).status_code == 403  # annotators do not review
    assert client.get("/review").status_code == 200


def test_the_reviewer_sees_the_gold_set_most_missed_first_and_adds_to_it(page) -> None:
    client, store, tokens = page
    assert client.get("/api/review", headers=_as(tokens["rev"])).json()["gold"] == []
    for item_id, label in (("i2", "pos"), ("i3", "neg")):
        response = client.post("/api/gold", json={"item_id": item_id, "label": label}, headers=_as(tokens["rev"]))
        assert response.status_code == 200
    assert response.json() == {"gold_items": 2}
    for who, answer in (("ann", "pos"), ("bob", "neg")):  # both gold tasks come first; i3 is missed by ann
        client.post("/api/lease", json={}, headers=_as(tokens[who]))
        for item_id in ("i2", "i3"):
            client.post("/api/submit", json={"item_id": item_id, "label": answer if item_id == "i3" else "pos"},
                        headers=_as(tokens[who]))
    report = client.get("/api/review", headers=_as(tokens["rev"])).json()
    assert report["gold_items"] == 2 and report["classes"] == ["pos", "neg"]
    assert [(g["item_id"], g["label"], g["answers"], g["matched"]) for g in report["gold"]] == \
        [("i3", "neg", 2, 1), ("i2", "pos", 2, 2)]
    assert report["gold"][0]["text"] == store.get_items(P, ["i3"])[0].text
    assert "gold_read" in {r.action for r in store.audit_trail(P)}
    refused = client.post("/api/gold", json={"item_id": "i1", "label": "pos"}, headers=_as(tokens["ann"]))
    assert refused.status_code == 403
    bad = client.post("/api/gold", json={"item_id": "i1", "label": "maybe"}, headers=_as(tokens["rev"]))
    assert bad.status_code == 400 and "maybe" in bad.json()["error"]
    assert client.post("/api/gold", json={"label": "pos"}, headers=_as(tokens["rev"])).json()["field"] == "item_id"
    assert set(store.gold(P)) == {"i2", "i3"}


def test_the_page_shows_the_annotator_their_own_answers_and_gold_accuracy(page) -> None:
    client, store, tokens = page
    from winnow.core.domain.records import Task as T

    store.set_gold(P, {"i3": "neg"})
    store.add_tasks([T(P, "i3", 2.0, None, 0.0, "gold")])
    leased = [x["item_id"] for x in client.post("/api/lease", json={}, headers=_as(tokens["ann"])).json()["leases"]]
    assert leased[0] == "i3"  # gold first
    for item_id, label in (("i3", "pos"), ("i0", "neg")):
        client.post("/api/submit", json={"item_id": item_id, "label": label}, headers=_as(tokens["ann"]))
    me = client.get("/api/me", headers=_as(tokens["ann"])).json()
    assert (me["answers"], me["gold_accuracy"]) == (2, 0.0)
    assert client.get("/api/me", headers=_as(tokens["bob"])).json()["gold_accuracy"] is None
