"""``create_server``: a gRPC server with the chosen winnow.v1 services, health and reflection, each
registered through ``servicers.handlers`` (bad bytes and errors become statuses in one place)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2
from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.settings import LoopConfig
from winnow.core.ports.bus import Bus
from winnow.core.ports.store import Store
from winnow.services.api.auth import Authenticator
from winnow.services.api.operations import WinnowApi
from winnow.services.api.servicers import SERVICES, handlers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate chain and key (PEM), and the CA whose client certificates it
    requires (mutual TLS) when given."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None

    @staticmethod
    def load(cert: Path | None, key: Path | None, client_ca: Path | None = None) -> "ServerTls | None":
        """From files (None when no certificate is given); InvalidInput naming the flag for a
        missing pair or an unreadable file."""
        if cert is None and key is None:
            if client_ca is not None:
                raise InvalidInput("--tls-client-ca", "needs --tls-cert and --tls-key: mutual TLS is TLS first")
            return None
        if cert is None or key is None:
            raise InvalidInput("--tls-key" if key is None else "--tls-cert", "--tls-cert and --tls-key go together")

        def read(path: Path, flag: str) -> bytes:
            try:
                data = Path(path).read_bytes()
            except OSError as e:
                raise InvalidInput(flag, f"cannot read {str(path)[:200]!r}: {e.strerror}") from None
            if b"-----BEGIN " not in data:
                raise InvalidInput(flag, f"{str(path)[:200]!r} is not a PEM file")
            return data

        return ServerTls(read(cert, "--tls-cert"), read(key, "--tls-key"),
                         None if client_ca is None else read(client_ca, "--tls-client-ca"))

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.client_ca,
                                           require_client_auth=self.client_ca is not None)


def create_server(bus: Bus, store: Store, auth: Authenticator, addr: str = "127.0.0.1:0",
                  services: Sequence[str] = tuple(SERVICES), config: LoopConfig | None = None,
                  max_workers: int = 8, tls: ServerTls | None = None,
                  api: WinnowApi | None = None) -> tuple[grpc.Server, int]:
    """A server, not started yet, with the chosen winnow.v1 ``services`` (keys of ``SERVICES``; none
    for a worker process), the health service (SERVING for each) and server reflection.

    ``tls`` serves TLS (mutual TLS with a client CA) instead of plaintext. ``auth`` names each
    call's caller: ``Authenticator(store)`` checks bearer tokens (or client certificates), and only
    ``Authenticator.insecure()`` (said on purpose) trusts everyone. Health and reflection answer
    without a credential (probes and tools; they reveal no project).

    ``config`` is the loop settings the workers run with (lease time, partitions of new topics),
    so the API and the workers agree. Returns the server and the port it bound (``addr`` may ask
    for port 0). The caller starts it and stops it with a grace period, in a ``finally``. ``api``:
    the operations to serve (one per process, shared with the labeling page), made here when None.
    """
    unknown = [name for name in services if name not in SERVICES]
    if unknown:
        raise InvalidInput("services", f"{unknown} given; expected some of {list(SERVICES)}")
    api = api or WinnowApi(bus, store, config or LoopConfig())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    health_servicer = health.HealthServicer()
    server.add_generic_rpc_handlers((handlers(health_servicer, health_pb2.DESCRIPTOR.services_by_name["Health"]),))
    names = []
    for name in services:
        servicer_cls, descriptor = SERVICES[name]
        server.add_generic_rpc_handlers((handlers(servicer_cls(api, auth), descriptor),))
        health_servicer.set(descriptor.full_name, health_pb2.HealthCheckResponse.SERVING)
        names.append(descriptor.full_name)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection_servicer = reflection.ReflectionServicer([*names, health.SERVICE_NAME, reflection.SERVICE_NAME])
    server.add_generic_rpc_handlers(
        (handlers(reflection_servicer, reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]),))
    port = server.add_insecure_port(addr) if tls is None else server.add_secure_port(addr, tls.credentials())
    log.info("grpc server addr=%s port=%d services=%s credentials=%s transport=%s", addr, port, ",".join(names),
             "required" if auth.secure else "none (insecure)",
             "plaintext" if tls is None else "mutual TLS" if tls.client_ca else "TLS")
    return server, port
