"""``create_server``: a gRPC server with the chosen winnow.v1 services, health and reflection, each
registered through ``servicers.handlers`` (bad bytes and errors become statuses in one place)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2
from winnow.core.domain.errors import InvalidInput
from winnow.core.domain.settings import LoopConfig
from winnow.core.ports.bus import Bus
from winnow.core.ports.store import Store
from winnow.services.api.operations import WinnowApi
from winnow.services.api.servicers import SERVICES, handlers

log = logging.getLogger(__name__)


def create_server(bus: Bus, store: Store, addr: str = "127.0.0.1:0", services: Sequence[str] = tuple(SERVICES),
                  config: LoopConfig | None = None, max_workers: int = 8) -> tuple[grpc.Server, int]:
    """A server, not started yet, with the chosen winnow.v1 ``services`` (keys of ``SERVICES``; none
    for a worker process), the health service (SERVING for each) and server reflection.

    ``config`` is the loop settings the workers run with (lease time, partitions of new topics),
    so the API and the workers agree. Returns the server and the port it bound (``addr`` may ask
    for port 0). The caller starts it and stops it with a grace period, in a ``finally``.
    """
    unknown = [name for name in services if name not in SERVICES]
    if unknown:
        raise InvalidInput("services", f"{unknown} given; expected some of {list(SERVICES)}")
    api = WinnowApi(bus, store, config or LoopConfig())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    health_servicer = health.HealthServicer()
    server.add_generic_rpc_handlers((handlers(health_servicer, health_pb2.DESCRIPTOR.services_by_name["Health"]),))
    names = []
    for name in services:
        servicer_cls, descriptor = SERVICES[name]
        server.add_generic_rpc_handlers((handlers(servicer_cls(api), descriptor),))
        health_servicer.set(descriptor.full_name, health_pb2.HealthCheckResponse.SERVING)
        names.append(descriptor.full_name)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection_servicer = reflection.ReflectionServicer([*names, health.SERVICE_NAME, reflection.SERVICE_NAME])
    server.add_generic_rpc_handlers(
        (handlers(reflection_servicer, reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]),))
    port = server.add_insecure_port(addr)
    log.info("grpc server addr=%s port=%d services=%s", addr, port, ",".join(names))
    return server, port
