"""The edge's connection to the agent service: a few gRPC channels, one Chat stream each.

Rooms are multiplexed over the slots (a session always maps to the same slot),
so one gRPC message carries events of many sessions and an idle socket costs
no stream. Each slot keeps its stream open: it checks the service's health,
opens `Chat`, calls `on_up` (the hub resubscribes the slot's rooms at their
last seq), reads until the stream breaks, calls `on_down` (the hub tells the
sockets), and tries again after a full-jitter backoff.

Commands are written on the slot's stream and matched to their CommandReply by
request_id. A command on a slot that is down fails at once with a retryable
`upstream_unavailable`, never waits for the service to come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from relay_shared.grpc_telemetry import client_interceptors
from ws_edge.backoff import backoff_s
from ws_edge.config import EdgeSettings
from ws_edge.errors import EdgeError, ErrorCode, error_from_grpc

log = logging.getLogger(__name__)

OnUp = Callable[["UpstreamSlot"], None]
OnDown = Callable[["UpstreamSlot"], None]
OnResponse = Callable[["UpstreamSlot", pb.ChatResponse], None]

_CHANNEL_OPTIONS = [
    # Reconnect quickly once the service is back; grpc's default backoff grows to 2 minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


def unavailable(detail: str = "the agent service does not answer") -> EdgeError:
    return EdgeError(ErrorCode.UPSTREAM_UNAVAILABLE, detail, 1000)


def make_channel(settings: EdgeSettings) -> grpc.aio.Channel:
    """A channel to the agent service: TLS (and mutual TLS) when configured."""
    options: list[tuple[str, Any]] = list(_CHANNEL_OPTIONS)
    # unary calls (CreateSession, ...) get a client span and carry its traceparent
    interceptors = client_interceptors(settings.upstream)
    if settings.upstream_tls_ca_file is None:
        return grpc.aio.insecure_channel(
            settings.upstream, options=options, interceptors=interceptors
        )
    root = settings.upstream_tls_ca_file.read_bytes()
    key = cert = None
    if settings.upstream_tls_cert_file is not None and settings.upstream_tls_key_file is not None:
        cert = settings.upstream_tls_cert_file.read_bytes()
        key = settings.upstream_tls_key_file.read_bytes()
    creds = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=cert
    )
    if settings.upstream_tls_server_name:
        options.append(("grpc.ssl_target_name_override", settings.upstream_tls_server_name))
    return grpc.aio.secure_channel(
        settings.upstream, creds, options=options, interceptors=interceptors
    )


class UpstreamSlot:
    """One channel and its Chat stream, kept open; see the module docstring."""

    def __init__(
        self,
        index: int,
        settings: EdgeSettings,
        *,
        on_up: OnUp,
        on_down: OnDown,
        on_response: OnResponse,
    ) -> None:
        self.index = index
        self.channel = make_channel(settings)
        self.stub = agent_pb2_grpc.AgentServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self._settings = settings
        self._on_up, self._on_down, self._on_response = on_up, on_down, on_response
        self._call: Any = None
        self._write_lock = asyncio.Lock()
        self._pending: dict[str, asyncio.Future[pb.CommandReply]] = {}
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self.up = False
        self.became_up = asyncio.Event()  # set while the stream is open
        self.responses = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"upstream-slot-{self.index}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._mark_down()
        await self.channel.close(grace=None)

    async def healthy(self, timeout_s: float) -> bool:
        """Whether the service answers its health check as SERVING."""
        try:
            reply = await self._health.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def _run(self) -> None:
        attempt = 0
        settings = self._settings
        while True:
            if await self.healthy(timeout_s=max(1.0, settings.upstream_backoff_max_s)):
                attempt = 0
                try:
                    await self._follow()
                except Exception:
                    # A fault while handling what the stream carried: the stream was closed
                    # (rooms told, pending commands failed); open a fresh one rather than
                    # leave the slot dead.
                    log.exception("upstream slot %d: failed while following", self.index)
            delay = backoff_s(
                attempt,
                base_s=settings.upstream_backoff_base_s,
                max_s=settings.upstream_backoff_max_s,
            )
            attempt += 1
            await asyncio.sleep(delay)

    async def _follow(self) -> None:
        """Open the stream, announce it, read it until it breaks."""
        call = self.stub.Chat()
        self._call = call
        self.up = True
        self.became_up.set()
        log.info("upstream slot %d: Chat stream open", self.index)
        try:
            self._on_up(self)
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:  # type: ignore[attr-defined]
                    log.warning("upstream slot %d: the service ended the stream", self.index)
                    return
                self.responses += 1
                self._dispatch(response)
        except grpc.aio.AioRpcError as exc:
            log.warning("upstream slot %d: stream broke: %s", self.index, exc.code())
        finally:
            call.cancel()
            self._mark_down()

    def _dispatch(self, response: pb.ChatResponse) -> None:
        for reply in response.replies:
            future = self._pending.pop(reply.request_id, None)
            if future is not None and not future.done():
                future.set_result(reply)
        if response.events:
            self._on_response(self, response)

    def _mark_down(self) -> None:
        was_up, self.up, self._call = self.up, False, None
        self.became_up.clear()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(unavailable())
        if was_up:
            self._on_down(self)

    async def command(self, request: pb.ChatRequest) -> pb.CommandReply:
        """Write one command and wait for its reply. Raises EdgeError (a failed status included)."""
        call = self._call
        if not self.up or call is None:
            raise unavailable()
        request_id = f"e{next(self._ids)}"
        request.request_id = request_id
        future: asyncio.Future[pb.CommandReply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            async with self._write_lock:
                await call.write(request)
            reply = await asyncio.wait_for(future, self._settings.command_timeout_s)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, ConnectionError) as exc:
            raise unavailable(f"the agent service stream failed: {exc}") from None
        except TimeoutError:
            raise unavailable("the agent service did not reply in time") from None
        finally:
            self._pending.pop(request_id, None)
        if reply.status.code != 0:
            raise error_from_grpc(reply.status.code, reply.status.message)
        return reply


class UpstreamPool:
    """The slots, and which one carries a session."""

    def __init__(
        self, settings: EdgeSettings, *, on_up: OnUp, on_down: OnDown, on_response: OnResponse
    ) -> None:
        self.slots = [
            UpstreamSlot(i, settings, on_up=on_up, on_down=on_down, on_response=on_response)
            for i in range(settings.upstream_channels)
        ]
        self._rr = itertools.cycle(self.slots)

    def start(self) -> None:
        for slot in self.slots:
            slot.start()

    async def stop(self) -> None:
        await asyncio.gather(*(slot.stop() for slot in self.slots))

    async def wait_up(self, timeout_s: float) -> bool:
        """Wait (bounded) until every slot's stream is open; False if some are not."""
        try:
            await asyncio.wait_for(
                asyncio.gather(*(slot.became_up.wait() for slot in self.slots)), timeout_s
            )
        except TimeoutError:
            return False
        return True

    def slot_for(self, session_id: str) -> UpstreamSlot:
        return self.slots[zlib.crc32(session_id.encode()) % len(self.slots)]

    def any_stub(self) -> agent_pb2_grpc.AgentServiceStub:
        """A stub for unary calls, spread over the channels."""
        return next(self._rr).stub

    async def ready(self, timeout_s: float = 1.0) -> bool:
        return await self.slots[0].healthy(timeout_s)


async def unary(call: Awaitable[Any]) -> Any:
    """Await a unary RPC; a failure becomes an EdgeError (see errors.error_from_grpc)."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        raise error_from_grpc(exc.code(), exc.details() or "") from None
