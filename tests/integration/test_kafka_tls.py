"""Kafka over TLS and SASL_SSL, through the bus URL's options, on a broker this test starts with a
certificate it makes: without the CA (or with a wrong password) the bus cannot connect; with them,
topics, publishing and consuming work as on PLAINTEXT."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from winnow.core.domain.errors import BusError, InvalidInput
from winnow.core.testing.certs import TestCa
from winnow.services.kafka_bus import SASL_PASSWORD_ENV, security_from_url
from winnow.services.serve import open_bus

REPO = Path(__file__).resolve().parents[2]
PASSWORD = f"pw-{uuid.uuid4().hex[:12]}"

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[tuple[Path, int, int]]:
    """(the CA's PEM file, the SSL port, the SASL_SSL port) of a broker with those listeners.
    ``kafka_bootstrap`` first: its failure (no java, no mvn) says why, and the jars are in ~/.m2."""
    folder = tmp_path_factory.mktemp("kafka-tls")
    ca = TestCa()
    server = ca.issue("kafka broker", server=True)
    certs = folder / "certs"
    certs.mkdir()
    (certs / "server.pem").write_bytes(server.key + server.cert)
    (certs / "ca.pem").write_bytes(ca.pem)
    env = {**os.environ, "KAFKA_SSL_DIR": str(certs), "KAFKA_SASL_PASSWORD": PASSWORD}
    broker_dir = folder / "broker"
    script = REPO / "deploy" / "kafka-local.sh"
    started = subprocess.run(["bash", str(script), "start", str(broker_dir)], env=env, capture_output=True,
                             text=True, timeout=600)
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        config = (broker_dir / "server.properties").read_text()
        ssl = int(re.search(r",SSL://127\.0\.0\.1:(\d+)", config).group(1))  # type: ignore[union-attr]
        sasl = int(re.search(r"SASL_SSL://127\.0\.0\.1:(\d+)", config).group(1))  # type: ignore[union-attr]
        yield certs / "ca.pem", ssl, sasl
    finally:
        subprocess.run(["bash", str(script), "stop", str(broker_dir)], capture_output=True, timeout=120)


def _round_trip(url: str) -> list[bytes]:
    bus = open_bus(url)
    try:
        name = f"tls-{uuid.uuid4().hex[:8]}"
        bus.create_topic(name, 2)
        with bus.producer() as producer:
            producer.publish_many(name, [("k1", b"over tls"), ("k2", b"encrypted")])
        with bus.consumer([name], f"g-{name}") as consumer:
            got: list[bytes] = []
            for _ in range(40):
                got += [m.value for m in consumer.poll(10, timeout_s=0.5)]
                if len(got) == 2:
                    break
        return sorted(got)
    finally:
        bus.close()


def test_ssl_needs_the_ca_and_then_the_bus_works(tls_broker: tuple[Path, int, int],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ca, ssl, _ = tls_broker
    assert _round_trip(f"kafka://127.0.0.1:{ssl}?security_protocol=SSL&ssl_cafile={ca}") == [b"encrypted",
                                                                                             b"over tls"]
    with pytest.raises(BusError):  # the system's roots do not know this CA
        open_bus(f"kafka://127.0.0.1:{ssl}?security_protocol=SSL")


def test_sasl_ssl_needs_the_password(tls_broker: tuple[Path, int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    ca, _, sasl = tls_broker
    url = (f"kafka://127.0.0.1:{sasl}?security_protocol=SASL_SSL&ssl_cafile={ca}&sasl_mechanism=PLAIN"
           "&sasl_plain_username=winnow")
    monkeypatch.setenv(SASL_PASSWORD_ENV, PASSWORD)
    assert _round_trip(url) == [b"encrypted", b"over tls"]
    monkeypatch.setenv(SASL_PASSWORD_ENV, "wrong")
    with pytest.raises(BusError):
        open_bus(url)
    monkeypatch.delenv(SASL_PASSWORD_ENV)
    with pytest.raises(InvalidInput, match=SASL_PASSWORD_ENV):
        security_from_url(url)
