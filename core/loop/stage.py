"""The stage base: a consumer that turns a batch of messages into durable output, then commits;
poison messages go to the project's dead-letter topic."""

from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod

from winnow.core.domain.errors import InvalidInput, WinnowError
from winnow.core.domain.records import (
    Item,
    Label,
    ModelVersion,
    Project,
    Task,
    from_json,
)
from winnow.core.domain.settings import LoopConfig
from winnow.core.domain.validation import validate_items
from winnow.core.loop.topics import consumer_group, topic
from winnow.core.ports.bus import Bus, Message
from winnow.core.ports.store import Store

log = logging.getLogger(__name__)


_RECORDS = {"items.raw": Item, "models": ModelVersion, "labels": Label, "tasks": Task}


class Stage(ABC):
    """A consumer that turns a batch of messages into durable output, then commits."""

    name: str  # prelabel, selector, trainer
    stages: tuple[str, ...]
    fill_s: float = 0.0  # how long a step may wait for more messages to fill its batch (see ``step``)

    def __init__(self, bus: Bus, store: Store, project: Project, config: LoopConfig) -> None:
        self.bus, self.store, self.project, self.config = bus, store, project, config
        self.group = consumer_group(self.name, project.name)
        self.consumer = bus.consumer([topic(project.name, s) for s in self.stages], self.group)

    def step(self, max_messages: int = 512, timeout_s: float = 0.0) -> int:
        """Handle one batch; returns how many messages it took off the bus.

        A message that cannot be decoded or validated (a poison message) goes to the project's
        dead-letter topic with the error in its headers, and the batch goes on without it: a bad
        message never blocks its partition.

        Once messages arrive, a stage with ``fill_s`` waits up to that long for more, until the batch
        is full (dynamic batching: a producer's batch often lands over several polls, and every step
        costs a flush and a commit, and for the prelabel worker a less efficient model batch).
        """
        messages = self._gather(max_messages, timeout_s)
        if messages:
            self.handle(self._decode_all(messages))
            self.bus.flush()
            self.consumer.commit()
        return len(messages)

    def _gather(self, max_messages: int, timeout_s: float) -> list[Message]:
        """Poll for a batch: wait up to ``timeout_s`` for the first message, then ``fill_s`` for more."""
        messages = self.consumer.poll(max_messages, timeout_s)
        if messages and self.fill_s > 0:
            fill_until = time.monotonic() + self.fill_s
            while len(messages) < max_messages and (left := fill_until - time.monotonic()) > 0:
                messages += self.consumer.poll(max_messages - len(messages), left)
        return messages

    def _decode_all(self, messages: list[Message]) -> list[tuple[str, object]]:
        """The ``(stage, record)`` of each message; poison messages go to the dead-letter topic."""
        records: list[tuple[str, object]] = []
        for m in messages:
            try:
                records.append((self._stage_of(m), self.decode(m)))
            except (ValueError, TypeError, KeyError, WinnowError) as e:
                self._dead_letter(m, e)
        return records

    def decode(self, message: Message) -> object:
        """The record a message carries; raises on a malformed one."""
        stage = self._stage_of(message)
        if stage == "items.scored":
            scored = json.loads(message.value)
            if not isinstance(scored, dict) or not isinstance(scored.get("item_id"), str):
                raise InvalidInput("item_id", "a scored message has no item id")
            return scored
        record = from_json(_RECORDS[stage], message.value)
        if isinstance(record, Item):
            validate_items(self.project, [record])
        return record

    def _dead_letter(self, message: Message, error: Exception) -> None:
        log.warning("dead-lettered stage=%s topic=%s partition=%d offset=%d error=%s", self.name, message.topic,
                    message.partition, message.offset, type(error).__name__)
        headers = (("error", f"{type(error).__name__}: {error}".encode()), ("stage", self.name.encode()),
                   ("source", f"{message.topic}/{message.partition}/{message.offset}".encode()))
        self.bus.publish(topic(self.project.name, "dead-letter"), message.key, message.value, headers)

    @abstractmethod
    def handle(self, records: list[tuple[str, object]]) -> None:
        """Make the output of the decoded ``(stage, record)`` pairs; ``step`` flushes and commits."""

    def close(self) -> None:
        self.consumer.close(commit=False)

    @property
    def in_flight(self) -> int:
        """Items taken off the bus whose output is not written yet, between steps (only an overlapping
        prelabel worker has any: the batch in its model)."""
        return 0

    def _stage_of(self, message: Message) -> str:
        return message.topic.removeprefix(f"winnow.{self.project.name}.")
