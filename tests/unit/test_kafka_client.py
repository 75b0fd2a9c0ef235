"""The one kafka-python internal the Kafka adapter uses (``_finish_join``): this fails when the client
changes under it, before a broker ever sees the change."""

from __future__ import annotations

import inspect
import re

import pytest
from kafka import KafkaConsumer
from kafka.coordinator.consumer import ConsumerCoordinator
from kafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    NodeNotReadyError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from winnow.core.domain.errors import BusError, InvalidInput
from winnow.services import kafka_bus


def test_the_coordinator_the_adapter_drives_is_where_it_expects() -> None:
    # api_version given: the client neither connects nor probes the (unreachable) bootstrap server
    consumer = KafkaConsumer(bootstrap_servers="127.0.0.1:9", group_id="g", api_version=(3, 0),
                             enable_auto_commit=False)
    try:
        coordinator = consumer._coordinator
        assert isinstance(coordinator, ConsumerCoordinator)
        assert list(inspect.signature(coordinator.poll).parameters) == ["timeout_ms"]
    finally:
        consumer.close(autocommit=False, timeout_ms=100)


def test_the_adapter_touches_no_other_private_client_attribute() -> None:
    """No ``consumer._x``, ``producer._x`` or ``admin._x`` on a kafka-python object outside ``_finish_join``."""
    code = inspect.getsource(kafka_bus).replace(inspect.getsource(kafka_bus._finish_join), "")
    assert re.findall(r"(?:consumer|producer|admin)\._[a-z]\w*\.", code) == []
    assert re.findall(r"_(?:consumer|producer|admin)\._[a-z]\w*", code) == []


@pytest.mark.parametrize(("url", "message"), [
    ("kafka://h:9092?security_protocol=TLS", "security_protocol must be one of"),
    ("kafka://h:9092?security_protocol=SSL&ssl_cafile=/no/such.pem", "ssl_cafile: no such file"),
    ("kafka://h:9092?sasl_mechanism=PLAIN&sasl_plain_username=u", "SASL options need security_protocol"),
    ("kafka://h:9092?security_protocol=SASL_SSL&sasl_mechanism=PLAIN", "needs sasl_mechanism and sasl_plain_username"),
    ("kafka://h:9092?security_protocol=SASL_SSL&sasl_mechanism=GSSAPI&sasl_plain_username=u", "sasl_mechanism"),
    ("kafka://h:9092?sasl_plain_password=hunter2", "unknown option 'sasl_plain_password'"),
    ("kafka://h:9092?security_protocol=SSL&security_protocol=SSL", "given twice"),
    ("kafka://h:9092/path", "must look like kafka://HOST:PORT"),
])
def test_a_bad_bus_url_option_is_named_and_never_echoes_a_value(url: str, message: str) -> None:
    from winnow.services.kafka_bus import security_from_url

    with pytest.raises(InvalidInput) as refused:
        security_from_url(url, environ={})
    assert refused.value.field == "--bus" and message in str(refused.value) and "hunter2" not in str(refused.value)


def test_bus_url_options_become_client_settings(tmp_path) -> None:
    from winnow.services.kafka_bus import SASL_PASSWORD_ENV, security_from_url

    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert security_from_url("kafka://a:1,b:2") == ("a:1,b:2", {})
    url = f"kafka://a:1?security_protocol=SASL_SSL&ssl_cafile={ca}&sasl_mechanism=SCRAM-SHA-512&sasl_plain_username=w"
    assert security_from_url(url, environ={SASL_PASSWORD_ENV: "s3cret"}) == ("a:1", {
        "security_protocol": "SASL_SSL", "ssl_cafile": str(ca), "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "w", "sasl_plain_password": "s3cret"})


@pytest.mark.parametrize("refusal", [RebalanceInProgressError, CommitFailedError, IllegalGenerationError,
                                     UnknownMemberIdError])
def test_a_commit_the_broker_refuses_for_a_rebalance_is_a_warning_not_an_error(refusal, caplog) -> None:
    """The exceptions kafka-python raises when a commit comes from a stale generation (the group is
    rebalancing, or rebalanced since the poll): the member commits nothing and goes on, as on the
    SQLite bus; the owners after the rebalance hand those messages out again. Any other broker error
    still raises ``BusError``."""

    class Refusing(KafkaConsumer):
        error: type[Exception] = refusal

        def commit(self, offsets=None):  # the client's call that met the broker's answer
            raise self.error()

    consumer = Refusing(bootstrap_servers="127.0.0.1:9", group_id="g", api_version=(3, 0), enable_auto_commit=False)
    try:
        member = kafka_bus.KafkaConsumerMember(consumer, "g", 100, admin=None)
        with caplog.at_level("WARNING", logger=kafka_bus.log.name):
            member.commit()
        assert "refused across a rebalance" in caplog.text and refusal.__name__ in caplog.text
        Refusing.error = NodeNotReadyError
        with pytest.raises(BusError, match="kafka commit failed: NodeNotReadyError"):
            member.commit()
    finally:
        consumer.close(autocommit=False, timeout_ms=100)
