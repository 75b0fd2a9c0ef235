"""The stage base: a consumer that turns a batch of typed records into durable output through a
producer of its own, then commits; poison messages and records whose item is gone go to the
project's dead-letter topic."""

from __future__ import annotations


import logging
import time
from abc import ABC, abstractmethod
from typing import Sequence

from winnow.core.domain.codecs import codec_for
from winnow.core.domain.errors import WinnowError
from winnow.core.domain.records import Item, Project
from winnow.core.domain.settings import LoopConfig
from winnow.core.domain.validation import validate_items
from winnow.core.loop.topics import consumer_group, topic
from winnow.core.ports.bus import Bus, Headers, Message
from winnow.core.ports.store import Store

log = logging.getLogger(__name__)


PROJECT_CHECK_S = 5.0  # how often a worker reads its project's settings again


class Stage(ABC):
    """A consumer that turns a batch of messages into durable output, then commits.

    Each stage publishes through a producer of its own (``self.producer``): ``step`` flushes it and
    commits only once that flush returned, so a failed publish of this stage is never hidden by, nor
    hides, another stage's (see ``winnow.core.ports.bus.Producer``).
    """

    name: str  # prelabel, selector, trainer
    stages: tuple[str, ...]
    fill_s: float = 0.0  # how long a step may wait for more messages to fill its batch (see ``step``)

    def __init__(self, bus: Bus, store: Store, project: Project, config: LoopConfig) -> None:
        self.bus, self.store, self.project, self.config = bus, store, project, config
        self._project_check_at = time.monotonic() + PROJECT_CHECK_S
        self.group = self.group_name(project)
        self.producer = bus.producer()
        self.consumer = bus.consumer([topic(project.name, s) for s in self.stages], self.group)

    def group_name(self, project: Project) -> str:
        """The consumer group this stage's consumer joins: one per stage and project."""
        return consumer_group(self.name, project.name)

    def step(self, max_messages: int = 512, timeout_s: float = 0.0) -> int:
        """Handle one batch; returns how many messages it took off the bus.

        A message that cannot be decoded or validated (a poison message) goes to the project's
        dead-letter topic with the error in its headers, and the batch goes on without it: a bad
        message never blocks its partition. So does a record whose item the store does not have
        (``reject``), found while handling. Output and dead letters are durable (the producer's
        flush returned) before the offsets are committed; a flush that raises stops the step
        before the commit, and the batch is handed out again.

        Once messages arrive, a stage with ``fill_s`` waits up to that long for more, until the batch
        is full (dynamic batching: a producer's batch often lands over several polls, and every step
        costs a flush and a commit, and for the prelabel worker a less efficient model batch).
        """
        self.check_project()
        messages = self._gather(max_messages, timeout_s)
        if messages:
            self.handle(self._decode_all(messages))
            self.producer.flush()
            self.consumer.commit()
        return len(messages)

    def check_project(self, force: bool = False) -> None:
        """Every ``PROJECT_CHECK_S``, read the project's settings again; when an owner changed them
        (``UpdateProject``), apply them (``project_changed``)."""
        if not force and time.monotonic() < self._project_check_at:
            return
        self._project_check_at = time.monotonic() + PROJECT_CHECK_S
        fresh = self.store.get_project(self.project.name)
        if fresh != self.project:
            log.info("%s settings changed project=%s", self.name, self.project.name)
            self.project_changed(fresh)

    def project_changed(self, project: Project) -> None:
        """Apply new settings (the base keeps the record: labels carry its guideline version)."""
        self.project = project

    def _gather(self, max_messages: int, timeout_s: float) -> list[Message]:
        """Poll for a batch: wait up to ``timeout_s`` for the first message, then ``fill_s`` for more."""
        messages = self.consumer.poll(max_messages, timeout_s)
        if messages and self.fill_s > 0:
            fill_until = time.monotonic() + self.fill_s
            while len(messages) < max_messages and (left := fill_until - time.monotonic()) > 0:
                messages += self.consumer.poll(max_messages - len(messages), left)
        return messages

    def _decode_all(self, messages: list[Message]) -> list[tuple[str, object]]:
        """The ``(stage, record)`` of each message; poison messages go to the dead-letter topic, and
        tombstones (an erase's empty values) are skipped."""
        records: list[tuple[str, object]] = []
        for m in messages:
            if not m.value:
                continue
            try:
                records.append((self._stage_of(m), self.decode(m)))
            except (ValueError, TypeError, KeyError, WinnowError) as e:
                self._dead_letter(m, e)
        return records

    def decode(self, message: Message) -> object:
        """The typed record a message carries (its topic's codec, ``winnow.core.domain.codecs``); an
        item is validated as ingest validates it. Raises ``InvalidInput``/``NotFound`` on a bad one."""
        record = codec_for(self._stage_of(message)).decode(message.value)
        if isinstance(record, Item):  # without text, a reference to the stored item (see ``ingest``)
            validate_items(self.project, [record], references=not record.text)
        return record

    def _dead_letter(self, message: Message, error: Exception) -> None:
        log.warning("dead-lettered stage=%s topic=%s partition=%d offset=%d error=%s", self.name, message.topic,
                    message.partition, message.offset, type(error).__name__)
        self._publish_dead(message.key, message.value, error,
                           f"{message.topic}/{message.partition}/{message.offset}")

    def reject(self, stage: str, records: Sequence[object], error: WinnowError) -> None:
        """Dead-letter records that decoded but cannot be handled (their item is not in the store),
        re-encoded with their topic's codec, so the rest of the batch goes on; flushed with the step's
        output. The ``source`` header names the topic (the offsets are not known here)."""
        codec = codec_for(stage)
        for key, value in codec.keyed(records):
            log.warning("dead-lettered stage=%s topic=%s key=%s error=%s", self.name, stage, key[:100],
                        type(error).__name__)
            self._publish_dead(key, value, error, topic(self.project.name, stage))

    def _publish_dead(self, key: str, value: bytes, error: Exception, source: str) -> None:
        headers: Headers = (("error", f"{type(error).__name__}: {error}"[:1000].encode()),
                            ("stage", self.name.encode()), ("source", source.encode()))
        self.producer.publish(topic(self.project.name, "dead-letter"), key, value, headers)

    @abstractmethod
    def handle(self, records: list[tuple[str, object]]) -> None:
        """Make the output of the decoded ``(stage, record)`` pairs; ``step`` flushes and commits."""

    def close(self) -> None:
        """Leave the group without committing, then close the producer (nothing is pending after a
        step; a flush failure there is raised)."""
        try:
            self.consumer.close(commit=False)
        finally:
            self.producer.close()

    @property
    def in_flight(self) -> int:
        """Items taken off the bus whose output is not written yet, between steps (only an overlapping
        prelabel worker has any: the batch in its model)."""
        return 0

    def _stage_of(self, message: Message) -> str:
        return message.topic.removeprefix(f"winnow.{self.project.name}.")
