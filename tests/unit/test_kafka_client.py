"""The one kafka-python internal the Kafka adapter uses (``_finish_join``): this fails when the client
changes under it, before a broker ever sees the change."""

from __future__ import annotations

import inspect
import re

from kafka import KafkaConsumer
from kafka.coordinator.consumer import ConsumerCoordinator
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
