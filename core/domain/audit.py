"""The audit trail's records and their hash chain: what makes the trail tamper-evident.

Each project keeps one chain (global records, such as a project's creation or an admin token, keep
the chain named ""). A record's hash covers its chain, its position ``n`` (1, 2, ...), its time,
actor, action, the objects it touched and its detail, and the previous record's hash, so editing,
deleting or reordering any record breaks every later link. :func:`verify` walks the chains and names
the first record that does not hold. Rewriting a whole chain's tail with fresh hashes is caught by
comparing its head (the last hash, printed by ``winnow audit verify``) with one noted earlier.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterable, Sequence

GENESIS = "0" * 64  # the previous hash of each chain's first record
GLOBAL = ""  # the chain of records that belong to no project


@dataclass(frozen=True)
class AuditRecord:
    """One audited action: who (``actor``, the principal's name), when, on what (``chain`` is the
    project, "" for global ones; ``objects`` the ids touched) and what (``action``, ``detail``),
    never item text."""

    chain: str
    n: int
    time: float
    actor: str
    action: str
    objects: tuple[str, ...]
    detail: str
    prev_hash: str
    hash: str


def record_hash(prev_hash: str, chain: str, n: int, time: float, actor: str, action: str,
                objects: Sequence[str], detail: str) -> str:
    """SHA-256 of the record's fields and the previous hash, in a canonical JSON encoding."""
    body = json.dumps([prev_hash, chain, n, time, actor, action, list(objects), detail], ensure_ascii=False,
                      separators=(",", ":"))
    return hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()


def link(prev: AuditRecord | None, chain: str, time: float, actor: str, action: str, objects: Sequence[str],
         detail: str) -> AuditRecord:
    """The record that follows ``prev`` (None: the chain's first) in ``chain``."""
    n, prev_hash = (1, GENESIS) if prev is None else (prev.n + 1, prev.hash)
    return AuditRecord(chain, n, time, actor, action, tuple(objects), detail, prev_hash,
                       record_hash(prev_hash, chain, n, time, actor, action, objects, detail))


@dataclass(frozen=True)
class Broken:
    """The first record of a chain that does not hold, and why."""

    chain: str
    n: int
    reason: str

    def __str__(self) -> str:
        return f"chain {self.chain or '(global)'!r} record {self.n}: {self.reason}"


def verify(records: Iterable[AuditRecord]) -> tuple[list[Broken], dict[str, str]]:
    """Check every chain in ``records`` (each in ``n`` order): the first broken record of each broken
    chain, and the head hash of every chain that holds."""
    chains: dict[str, list[AuditRecord]] = {}
    for record in records:
        chains.setdefault(record.chain, []).append(record)
    broken, heads = [], {}
    for chain, rows in chains.items():
        prev_hash, problem = GENESIS, None
        for expected_n, r in enumerate(sorted(rows, key=lambda r: r.n), start=1):
            if r.n != expected_n:
                problem = Broken(chain, expected_n, f"missing (the next record is number {r.n})")
            elif r.prev_hash != prev_hash:
                problem = Broken(chain, r.n, "does not link to the record before it")
            elif r.hash != record_hash(r.prev_hash, chain, r.n, r.time, r.actor, r.action, r.objects, r.detail):
                problem = Broken(chain, r.n, "its content does not match its hash (edited)")
            if problem is not None:
                broken.append(problem)
                break
            prev_hash = r.hash
        else:
            heads[chain] = prev_hash
    return broken, heads
