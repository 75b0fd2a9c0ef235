"""The labeling page in real headless Chromium: an annotator signs in with a token, answers 20 items
with the keyboard, skips one and undoes one; the store then holds exactly those answers, as final
labels with the annotator's identity and the project's guideline version; a holdout task shows no
model suggestion. Screenshots go to ``WINNOW_SCREENSHOTS`` when set (docs/ holds the committed ones),
else to the test's temporary folder."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from winnow.core.access.tokens import issue
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.records import Item, Project, Task
from winnow.core.domain.settings import LoopConfig
from winnow.core.loop.ingest import ingest
from winnow.core.loop.topics import create_topics
from winnow.services.api.auth import Authenticator
from winnow.services.api.operations import WinnowApi
from winnow.services.web.app import PageServer, labeling_app

pytestmark = pytest.mark.browser

P = "intents"
CLASSES = ("card_lost", "refund", "top_up", "exchange_rate", "transfer_pending")
SHOTS = os.environ.get("WINNOW_SCREENSHOTS")
TEXTS = ["I lost my card yesterday", "Where is my refund?", "How do I top up by bank transfer?",
         "What rate do you use for euros?", "My transfer has been pending for days"]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, SqliteStore, str, dict[str, str]]]:
    bus, store = SqliteBus(tmp_path / "bus.sqlite"), SqliteStore(tmp_path / "store.sqlite")
    project = Project(P, CLASSES, guideline_version="2026-12")
    store.create_project(project)
    create_topics(bus, P, 1)
    truth = {f"h{k}": CLASSES[k % 5] for k in range(1)} | {f"i{k:02d}": CLASSES[k % 5] for k in range(22)}
    texts = {item_id: f"{TEXTS[CLASSES.index(label)]} (#{item_id})" for item_id, label in truth.items()}
    ingest(bus.producer(), store, project, [Item(P, i, t) for i, t in texts.items()])
    tasks = [Task(P, "h0", 2.0, "v1", 0.0, "holdout", 0.1, CLASSES[1])]  # first: it must show no suggestion
    tasks += [Task(P, f"i{k:02d}", 1.0 - k / 100, "v1", 0.0, "label", 1.0, truth[f"i{k:02d}"]) for k in range(22)]
    store.add_tasks(tasks)
    token, _ = issue(store, "test", "annotator", P, "ana", time.time())
    server = PageServer(labeling_app(WinnowApi(bus, store, LoopConfig()), Authenticator(store)), "127.0.0.1", 0)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}/", store, token, {t: i for i, t in texts.items()}
    finally:
        server.stop()
        bus.close()
        store.close()


def test_an_annotator_labels_by_keyboard_skips_and_undoes(served, browser, tmp_path: Path) -> None:
    url, store, token, item_of = served
    page = browser.new_page(viewport={"width": 1100, "height": 800}, bypass_csp=True)  # its waits evaluate JS
    page.goto(url)
    page.fill("#token", token)
    page.click("#signin button")
    page.wait_for_selector("#work:not([hidden])")
    assert "ana · intents" in page.inner_text("#who") and "2026-12" in page.inner_text("#guideline")

    def current() -> str:
        page.wait_for_function("document.getElementById('text').textContent.length > 0")
        return item_of[page.inner_text("#text")]

    def press_answer(item_id: str, label: str) -> None:
        page.keyboard.press(str(CLASSES.index(label) + 1))
        page.wait_for_function(f"!document.getElementById('text').textContent.includes('#{item_id})')")

    expected: dict[str, str] = {}
    first = current()
    assert first == "h0" and page.is_hidden("#suggestion")  # a holdout never shows the model's label
    press_answer("h0", "card_lost")
    expected["h0"] = "card_lost"
    second = current()
    assert page.is_visible("#suggestion") and second in page.inner_text("#text").replace(")", "").split("#")[-1]
    skipped = undone = None
    while len(expected) < 20:
        item_id = current()
        label = CLASSES[int(item_id[1:]) % 5]
        if skipped is None and item_id == "i05":
            page.keyboard.press("Escape")  # skip it
            page.wait_for_function("!document.getElementById('text').textContent.includes('#i05)')")
            skipped = item_id
            continue
        if undone is None and item_id == "i08":
            wrong = CLASSES[(CLASSES.index(label) + 1) % 5]
            press_answer(item_id, wrong)
            page.keyboard.press("Control+z")  # the wrong answer comes back before it is sent
            page.wait_for_function("document.getElementById('text').textContent.includes('#i08)')")
            undone = item_id
        if item_id == "i12":  # type-ahead: filter the classes and answer with Enter
            page.keyboard.type(label.split("_")[0])
            page.keyboard.press("Enter")
            page.wait_for_function("!document.getElementById('text').textContent.includes('#i12)')")
        else:
            press_answer(item_id, label)
        expected[item_id] = label
    page.screenshot(path=str(Path(SHOTS or tmp_path) / "labeling-page.png"))
    deadline = time.monotonic() + 20  # the last answer is sent after its undo window
    while len(store.labels(P)) < 20 and time.monotonic() < deadline:
        time.sleep(0.2)
    labels = store.labels(P)
    assert {label.item_id: label.label for label in labels} == expected
    assert {(label.source, label.source_id, label.guideline_version) for label in labels} == {("human", "ana",
                                                                                               "2026-12")}
    assert skipped == "i05" and "i05" not in expected and undone == "i08"
    answers = [a for a in store.annotations(P) if a.item_id == "i08"]
    assert [(a.annotator, a.label) for a in answers] == [("ana", CLASSES[8 % 5])]  # the undone answer never left
    page.set_viewport_size({"width": 390, "height": 760})  # a phone
    page.screenshot(path=str(Path(SHOTS or tmp_path) / "labeling-page-phone.png"))
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.close()


def test_a_reviewer_sees_a_planted_disagreement(served, browser, tmp_path: Path) -> None:
    url, store, _, _ = served
    from winnow.core.domain.records import Annotation

    store.add_annotation(Annotation(P, "i03", "ana", "exchange_rate", time.time()))
    store.add_annotation(Annotation(P, "i03", "ben", "top_up", time.time()))  # people disagree
    store.add_annotation(Annotation(P, "h0", "ana", "refund", time.time()))
    store.add_annotation(Annotation(P, "h0", "ben", "card_lost", time.time()))  # and one against the model
    token, _ = issue(store, "test", "reviewer", P, "rita", time.time())
    page = browser.new_page(viewport={"width": 1100, "height": 900})  # under its own Content-Security-Policy
    page.goto(url + "review")
    page.fill("#token", token)
    page.click("#signin button")
    page.wait_for_selector("#disagreements tbody tr")
    rows = [page.inner_text(f"#disagreements tbody tr:nth-child({k})") for k in (1, 2)]
    assert any("i03" in row and "ana: exchange_rate" in row and "ben: top_up" in row for row in rows)
    assert any("h0" in row and "refund" in row for row in rows)  # the model said refund on this holdout
    assert "rita · intents" in page.inner_text("#who") and "ana" in page.inner_text("#annotators")
    # the reviewer settles the people's disagreement: its answer becomes gold, scored against both
    page.select_option('select[aria-label="gold answer for i03"]', "top_up")
    page.click('#disagreements tbody tr:has-text("i03") button')
    page.wait_for_selector('#gold tbody tr:has-text("i03")')
    assert "1 of 2 (50.0%)" in page.inner_text('#gold tbody tr:has-text("i03")')
    assert store.gold(P) == {"i03": "top_up"}
    page.screenshot(path=str(Path(SHOTS or tmp_path) / "review-page.png"), full_page=True)
    page.close()


def test_an_annotator_compares_two_responses_with_the_keys_a_b_and_t(tmp_path: Path, browser) -> None:
    from winnow.core.domain.records import PREFERENCE_CLASSES, Response

    bus, store = SqliteBus(tmp_path / "bus.sqlite"), SqliteStore(tmp_path / "store.sqlite")
    project = Project("replies", PREFERENCE_CLASSES, kind="preference")
    store.create_project(project)
    create_topics(bus, project.name, 1)
    prompts = {"q0": ("How do I reset my card PIN?", "Open the app, tap Card, then Reset PIN.", "Call us."),
               "q1": ("Can I freeze my card?", "Yes: Card, then Freeze, in the app.", "No."),
               "q2": ("What is the fee for a transfer in euros?", "Free within the euro area.", "There are fees.")}
    ingest(bus.producer(), store, project, [Item(project.name, i, p, responses=(Response(a, "model-x"),
                                                                                 Response(b, "model-y")))
                                            for i, (p, a, b) in prompts.items()])
    store.add_tasks([Task(project.name, "q0", 3.0, "v1", 0.0, "holdout", 0.1, "A"),
                     Task(project.name, "q1", 2.0, "v1", 0.0, "label", 1.0, "A"),
                     Task(project.name, "q2", 1.0, "v1", 0.0, "label", 1.0, "B")])
    token, _ = issue(store, "test", "annotator", project.name, "ana", time.time())
    server = PageServer(labeling_app(WinnowApi(bus, store, LoopConfig()), Authenticator(store)), "127.0.0.1", 0)
    server.start()
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 800}, bypass_csp=True)
        page.goto(f"http://127.0.0.1:{server.port}/")
        page.fill("#token", token)
        page.click("#signin button")
        page.wait_for_selector("#pair:not([hidden])")
        assert page.is_hidden("#search") and page.is_visible("#pair-keys")
        answers = {"q0": "t", "q1": "a", "q2": "b"}
        for item_id in ("q0", "q1", "q2"):
            prompt, a, b = prompts[item_id]
            page.wait_for_function(f"document.getElementById('text').textContent === {prompt!r}")
            assert page.inner_text("#response-a") == a and page.inner_text("#response-b") == b
            # the model's pick is hidden on the holdout comparison, shown on ordinary ones
            assert page.is_hidden("#suggestion") == (item_id == "q0")
            if item_id == "q1":
                page.screenshot(path=str(Path(SHOTS or tmp_path) / "labeling-page-pairwise.png"))
            if item_id == "q2":  # a reason, then "much better" with Shift
                page.click("#reason")
                page.keyboard.type("B names the fee")  # its letters answer nothing while typed here
                page.keyboard.press("Enter")
                page.keyboard.press("Shift+B")
                continue
            page.keyboard.press(answers[item_id])
        page.wait_for_selector("#empty:not([hidden])")
        deadline = time.monotonic() + 20  # the last answer is sent after its undo window
        while len(store.labels(project.name)) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert {label.item_id: label.label for label in store.labels(project.name)} == {
            "q0": "tie", "q1": "A", "q2": "B"}
        [said] = store.annotations(project.name, ["q2"])
        assert (said.strength, said.reason) == ("much", "B names the fee")
        page.close()
    finally:
        server.stop()
        bus.close()
        store.close()
