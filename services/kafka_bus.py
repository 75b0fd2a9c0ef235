"""The Apache Kafka adapter of the bus interface (``winnow.core.ports.bus``), on kafka-python.

Placement is decided here, not by Kafka's partitioner: ``publish`` sends each message to
``partition_for(key, partitions)``, so the embedded SQLite log and Kafka put a key on the same partition.
Only kafka-python's public API is used, except for one call with no public equivalent, wrapped in
``_finish_join`` (tests/unit/test_kafka_client.py fails if the client changes under it).
"""

from __future__ import annotations

import logging
import threading
import weakref
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    InvalidPartitionsError,
    InvalidTopicError,
    KafkaError,
    RebalanceInProgressError,
    TopicAlreadyExistsError,
    UnknownMemberIdError,
    UnknownTopicOrPartitionError,
    for_code,
)
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import OffsetAndMetadata, TopicPartition
from winnow.core.domain.errors import BusError, InvalidInput, NotFound
from winnow.core.domain.limits import check_topic_name
from winnow.core.ports.bus import (
    Bus,
    Consumer,
    Headers,
    Message,
    Offsets,
    Producer,
    check_offsets,
    close_producers,
    partition_for,
)

log = logging.getLogger(__name__)

# bus URL options (kafka://HOST:PORT?name=value&...) -> kafka-python settings; files must exist
_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_FILES = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
_TEXT = ("sasl_plain_username",)
SASL_PASSWORD_ENV = "WINNOW_KAFKA_SASL_PASSWORD"  # the password never in the URL (process lists show it)


def security_from_url(url: str, environ: Mapping[str, str] = os.environ) -> tuple[str, dict[str, object]]:
    """``kafka://HOST:PORT[,HOST:PORT][?security_protocol=SASL_SSL&ssl_cafile=/ca.pem&sasl_mechanism=
    SCRAM-SHA-512&sasl_plain_username=winnow]`` -> (bootstrap, kafka-python settings). The SASL
    password comes from ``WINNOW_KAFKA_SASL_PASSWORD``. InvalidInput("--bus") naming the option for
    an unknown option, a bad value or a missing file (the value never echoed: it may be secret)."""
    parts = urlsplit(url)
    bootstrap = parts.netloc
    if parts.scheme != "kafka" or not bootstrap or parts.path not in ("", "/"):
        raise InvalidInput("--bus", "must look like kafka://HOST:PORT[?option=value&...]")
    settings: dict[str, object] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)):
        if name in settings:
            raise InvalidInput("--bus", f"option {name} is given twice")
        if name == "security_protocol":
            if value not in _PROTOCOLS:
                raise InvalidInput("--bus", f"security_protocol must be one of {', '.join(_PROTOCOLS)}")
        elif name == "sasl_mechanism":
            if value not in _MECHANISMS:
                raise InvalidInput("--bus", f"sasl_mechanism must be one of {', '.join(_MECHANISMS)}")
        elif name in _FILES:
            if not Path(value).is_file():
                raise InvalidInput("--bus", f"{name}: no such file")
        elif name == "ssl_check_hostname":
            if value not in ("true", "false"):
                raise InvalidInput("--bus", "ssl_check_hostname must be true or false")
            settings[name] = value == "true"
            continue
        elif name not in _TEXT:
            raise InvalidInput("--bus", f"unknown option {name[:40]!r}; known: security_protocol, sasl_mechanism, "
                               f"sasl_plain_username, ssl_check_hostname, {', '.join(_FILES)}")
        settings[name] = value
    protocol = settings.get("security_protocol", "PLAINTEXT")
    if str(protocol).startswith("SASL"):
        if "sasl_mechanism" not in settings or "sasl_plain_username" not in settings:
            raise InvalidInput("--bus", f"{protocol} needs sasl_mechanism and sasl_plain_username")
        password = environ.get(SASL_PASSWORD_ENV)
        if not password:
            raise InvalidInput("--bus", f"{protocol} needs the password in {SASL_PASSWORD_ENV}")
        settings["sasl_plain_password"] = password
    elif "sasl_mechanism" in settings or "sasl_plain_username" in settings:
        raise InvalidInput("--bus", "SASL options need security_protocol=SASL_SSL (or SASL_PLAINTEXT)")
    if any(name in settings for name in _FILES) and not str(protocol).endswith("SSL"):
        raise InvalidInput("--bus", "ssl_* files need security_protocol=SSL or SASL_SSL")
    return bootstrap, settings


def _bus_error(action: str, exc: KafkaError) -> BusError:
    return BusError(f"kafka {action} failed: {type(exc).__name__}: {exc}")


def _finish_join(consumer: KafkaConsumer, timeout_ms: int) -> None:
    """Drive the group coordinator until a pending (re)join has finished, for at most ``timeout_ms``.

    kafka-python 3.0.12 drops a JoinGroup/SyncGroup round that completes between two polls and sends
    JoinGroup again, which restarts the rebalance: members that poll with short timeouts can then
    rebalance forever on a busy machine. ``KafkaConsumer.poll`` bounds the coordinator by the poll's
    own timeout, and no public call drives the join alone, so this is the one place that reaches
    into the client (``KafkaConsumer._coordinator``, ``ConsumerCoordinator.poll(timeout_ms=)``).
    """
    consumer._coordinator.poll(timeout_ms=timeout_ms)


@contextmanager
def _broker_errors(action: str) -> Iterator[None]:
    """Re-raise kafka-python errors as ``BusError`` naming what was being done."""
    try:
        yield
    except KafkaError as exc:
        raise _bus_error(action, exc) from exc


class KafkaConsumerMember(Consumer):
    """A member of a Kafka consumer group (manual commits, earliest reset when the group has none)."""

    def __init__(self, consumer: KafkaConsumer, group: str, join_timeout_ms: int, admin: KafkaAdminClient) -> None:
        self._consumer = consumer
        self._group = group
        self._join_timeout_ms = join_timeout_ms
        self._admin = admin  # the bus's: reads the group's committed offsets for ``lag``
        self._closed = False
        self._handed: dict[tuple[str, int], int] = {}  # partition -> after the furthest record ever handed out

    def _check_open(self) -> None:
        if self._closed:
            raise BusError(f"consumer of group {self._group!r} is closed")

    def poll(self, max_messages: int = 500, timeout_s: float = 0.0) -> list[Message]:
        """Up to ``max_messages`` records from the assigned partitions, in offset order per partition.

        Joining the group and every rebalance happen inside ``poll``: while this member (re)joins, the
        call first waits up to ``join_timeout_ms`` for the join to finish, then up to ``timeout_s``.
        """
        if max_messages < 1:
            raise InvalidInput("max_messages", f"must be at least 1, got {max_messages}")
        if timeout_s < 0:
            raise InvalidInput("timeout_s", f"must not be negative, got {timeout_s}")
        self._check_open()
        with _broker_errors("poll"):
            _finish_join(self._consumer, self._join_timeout_ms)
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_messages)
        for tp, records in batches.items():
            if records:
                key = (tp.topic, tp.partition)
                self._handed[key] = max(self._handed.get(key, 0), records[-1].offset + 1)
        return [
            Message(
                topic=r.topic,
                key=(r.key or b"").decode("utf-8"),
                value=r.value or b"",
                partition=r.partition,
                offset=r.offset,
                headers=tuple((name, value or b"") for name, value in (r.headers or ())),
            )
            for records in batches.values()
            for r in records
        ]

    def commit(self, offsets: Offsets | None = None) -> None:
        """Commit, for each assigned partition, the position after the last record ``poll`` handed out
        (with ``offsets``, those positions, of the partitions still assigned).

        When the group is rebalancing, or rebalanced since that ``poll``, Kafka refuses the commit (a
        stale generation): nothing is committed and nothing raised, as with partitions lost to a
        rebalance on any bus. The messages are handed out again by the partitions' owners after the
        rebalance (this member or another), and their output is idempotent. Raising here stopped any
        member that committed while another joined or left the group, so one member's crash or a
        scale-out could stop the others.
        """
        self._check_open()
        with _broker_errors("commit"):
            if offsets is None:
                self._commit(None)
                return
            check_offsets(offsets, self._handed)
            owned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
            chosen = {tp: offset for tp, offset in offsets.items() if tp in owned}
            if lost := offsets.keys() - chosen.keys():
                log.warning("kafka commit skips partitions not assigned group=%s lost=%s", self._group, sorted(lost))
            if chosen:
                self._commit({TopicPartition(t, p): OffsetAndMetadata(offset, "", -1)
                              for (t, p), offset in chosen.items()})

    def _commit(self, offsets: dict | None) -> None:
        """The client's commit, where a refusal for a rebalance is a warning (``commit``)."""
        try:
            self._consumer.commit(offsets)  # None: every position polled so far
        except (CommitFailedError, RebalanceInProgressError, IllegalGenerationError, UnknownMemberIdError) as e:
            log.warning("kafka commit refused across a rebalance, its messages will be handed out again "
                        "group=%s error=%s", self._group, type(e).__name__)

    def close(self, commit: bool = False) -> None:
        """Commit first if asked, then leave the group so its partitions move to the other members."""
        if self._closed:
            return
        try:
            if commit:
                self.commit()
        finally:
            self._closed = True
            with _broker_errors("consumer close"):
                self._consumer.close(autocommit=False)

    def lag(self) -> int:
        """Records in the assigned partitions past the group's committed offset (0 before assignment).

        Two broker round trips (three while a partition has no commit): the group's committed offsets
        of all assigned partitions come in one admin request, not one per partition as
        ``KafkaConsumer.committed`` would (serve measures lag every few seconds).
        """
        self._check_open()
        with _broker_errors("lag"):
            partitions = list(self._consumer.assignment())
            if not partitions:
                return 0
            ends = self._consumer.end_offsets(partitions)
            fetched = self._admin.list_group_offsets({self._group: partitions}).get(self._group, {})
            committed = {tp: meta.offset for tp, meta in fetched.items() if meta.offset >= 0}
            never = [tp for tp in partitions if tp not in committed]
            starts = self._consumer.beginning_offsets(never) if never else {}
            return sum(ends[tp] - (starts[tp] if tp in starts else committed[tp]) for tp in partitions)

    def assignment(self) -> frozenset[tuple[str, int]]:
        """The ``(topic, partition)`` pairs this member owns now; empty until ``poll`` has joined the group."""
        return frozenset((tp.topic, tp.partition) for tp in self._consumer.assignment())


class KafkaStageProducer(Producer):
    """One stage's ``Producer``: a ``KafkaProducer`` of its own (its own connections, buffers and IO
    thread), so its ``flush`` waits for, and reports, exactly the messages sent through it.

    Idempotent (``acks=all``, ``enable_idempotence``): a message is on every in-sync replica once
    ``flush`` returns, and a send the broker refused is raised by that ``flush`` as ``BusError``.
    kafka-python's idempotent producer treats some refusals (a record too large) as fatal and fails
    every later send, so a flush that raises also replaces the client with a fresh one: the producer
    stays usable, as the ``Producer`` contract says. Calls serialize on a lock; a flush holds it, so
    it covers exactly what was published before it.
    """

    def __init__(self, bus: KafkaBus) -> None:
        self._bus = bus
        self._producer = bus._kafka_producer()
        self._pending: list[FutureRecordMetadata] = []
        self._lock = threading.Lock()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise BusError("this producer is closed")

    def publish(self, topic: str, key: str, value: bytes, headers: Headers = ()) -> None:
        _check_message(key, value)
        if not isinstance(headers, tuple) or not all(
                isinstance(h, tuple) and len(h) == 2 and isinstance(h[0], str) and isinstance(h[1], bytes)
                for h in headers):
            raise InvalidInput("headers", f"must be a tuple of (str, bytes) pairs, got {headers!r:.80}")
        partition = partition_for(key, self._bus.partitions(topic))
        with _broker_errors(f"publish to {topic!r}"), self._lock:
            self._check_open()
            self._pending.append(self._producer.send(
                topic, key=key.encode("utf-8"), value=value, headers=list(headers), partition=partition))

    def publish_many(self, topic: str, messages: Sequence[tuple[str, bytes]]) -> None:
        """Queue the pairs in order; the topic is looked up and the lock taken once for the batch."""
        for key, value in messages:
            _check_message(key, value)
        if not messages:
            return
        partitions = self._bus.partitions(topic)
        send = self._producer.send
        with _broker_errors(f"publish to {topic!r}"), self._lock:
            self._check_open()
            self._pending.extend(
                send(topic, key=key.encode("utf-8"), value=value, partition=partition_for(key, partitions))
                for key, value in messages
            )

    def flush(self) -> None:
        """Wait for every queued message's acknowledgement; ``BusError`` if any send failed or timed out."""
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        timeout_s = self._bus.metadata_timeout_s
        with _broker_errors("flush"):
            self._producer.flush(timeout=timeout_s)
        failed = [f.exception for f in pending if f.failed()]
        if failed:
            self._renew()
            raise BusError(f"kafka publish failed for {len(failed)} of {len(pending)} messages: {failed[0]!r}")
        if any(not f.is_done for f in pending):
            self._renew()
            raise BusError(f"kafka flush timed out after {timeout_s} s")

    def _renew(self) -> None:
        """Drop the client after a failed flush (its unsent messages with it) and start a fresh one."""
        old, self._producer = self._producer, self._bus._kafka_producer()
        try:
            old.close(timeout=0)
        except KafkaError as e:
            log.warning("closing a failed kafka producer: %s", e)

    def close(self) -> None:
        """Flush, then close the producer's connections (also when the flush raised)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._flush()
            finally:
                with _broker_errors("producer close"):
                    self._producer.close(timeout=self._bus.metadata_timeout_s)


def _check_message(key: object, value: object) -> None:
    if not isinstance(key, str):
        raise InvalidInput("key", f"must be a string, got {type(key).__name__}")
    if not isinstance(value, bytes):
        raise InvalidInput("value", f"must be bytes, got {type(value).__name__}")


class KafkaBus(Bus):
    """Topics on an Apache Kafka cluster; each ``producer()`` is a ``KafkaStageProducer`` of its own.

    Topics are never auto-created: publishing to or consuming from a missing one raises ``NotFound``.
    ``session_timeout_ms`` is how long the group waits for a silent (crashed) member before handing
    its partitions to the others (the broker must allow it: ``group.min.session.timeout.ms``, 6000 by
    default); heartbeats go every third of it unless ``heartbeat_interval_ms`` says otherwise.
    ``join_timeout_ms`` bounds how long one ``poll`` waits for a group (re)join to finish.
    """

    def __init__(
        self,
        bootstrap: str,
        client_id: str = "winnow",
        session_timeout_ms: int = 6000,
        heartbeat_interval_ms: int | None = None,
        request_timeout_ms: int = 30000,
        join_timeout_ms: int = 30000,
        linger_ms: int = 5,
        metadata_timeout_s: float = 30.0,
        security: Mapping[str, object] | None = None,
    ) -> None:
        """``security``: kafka-python's connection settings for SSL or SASL (``security_protocol``,
        ``ssl_cafile``, ``sasl_mechanism``, ...), given to every client (see :func:`security_from_url`)."""
        self._security = dict(security or {})
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._session_timeout_ms = session_timeout_ms
        self._heartbeat_interval_ms = heartbeat_interval_ms or max(session_timeout_ms // 3, 100)
        self._request_timeout_ms = request_timeout_ms
        self._join_timeout_ms = join_timeout_ms
        self._linger_ms = linger_ms
        self.metadata_timeout_s = float(metadata_timeout_s)
        self._partitions: dict[str, int] = {}
        self._producers: weakref.WeakSet[KafkaStageProducer] = weakref.WeakSet()
        with _broker_errors(f"connect to {bootstrap}"):
            self._admin = KafkaAdminClient(
                **self._security,
                bootstrap_servers=bootstrap,
                client_id=f"{client_id}-admin",
                request_timeout_ms=request_timeout_ms,
            )

    def producer(self) -> Producer:
        """A new ``KafkaStageProducer`` (idempotent, ``acks=all``) with connections of its own."""
        producer = KafkaStageProducer(self)
        self._producers.add(producer)
        return producer

    def _kafka_producer(self) -> KafkaProducer:
        with _broker_errors(f"connect a producer to {self._bootstrap}"):
            return KafkaProducer(
                **self._security,
                bootstrap_servers=self._bootstrap,
                client_id=self._client_id,
                acks="all",
                enable_idempotence=True,
                linger_ms=self._linger_ms,
                max_block_ms=int(self.metadata_timeout_s * 1000),
                request_timeout_ms=self._request_timeout_ms,
            )

    def create_topic(self, topic: str, partitions: int = 1, compact: bool = False) -> None:
        """Create ``topic`` with the cluster's default replication (compacted as well as time-retained
        with ``compact``); return once its metadata has leaders."""
        check_topic_name(topic)  # the rule the SQLite bus applies too, before any broker round trip
        if partitions < 1:
            raise InvalidInput("partitions", f"must be at least 1, got {partitions}")
        spec: dict = {"num_partitions": partitions}
        if compact:
            spec["configs"] = {"cleanup.policy": "compact,delete"}
        try:
            self._admin.create_topics({topic: spec})
        except TopicAlreadyExistsError:
            log.debug("topic exists topic=%s", topic)
        except (InvalidTopicError, InvalidPartitionsError) as exc:
            raise InvalidInput("topic", f"{topic!r} rejected by the broker: {exc}") from exc
        except KafkaError as exc:
            raise _bus_error(f"create topic {topic!r}", exc) from exc
        with _broker_errors(f"wait for topic {topic!r}"):
            self._admin.wait_for_topics([topic], timeout_ms=int(self.metadata_timeout_s * 1000))

    def erase(self, topic: str, keys: Sequence[str]) -> None:
        """A tombstone (null value) per key, acknowledged by the brokers before this returns."""
        check_topic_name(topic)
        if not keys:
            return
        partitions = self.partitions(topic)
        producer = self._kafka_producer()
        try:
            with _broker_errors(f"erase on {topic!r}"):
                sent = [producer.send(topic, key=key.encode("utf-8"), value=None,
                                      partition=partition_for(key, partitions)) for key in keys]
                producer.flush(timeout=self.metadata_timeout_s)
            failed = [f.exception for f in sent if f.failed() or not f.is_done]
            if failed:
                raise BusError(f"kafka tombstones failed for {len(failed)} of {len(sent)} keys: {failed[0]!r}")
        finally:
            producer.close(timeout=self.metadata_timeout_s)

    def delete_topics(self, topics: Sequence[str]) -> None:
        """Delete ``topics`` (missing ones are ignored); for test teardown and operators."""
        for topic in topics:
            self._partitions.pop(topic, None)
        if not topics:
            return
        try:
            self._admin.delete_topics(list(topics))
        except UnknownTopicOrPartitionError:
            log.debug("topics already gone topics=%s", list(topics))
        except KafkaError as exc:
            raise _bus_error(f"delete topics {list(topics)}", exc) from exc

    def partitions(self, topic: str) -> int:
        """The partition count of ``topic`` (cached after the first lookup); ``NotFound`` if missing."""
        count = self._partitions.get(topic)
        if count is None:
            with _broker_errors(f"describe topic {topic!r}"):
                (described,) = self._admin.describe_topics([topic])
            error = described.get("error_code", 0)
            if error == UnknownTopicOrPartitionError.errno:
                raise NotFound("topic", f"no topic named {topic!r} on {self._bootstrap}")
            if error or not described.get("partitions"):
                raise BusError(f"kafka describe topic {topic!r} failed: {for_code(error).__name__}")
            count = self._partitions[topic] = len(described["partitions"])
        return count

    def consumer(self, topics: Sequence[str], group: str) -> Consumer:
        """A new member of ``group`` subscribed to ``topics`` (which must exist); it joins on first ``poll``."""
        if not topics:
            raise InvalidInput("topics", "at least one topic is needed")
        if not group:
            raise InvalidInput("group", "must not be empty")
        for topic in topics:
            self.partitions(topic)
        with _broker_errors(f"join group {group!r}"):
            consumer = KafkaConsumer(
                *topics,
                **self._security,
                bootstrap_servers=self._bootstrap,
                client_id=self._client_id,
                group_id=group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                allow_auto_create_topics=False,
                session_timeout_ms=self._session_timeout_ms,
                heartbeat_interval_ms=self._heartbeat_interval_ms,
                request_timeout_ms=self._request_timeout_ms,
            )
            # Load the topics' metadata before the first join: kafka-python 3.0 can otherwise compute
            # the group's assignment from empty metadata and keep that empty assignment.
            for topic in topics:
                consumer.partitions_for_topic(topic)
        return KafkaConsumerMember(consumer, group, self._join_timeout_ms, self._admin)

    def close(self) -> None:
        """Close every producer made here (flushing it; the first failure is raised at the end), then
        the admin connection."""
        failure = close_producers(self._producers)
        with _broker_errors("close"):
            self._admin.close()
        if failure is not None:
            raise failure
