"""The standard services that stock gRPC tools use: health (with List) and reflection.

Two gaps of the grpcio packages (1.85, the newest) are closed here:

- grpc_health's asyncio `HealthServicer` does not implement `Health/List`: the
  generated base answers UNIMPLEMENTED and logs a NotImplementedError traceback.
  `ListingHealthServicer` answers it from the statuses it was told with `set`.
- grpc_reflection answers `FileContainingSymbol` from the protobuf descriptor
  pool, whose lookup does not know method names, so `grpcurl describe
  agent_relay.v1.AgentService.Chat` fails with "Symbol not found" (grpc/grpc
  issue 34743, open). `MethodAwarePool` is handed to grpc_reflection as its pool
  (its public `pool=` argument) and resolves `Service.Method` to the service's
  file. grpcio-reflection serves only the v1alpha reflection service; grpcurl,
  buf curl and grpcui use it when v1 is absent.
"""

from __future__ import annotations

from typing import Any, cast

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

# grpc_health's asyncio servicer (untyped)
_AioHealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]

# `List` may refuse with RESOURCE_EXHAUSTED past a limit (health.proto); we have
# a handful of services, the bound only keeps a runaway registration from
# producing an unbounded reply.
MAX_LISTED_SERVICES = 100


class ListingHealthServicer(_AioHealthServicer):  # type: ignore[misc]
    """grpc_health's asyncio servicer plus `List`: a snapshot of every status set.

    Only the servicer's public methods (`set`, `enter_graceful_shutdown`) feed
    the snapshot, so it does not depend on the parent's internals.
    """

    def __init__(self) -> None:
        super().__init__()
        # the parent starts with the server as a whole ("") SERVING
        self._listed: dict[str, int] = {"": health_pb2.HealthCheckResponse.SERVING}
        self._frozen = False

    async def set(self, service: str, status: int) -> None:
        await super().set(service, status)
        if not self._frozen:  # after graceful shutdown the parent ignores set()
            self._listed[service] = status

    async def enter_graceful_shutdown(self) -> None:
        await super().enter_graceful_shutdown()
        self._frozen = True
        for service in self._listed:
            self._listed[service] = health_pb2.HealthCheckResponse.NOT_SERVING

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthListResponse:
        if len(self._listed) > MAX_LISTED_SERVICES:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"more than {MAX_LISTED_SERVICES} services: use Check for one",
            )
        return health_pb2.HealthListResponse(
            statuses={
                service: health_pb2.HealthCheckResponse(status=status)  # type: ignore[arg-type,unused-ignore]
                for service, status in self._listed.items()
            }
        )


class MethodAwarePool:
    """A descriptor pool view whose FindFileContainingSymbol also knows methods.

    Everything else is the wrapped pool's (the default one unless given)."""

    def __init__(self, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self._pool = pool if pool is not None else descriptor_pool.Default()

    def FindFileContainingSymbol(self, full_name: str) -> Any:
        try:
            return self._pool.FindFileContainingSymbol(full_name)
        except KeyError:
            service_name, _, method = full_name.rpartition(".")
            if not service_name:
                raise
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                raise KeyError(f"Couldn't find symbol {full_name}") from None
            if method not in service.methods_by_name:
                raise KeyError(f"Couldn't find symbol {full_name}") from None
            return service.file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def add_health(server: grpc.aio.Server) -> ListingHealthServicer:
    """Serve grpc.health.v1.Health (Check, Watch, List) on `server`; returns the
    servicer, whose `set` changes what it answers."""
    servicer = ListingHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


def add_reflection(server: grpc.aio.Server, *service_names: str) -> None:
    """Serve v1alpha server reflection for `service_names` (plus health and
    reflection themselves), methods included."""
    names = (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME)
    # grpc_reflection only calls Find* methods on its pool: a duck-typed view fits
    pool = cast(descriptor_pool.DescriptorPool, MethodAwarePool())
    reflection.enable_server_reflection(names, server, pool=pool)
