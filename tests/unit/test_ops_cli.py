"""The commands against a running server: project create, list and show; ingest a CSV or JSONL file;
upload gold; read annotator quality. Bad files are one line naming the row and column, nothing sent."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from winnow.core.access.tokens import issue
from winnow.core.adapters.sqlite_bus import SqliteBus
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.services.api.auth import Authenticator
from winnow.services.api.server import create_server
from winnow.services.cli import main


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    bus, store = SqliteBus(tmp_path / "bus.sqlite"), SqliteStore(tmp_path / "store.sqlite")
    grpc_server, port = create_server(bus, store, Authenticator(store))
    grpc_server.start()
    monkeypatch.setenv("WINNOW_TARGET", f"127.0.0.1:{port}")
    monkeypatch.setenv("WINNOW_TOKEN", issue(store, "test", "admin", None, "admin", time.time())[0])
    yield store
    grpc_server.stop(1.0).wait()
    bus.close()
    store.close()


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_project_create_list_show(server, capsys) -> None:
    code, out, _ = run(["project", "create", "intents", "--classes", "a,b,c", "--budget", "10/100"], capsys)
    assert code == 0 and "3 classes, budget 10/100" in out
    code, out, _ = run(["project", "list"], capsys)
    assert code == 0 and out.startswith("intents")
    code, out, _ = run(["project", "show", "intents"], capsys)
    shown = json.loads(out)
    assert shown["project"]["classes"] == ["a", "b", "c"] and shown["stats"]["items"] == 0
    code, _, err = run(["project", "show", "nosuch"], capsys)
    assert code == 2 and "project: no project named 'nosuch'" in err


def test_ingest_a_file_then_gold_and_quality(server, tmp_path: Path, capsys) -> None:
    run(["project", "create", "intents", "--classes", "a,b"], capsys)
    rows = tmp_path / "rows.csv"
    rows.write_text("id,body\nx1,first text\nx2,second text\n")
    code, out, _ = run(["ingest", str(rows), "--project", "intents", "--text-col", "body", "--id-col", "id"], capsys)
    assert code == 0 and "sent 2 items, 2 new" in out and server.count_items("intents") == 2
    lines = tmp_path / "more.jsonl"
    lines.write_text('{"text": "third"}\n{"text": "fourth"}\n')
    assert run(["ingest", str(lines), "--project", "intents"], capsys)[1].strip() == "sent 2 items, 2 new"
    assert run(["ingest", str(lines), "--project", "intents"], capsys)[1].strip() == "sent 2 items, 0 new"
    gold = tmp_path / "gold.csv"
    gold.write_text("item_id,category\nx1,a\n")
    code, out, _ = run(["gold", str(gold), "--project", "intents"], capsys)
    assert code == 0 and "the project has 1 gold items" in out and server.gold("intents") == {"x1": "a"}
    code, out, _ = run(["quality", "--project", "intents"], capsys)
    assert code == 0 and out.startswith("annotator")


@pytest.mark.parametrize(("content", "name", "message"), [
    ("id,text\nx1,fine\nx2,\n", "bad.csv", "row 2: text: is missing or empty"),
    ("id,words\nx1,fine\n", "bad.csv", "text: no such column in bad.csv"),
    ('{"text": "fine"}\nnot json\n', "bad.jsonl", "row 2: is not JSON"),
    ("id,text\nx1,one\nx1,two\n", "bad.csv", "row 2: id: 'x1' appears twice"),
])
def test_a_bad_file_names_the_row_and_sends_nothing(server, tmp_path: Path, capsys, content: str, name: str,
                                                     message: str) -> None:
    run(["project", "create", "intents", "--classes", "a,b"], capsys)
    path = tmp_path / name
    path.write_text(content)
    id_col = ["--id-col", "id"] if "id," in content else []
    code, _, err = run(["ingest", str(path), "--project", "intents", *id_col], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert server.count_items("intents") == 0


def test_a_missing_or_bad_token_is_one_line(server, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WINNOW_TOKEN", "wn_000000000000_" + "A" * 43)
    code, _, err = run(["project", "list"], capsys)
    assert code == 2 and "the token is unknown, expired or revoked" in err


def test_project_update_changes_only_what_is_given(server, capsys, tmp_path: Path) -> None:
    guide = tmp_path / "guide.md"
    guide.write_text("# Intents\nPick what the customer wants.\n")
    run(["project", "create", "intents", "--classes", "a,b", "--budget", "10/100", "--guideline-file", str(guide)],
        capsys)
    assert server.get_project("intents").guideline.startswith("# Intents")
    guide.write_text("# Intents, v2\n")
    assert run(["project", "update", "intents", "--guideline-file", str(guide)], capsys)[0] == 0
    assert server.get_project("intents").guideline == "# Intents, v2\n"
    code, _, err = run(["project", "update", "intents", "--guideline-file", str(tmp_path / "none.md")], capsys)
    assert code == 2 and "--guideline-file: cannot read" in err
    code, out, _ = run(["project", "update", "intents", "--guideline-version", "v2", "--budget", "30/100"], capsys)
    assert code == 0 and "budget 30/100" in out and "guideline v2" in out
    project = server.get_project("intents")
    assert (project.budget_labels, project.guideline_version, project.precision_target) == (30, "v2", 0.98)
    code, _, err = run(["project", "update", "intents"], capsys)
    assert code == 2 and "nothing to change" in err
    code, _, err = run(["project", "update", "intents", "--budget", "300/100"], capsys)
    assert code == 2 and "--budget" in err


def test_project_update_adds_classes_after_the_existing_ones(server, capsys) -> None:
    run(["project", "create", "intents", "--classes", "a,b"], capsys)
    code, out, _ = run(["project", "update", "intents", "--add-classes", "c,d"], capsys)
    assert code == 0 and "4 classes" in out
    assert server.get_project("intents").classes == ("a", "b", "c", "d")
    code, _, err = run(["project", "update", "intents", "--add-classes", "e,b"], capsys)
    assert code == 2 and "add_classes" in err and "'b' is already a class" in err
    assert server.get_project("intents").classes == ("a", "b", "c", "d")  # nothing half-added
    [change] = [json.loads(r.detail) for r in server.audit_trail("intents") if r.action == "project_update"]
    assert change == {"classes": [["a", "b"], ["a", "b", "c", "d"]]}


def test_export_from_the_server_matches_the_store(server, tmp_path: Path, capsys) -> None:
    from winnow.core.domain.records import Label

    run(["project", "create", "intents", "--classes", "a,b"], capsys)
    rows = tmp_path / "rows.csv"
    rows.write_text("id,text\nx1,first ✓\nx2,second\n")
    run(["ingest", str(rows), "--project", "intents", "--id-col", "id"], capsys)
    server.put_label(Label("intents", "x1", "a", "model", "v0001", 0.99, 0.9, "auto_accept", "v1", 5.0, "x1:m", 0.2))
    code, remote, _ = run(["export", "--project", "intents", "--format", "jsonl"], capsys)  # WINNOW_TARGET is set
    assert code == 0
    [row] = [json.loads(line) for line in remote.splitlines()]
    assert (row["item_id"], row["text"], row["label"], row["source_id"], row["probability"]) == \
        ("x1", "first ✓", "a", "v0001", 0.2)
    store_url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    code, local, _ = run(["export", "--project", "intents", "--format", "jsonl", "--store", store_url, "--target", ""],
                         capsys)
    assert code == 0 and json.loads(local) == row
