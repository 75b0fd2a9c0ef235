"""Final labels out: write them to the store, then put every one on the project's labels topic, at
least once, even when a crash cut off the publish of an earlier write.

The store write and the publish are two systems, so a crash can fall between them: the label is
stored, the message never sent, and the input is redelivered. The redelivered write then finds the
item already labeled and writes nothing. The rule here: when the label already stored is *this
writer's own* (the same idempotency key, the one it is trying to write again), that earlier write's
publish may have been lost, so the stored label is published again. Consumers of the labels topic
are idempotent (the trainer reads the store; a label message repeats the stored label verbatim), so
a label published twice costs a message, never a second or different label.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable, Mapping, Sequence

from winnow.core.domain.codecs import LABELS
from winnow.core.domain.records import Label
from winnow.core.loop.topics import topic
from winnow.core.ports.bus import Producer
from winnow.core.ports.store import Store

SameWriter = Callable[[str, str], bool]  # (stored key, attempted key) -> the stored label is this writer's own


def same_key(stored: str, attempted: str) -> bool:
    """The stored label is the attempted one, written before: the same idempotency key."""
    return stored == attempted


def same_stage(stored: str, attempted: str) -> bool:
    """The stored label was written by the same stage for the same item under any model version:
    the keys (``item:stage:version``) agree up to the version. A stage whose model changed while it
    was down (the selector loads the newest registered head on restart) still owns its earlier label."""
    return stored.rsplit(":", 1)[0] == attempted.rsplit(":", 1)[0]


def publish_labels(producer: Producer, labels: Iterable[Label]) -> int:
    """Publish labels on their projects' labels topics, keyed by item id (durable at the caller's
    flush); returns how many."""
    by_project: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    for label in labels:
        by_project[label.project].append((label.item_id, LABELS.encode(label)))
    for project, messages in by_project.items():
        producer.publish_many(topic(project, "labels"), messages)
    return sum(len(m) for m in by_project.values())


def write_final_labels(producer: Producer, store: Store, labels: Sequence[Label], same_writer: SameWriter = same_key) -> int:
    """Write ``labels`` (``Store.put_labels``), then publish each label written now and, for each one
    refused because its item already has a final label, the stored label when ``same_writer`` says it
    is this writer's own earlier write (whose publish a crash may have cut off).

    The caller flushes the bus (a stage's ``step`` does) before it commits its input. Returns how
    many labels were written now.
    """
    if not labels:
        return 0
    written = store.put_labels(labels)
    publish_labels(producer, [label for label, ok in zip(labels, written) if ok])
    refused: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for label, ok in zip(labels, written):
        if not ok:
            refused[label.project, label.source][label.item_id] = label.idempotency_key
    for (project, source), keys in refused.items():
        republish_own(producer, store, project, source, keys, same_writer)
    return sum(written)


def republish_own(producer: Producer, store: Store, project: str, source: str, keys: Mapping[str, str],
                  same_writer: SameWriter = same_key) -> int:
    """Publish again the stored ``source`` labels of the items in ``keys`` (item id -> the idempotency
    key this writer writes for it) that ``same_writer`` says this writer made; returns how many."""
    if not keys:
        return 0
    return republish_stored(producer, store, project, source,
                            lambda s: s.item_id in keys and same_writer(s.idempotency_key, keys[s.item_id]))


def republish_stored(producer: Producer, store: Store, project: str, source: str, keep: Callable[[Label], bool]) -> int:
    """Publish again the stored final labels of ``project`` and ``source`` for which ``keep`` is true
    (oldest first); returns how many.

    The store reads labels by project and source only, so this is one scan of that source's labels:
    callers pay it only when a redelivery says an earlier publish may have been lost.
    """
    return publish_labels(producer, [label for label in store.labels(project, source) if keep(label)])
