"""The audit trail's hash chain: every edit, deletion or reordering of a record is found and named,
by the library, by `winnow audit verify` on the store, and by the VerifyAudit RPC."""

from __future__ import annotations

import dataclasses
import random
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from winnow.core.adapters.sqlite_store import SqliteStore
from winnow.core.domain.audit import GENESIS, AuditRecord, link, verify
from winnow.core.domain.records import Project
from winnow.services.cli import main


def _chain(n: int, chain: str = "p") -> list[AuditRecord]:
    records: list[AuditRecord] = []
    for k in range(n):
        records.append(link(records[-1] if records else None, chain, float(k), f"actor{k % 3}", "submit",
                            [f"i{k}"], f'{{"k": {k}}}'))
    return records


def test_a_chain_links_each_record_to_the_one_before() -> None:
    records = _chain(4)
    assert records[0].prev_hash == GENESIS and [r.n for r in records] == [1, 2, 3, 4]
    assert all(b.prev_hash == a.hash for a, b in zip(records, records[1:]))
    assert verify(records) == ([], {"p": records[-1].hash})
    assert verify(reversed(records))[0] == []  # checked in chain order, whatever order they come in


@pytest.mark.parametrize("seed", range(40))
def test_any_single_change_is_named_at_the_record_changed(seed: int) -> None:
    rng = random.Random(seed)
    records = _chain(rng.randrange(2, 30))
    k = rng.randrange(len(records))
    field, value = rng.choice([("actor", "mallory"), ("action", "export_labels"), ("detail", "{}"),
                               ("time", 1e9), ("objects", ("other",))])
    tampered = [*records[:k], dataclasses.replace(records[k], **{field: value}), *records[k + 1:]]
    [broken] = verify(tampered)[0]
    assert (broken.chain, broken.n, "edited" in broken.reason) == ("p", k + 1, True)
    # re-hashing the edited record itself does not help: the next one no longer links to it
    fixed = link(records[k - 1] if k else None, "p", *(getattr(tampered[k], f) for f in
                                                       ("time", "actor", "action", "objects", "detail")))
    if k + 1 < len(records):
        [broken] = verify([*records[:k], fixed, *records[k + 1:]])[0]
        assert (broken.n, broken.reason) == (k + 2, "does not link to the record before it")
    # a record removed from the middle is missing
    if 0 < k < len(records) - 1:
        [broken] = verify([*records[:k], *records[k + 1:]])[0]
        assert broken.n == k + 1 and "missing" in broken.reason


def test_chains_are_checked_apart() -> None:
    p, q = _chain(3, "p"), _chain(2, "")
    bad = [*p[:1], dataclasses.replace(p[1], actor="x"), p[2], *q]
    broken, heads = verify(bad)
    assert [str(b) for b in broken] == ["chain 'p' record 2: its content does not match its hash (edited)"]
    assert heads == {"": q[-1].hash}


def test_audit_verify_command_names_the_tampered_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "store.sqlite"
    store = SqliteStore(path)
    try:
        store.create_project(Project("p", ("a", "b")))
        for k in range(4):
            store.audit("p", "alice", "submit", f"answer {k}", float(k), [f"i{k}"])
        store.audit(None, "cli:root", "token_create", "admin root", 5.0, ["t1"])
    finally:
        store.close()
    url = f"sqlite:///{path}"
    assert main(["audit", "verify", "--store", url]) == 0
    out = capsys.readouterr().out
    assert "intact  p  head " in out and "intact  (global)  head " in out
    assert main(["audit", "show", "--store", url, "--project", "p"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) == 4 and "alice" in shown[0] and "[i0]" in shown[0]
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE audit_trail SET actor = 'mallory' WHERE chain = 'p' AND n = 3")
    assert main(["audit", "verify", "--store", url]) == 1
    out = capsys.readouterr().out
    assert "BROKEN  chain 'p' record 3: its content does not match its hash (edited)" in out
    assert "intact  (global)" in out
    assert main(["audit", "verify", "--store", url, "--project", "p"]) == 1
