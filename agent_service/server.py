"""Build and run the gRPC server.

`create_server(settings)` builds everything and binds the port (0: any free one)
without starting to serve, so tests and embedders can pick the port; `serve()`
runs it until SIGTERM or SIGINT and then shuts down gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from agent_relay.v1 import agent_pb2, agent_pb2_grpc
from agent_service.agent import AgentLoop
from agent_service.auth import Authenticator, TokenVerifier, listen_refusal, parse_identities
from agent_service.auth_interceptor import AuthInterceptor
from agent_service.config import ServiceSettings
from agent_service.forward import Forwarder
from agent_service.grpc_tooling import add_health, add_reflection
from agent_service.health import HealthWatch
from agent_service.hub import Hub
from agent_service.lease import Lease, LocalLease
from agent_service.log import EventLog, open_log
from agent_service.providers.base import ModelProvider
from agent_service.providers.demo import DemoModel
from agent_service.recovery import recover
from agent_service.servicer import AgentServicer
from agent_service.store import ConversationStore, open_store
from agent_service.tools.base import ToolRegistry
from agent_service.tools.builtins import build_registry
from relay_shared import event_loop
from relay_shared.agent_telemetry import AgentTelemetry
from relay_shared.gc_tuning import tune_gc
from relay_shared.grpc_telemetry import bind_server_address, server_interceptors
from relay_shared.telemetry import Telemetry, parse_listen, setup_telemetry

log = logging.getLogger(__name__)

SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass
class RunningService:
    """A built server and what it needs at shutdown."""

    server: grpc.aio.Server
    port: int
    hub: Hub
    store: ConversationStore
    event_log: EventLog
    provider: ModelProvider
    health: Any  # grpc_health's aio HealthServicer (untyped)
    lease: Lease
    watch: HealthWatch

    async def stop(self, grace_s: float) -> None:
        """Stop gracefully: not serving, runs finish or are interrupted, the leases are
        released (other replicas take the sessions at once), then close."""
        await self.watch.stop()
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.hub.shutdown(grace_s)
        await self.lease.close()
        await self.server.stop(grace=1.0)
        await self.provider.aclose()
        await self.event_log.close()
        await self.store.close()


def make_provider(settings: ServiceSettings) -> ModelProvider:
    """The model provider the settings name."""
    if settings.model == "openai":
        from agent_service.providers.openai import OpenAIProvider

        provider: ModelProvider = OpenAIProvider.from_settings(settings)
        return provider
    if settings.model == "anthropic":
        from agent_service.providers.anthropic import AnthropicProvider

        provider = AnthropicProvider.from_settings(settings)
        return provider
    return DemoModel(tokens_per_s=settings.demo_tokens_per_s, reply_words=settings.demo_reply_words)


def make_lease(settings: ServiceSettings, store: ConversationStore) -> Lease:
    """Leases in Redis beside a log on Redis (replicas share both), their fencing tokens
    from the store; otherwise this process owns every session."""
    if settings.log_url.startswith(("redis://", "rediss://", "unix://")):
        from agent_service.lease_redis import RedisLease

        return RedisLease(
            settings.log_url,
            ttl_s=settings.lease_ttl_s,
            fences=store,
            replica_id=settings.replica_id,
        )
    return LocalLease(settings.replica_id)


def advertised(settings: ServiceSettings, port: int) -> str:
    """The gRPC address other replicas use for this one."""
    if settings.advertise_address:
        return settings.advertise_address
    host = settings.listen.rsplit(":", 1)[0]
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = socket.gethostname()
    return f"{host}:{port}"


def _credentials(settings: ServiceSettings) -> grpc.ServerCredentials | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def _channel_credentials(settings: ServiceSettings) -> grpc.ChannelCredentials | None:
    """How this replica reaches the others when it serves TLS: with its own certificate
    (their mTLS accepts it) and the client CA bundle as roots (none: the system's)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=settings.tls_key_file.read_bytes(),
        certificate_chain=settings.tls_cert_file.read_bytes(),
    )


class InsecureListen(Exception):
    """The settings would serve everyone, unauthenticated, beyond loopback."""


def authenticator(settings: ServiceSettings) -> Authenticator:
    """The credentials the settings accept (none configured: every call is allowed)."""
    verifier = None
    if settings.auth_jwt_secret or settings.auth_jwt_public_key_file is not None:
        verifier = TokenVerifier.from_files(
            settings.auth_jwt_secret, settings.auth_jwt_public_key_file
        )
    return Authenticator(verifier, parse_identities(settings.mtls_identities))


async def create_server(
    settings: ServiceSettings,
    telemetry: Telemetry | None = None,
    *,
    tools: ToolRegistry | None = None,
) -> RunningService:
    """Open the store and the event log, build the hub, end the runs the last process
    left in flight (recovery.py), bind the port.

    With `telemetry`, calls get rpc.* spans and metrics and runs their spans and
    metrics (see relay_shared.grpc_telemetry and agent_telemetry). `tools` replaces
    the built-in registry (start from build_registry(settings) to keep them).
    Raises InsecureListen for an unauthenticated listener beyond loopback."""
    refusal = listen_refusal(
        settings.listen,
        credentials=settings.credentials_configured,
        insecure_allowed=settings.insecure_allow_unauthenticated,
    )
    if refusal is not None:
        raise InsecureListen(refusal)
    store = open_store(settings.store_url)
    await store.open()
    event_log = open_log(settings.log_url, store_url=settings.store_url, store=store)
    await event_log.open()
    provider = make_provider(settings)
    agent_telemetry = AgentTelemetry(telemetry)
    tools = tools or build_registry(settings)
    run_body = AgentLoop(settings, store, provider, tools, agent_telemetry)
    lease = make_lease(settings, store)
    forwarder = Forwarder(
        lease.replica_id,
        timeout_s=settings.backend_timeout_s,
        channel_credentials=_channel_credentials(settings),
    )
    hub = Hub(settings, store, event_log, tools, run_body, lease, forwarder)
    # auth innermost: the telemetry interceptors see (and count) its refusals
    interceptors = [*(server_interceptors(telemetry) if telemetry is not None else [])]
    interceptors.append(AuthInterceptor(authenticator(settings)))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # grpc sets SO_REUSEPORT by default: a second service on a port in use
            # would share it instead of failing to start
            ("grpc.so_reuseport", 0),
        ],
    )
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(hub, agent_telemetry), server)
    health_servicer = add_health(server)
    add_reflection(server, SERVICE_NAME)
    credentials = _credentials(settings)
    try:
        if credentials is None:
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, credentials)
    except RuntimeError:  # grpc's "Failed to bind": taken (SO_REUSEPORT is off) or not ours
        port = 0
    if port == 0:
        # the store's thread and the hub's tasks would keep the process alive
        await hub.shutdown(0.0)
        await provider.aclose()
        await event_log.close()
        await store.close()
        raise OSError(f"cannot listen on {settings.listen}: the address is in use or not available")
    bind_server_address(interceptors, settings.listen, port)  # server.address/port on rpc spans
    lease.address = advertised(settings, port)
    await lease.open()
    hub.start()
    if lease.shared:  # what a dead replica left goes on in the takeover loop, after its TTL
        await hub.take_over_orphans()
    else:
        await recover(hub)
    watch = HealthWatch(
        health_servicer,
        ("", SERVICE_NAME),
        store=store,
        event_log=event_log,
        writer=hub.writer,
        lease=lease,
    )
    await watch.check()
    watch.start()
    return RunningService(
        server, port, hub, store, event_log, provider, health_servicer, lease, watch
    )


async def serve(
    settings: ServiceSettings,
    telemetry: Telemetry | None = None,
    *,
    tools: ToolRegistry | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain within settings.shutdown_grace_s.

    Prints `agent_service listening on HOST:PORT` first, then (when metrics are
    on) `agent_service metrics on HOST:PORT`: parents read the first line."""
    running = await create_server(settings, telemetry, tools=tools)
    await running.server.start()
    tune_gc(settings.gc_gen0_threshold)
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    host = settings.listen.rsplit(":", 1)[0]
    print(f"agent_service listening on {host}:{running.port}", flush=True)
    metrics_at = parse_listen(settings.metrics_listen)
    if telemetry is not None and metrics_at is not None:
        try:
            metrics_host, metrics_port = telemetry.serve_metrics(*metrics_at)
        except OSError as exc:  # a busy metrics port must not take the agent down
            log.error("no /metrics: cannot listen on %s: %s", settings.metrics_listen, exc)
        else:
            print(f"agent_service metrics on {metrics_host}:{metrics_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("stopping: runs get %.1f s to finish", settings.shutdown_grace_s)
    await running.stop(settings.shutdown_grace_s)


def main(argv: list[str] | None = None) -> int:
    """`python -m agent_service` / `agent-relay serve`."""
    from agent_service.config import load
    from relay_shared.logs import configure_logging

    settings = load(argv)
    configure_logging(settings.log_level)
    refusal = listen_refusal(
        settings.listen,
        credentials=settings.credentials_configured,
        insecure_allowed=settings.insecure_allow_unauthenticated,
    )
    if refusal is not None:
        print(f"agent_service: {refusal}", file=sys.stderr)
        return 2
    if not settings.credentials_configured:
        log.info("no credentials configured: every gRPC caller may do anything")
    telemetry = setup_telemetry("agent_service")
    try:
        with contextlib.suppress(KeyboardInterrupt):
            event_loop.run(serve(settings, telemetry), settings.event_loop)
    except OSError as exc:  # a port in use: one line, not a traceback
        print(f"agent_service: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        telemetry.shutdown()  # flushes the spans still waiting for export
    return 0


if __name__ == "__main__":
    sys.exit(main())
