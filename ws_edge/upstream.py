"""The edge's connections to the agent service replicas: a few gRPC channels, one Chat
stream each.

`--upstream` names one or more targets (`host:port,host:port`); a host name that
resolves to several addresses is several replicas, and names are resolved again
every `upstream_resolve_interval_s`. Each address gets `upstream_channels`
slots. Rooms are multiplexed over the slots, so one gRPC message carries events
of many sessions and an idle socket costs no stream. A session goes to the slot
that ranks first for it among the slots that are up (rendezvous hashing: a
slot that dies moves only its own sessions, each to the next in its ranking).

Each slot keeps its stream open: it checks the service's health,
opens `Chat`, calls `on_up` (the hub resubscribes the slot's rooms at their
last seq), reads until the stream breaks, calls `on_down` (the hub tells the
sockets), and tries again after a full-jitter backoff.

Commands are written on the slot's stream and matched to their CommandReply by
request_id. A command on a slot that is down fails at once with a retryable
`upstream_unavailable`, never waits for the service to come back.

A user message (`send`) carries its acceptance deadline, `accept_window_s` from
when the edge writes it: the service refuses it `overloaded` once that has
passed, before storing anything. The edge waits for the reply `command_timeout_s`,
longer than the deadline, so a sender told `overloaded` was truly refused, and an
edge that hears nothing at all says the truth of that case: the outcome is
unknown, send it again with the same message id (accepted once per session).
Past `upstream_max_in_flight` messages waiting on one replica (its slots share
the bound, so how its sessions hash over them does not matter), a new one is
refused `overloaded` at once, with a retry time from relay_shared.admission.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from relay_shared.admission import Admission
from relay_shared.grpc_telemetry import client_interceptors
from ws_edge.backoff import backoff_s
from ws_edge.config import EdgeSettings, parse_targets
from ws_edge.errors import EdgeError, ErrorCode, error_from_grpc, error_from_status

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


_OUTCOME_UNKNOWN = (
    "; the message may have been accepted: send it again with the same message_id "
    "(a message id is accepted once: an accepted one gets its first ack back)"
)


def _with_token(details: grpc.aio.ClientCallDetails, entry: tuple[str, str]) -> Any:
    metadata = grpc.aio.Metadata(*(details.metadata or ()), entry)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _UnaryBearer(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, entry: tuple[str, str]) -> None:
        self._entry = entry

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._entry), request)


class _StreamBearer(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, entry: tuple[str, str]) -> None:
        self._entry = entry

    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_with_token(details, self._entry), request_iterator)


def bearer_token(token: str) -> list[Any]:
    """Channel interceptors that add `authorization: Bearer <token>` to every call: the edge
    authenticates as itself. (One object per kind of call: a channel files an interceptor
    under the first kind it implements only.)"""
    entry = ("authorization", f"Bearer {token}")
    return [_UnaryBearer(entry), _StreamBearer(entry)]


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def resolve_targets(targets: list[tuple[str, int]]) -> list[tuple[str, str]]:
    """Every (address, TLS name) the targets stand for: an IP stays itself, a name gives
    each address it resolves to (or itself, for gRPC to resolve, when it resolves to none)."""
    found: dict[str, str] = {}
    for host, port in targets:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            infos = []
        addresses = sorted({str(info[4][0]) for info in infos}) or [host]
        for address in addresses:
            found.setdefault(_address(address, port), host)
    return sorted(found.items())


def make_channel(settings: EdgeSettings, address: str, tls_name: str = "") -> grpc.aio.Channel:
    """A channel to one agent replica: TLS (and mutual TLS) when configured, and the
    edge's bearer token on every call when it has one."""
    options: list[tuple[str, Any]] = list(_CHANNEL_OPTIONS)
    # unary calls (CreateSession, ...) get a client span and carry its traceparent
    interceptors = [
        *client_interceptors(address),
        *(bearer_token(settings.upstream_token) if settings.upstream_token else []),
    ]
    if settings.upstream_tls_ca_file is None:
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
    root = settings.upstream_tls_ca_file.read_bytes()
    key = cert = None
    if settings.upstream_tls_cert_file is not None and settings.upstream_tls_key_file is not None:
        cert = settings.upstream_tls_cert_file.read_bytes()
        key = settings.upstream_tls_key_file.read_bytes()
    creds = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=cert
    )
    name = settings.upstream_tls_server_name or (tls_name if tls_name not in address else "")
    if name:
        options.append(("grpc.ssl_target_name_override", name))
    return grpc.aio.secure_channel(address, creds, options=options, interceptors=interceptors)


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
        address: str = "",
        tls_name: str = "",
        sends: Admission | None = None,
    ) -> None:
        self.index = index
        self.address = address or settings.upstream
        self.key = f"{self.address}#{index}"  # what rendezvous hashing ranks
        self.channel = make_channel(settings, self.address, tls_name)
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
        # messages awaiting a reply, on every slot of the replica
        self.sends = sends if sends is not None else Admission(settings.upstream_max_in_flight)

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
            if exc.code() in _REFUSED:
                log.error("upstream slot %d: %s", self.index, _refused_message(exc))
            else:
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
        """Write one command and wait for its reply. Raises EdgeError (a failed status
        included). A `send` is bounded and given its deadline (the module docstring)."""
        call = self._call
        if not self.up or call is None:
            raise unavailable()
        if request.WhichOneof("command") != "send":
            return await self._exchange(call, request, "")
        wait_ms = self.sends.try_enter(time.monotonic())
        if wait_ms is not None:
            raise EdgeError(
                ErrorCode.OVERLOADED,
                f"{self.sends.depth} messages wait for this agent replica at the edge; "
                f"nothing was sent: send it again in {wait_ms} ms",
                wait_ms,
            )
        try:
            window_ms = self._settings.accept_window_s * 1000
            request.send.accept_by_unix_ms = int(time.time() * 1000 + window_ms)
            return await self._exchange(call, request, _OUTCOME_UNKNOWN)
        finally:
            self.sends.leave(time.monotonic())

    async def _exchange(self, call: Any, request: pb.ChatRequest, unknown: str) -> pb.CommandReply:
        """Write, then wait for the reply; `unknown` is what a lost reply means for it."""
        request_id = f"e{next(self._ids)}"
        request.request_id = request_id
        future: asyncio.Future[pb.CommandReply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            async with self._write_lock:
                await call.write(request)
            reply = await asyncio.wait_for(future, self._settings.command_timeout_s)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, ConnectionError) as exc:
            raise unavailable(f"the agent service stream failed: {exc}{unknown}") from None
        except EdgeError as error:  # the stream broke while the command waited
            raise unavailable(f"{error.message}{unknown}") from None
        except TimeoutError:
            timeout_s = self._settings.command_timeout_s
            raise unavailable(
                f"the agent service did not reply within {timeout_s:g} s{unknown}"
            ) from None
        finally:
            self._pending.pop(request_id, None)
        if reply.status.code != 0:
            raise error_from_status(reply.status)
        return reply


class UpstreamPool:
    """The slots of every replica, and which one carries a session (module docstring)."""

    def __init__(
        self, settings: EdgeSettings, *, on_up: OnUp, on_down: OnDown, on_response: OnResponse
    ) -> None:
        self._settings = settings
        self._callbacks = {"on_up": on_up, "on_down": on_down, "on_response": on_response}
        self._targets = parse_targets(settings.upstream)
        self._by_address: dict[str, list[UpstreamSlot]] = {}
        self._indexes = itertools.count()
        self._resolver: asyncio.Task[None] | None = None
        self._started = False
        self._add(resolve_targets(self._targets))
        self._rr = itertools.count()

    @property
    def slots(self) -> list[UpstreamSlot]:
        return [slot for slots in self._by_address.values() for slot in slots]

    @property
    def messages_in_flight(self) -> int:
        """chat:message commands sent to some replica, reply pending."""
        return sum(slots[0].sends.depth for slots in self._by_address.values())

    def _add(self, found: list[tuple[str, str]]) -> None:
        for address, tls_name in found:
            if address in self._by_address:
                continue
            sends = Admission(self._settings.upstream_max_in_flight)
            slots = [
                UpstreamSlot(
                    next(self._indexes),
                    self._settings,
                    address=address,
                    tls_name=tls_name,
                    sends=sends,
                    **self._callbacks,  # type: ignore[arg-type]
                )
                for _ in range(self._settings.upstream_channels)
            ]
            self._by_address[address] = slots
            if self._started:
                for slot in slots:
                    slot.start()
            log.info("upstream: %d channels to %s", len(slots), address)

    def start(self) -> None:
        self._started = True
        for slot in self.slots:
            slot.start()
        if self._settings.upstream_resolve_interval_s > 0:
            self._resolver = asyncio.create_task(self._resolve_again(), name="upstream-resolve")

    async def _resolve_again(self) -> None:
        """Follow DNS: new addresses get slots; addresses gone lose theirs (their rooms move)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._settings.upstream_resolve_interval_s)
            found = await loop.run_in_executor(None, resolve_targets, self._targets)
            self._add(found)
            gone = set(self._by_address) - {address for address, _ in found}
            for address in gone:
                for slot in self._by_address.pop(address):
                    await slot.stop()
                log.info("upstream: %s no longer resolves; its rooms move", address)

    async def stop(self) -> None:
        if self._resolver is not None:
            self._resolver.cancel()
        await asyncio.gather(*(slot.stop() for slot in self.slots))

    async def wait_up(self, timeout_s: float) -> bool:
        """Wait (bounded) until some slot's stream is open; False if none is."""
        waits = [asyncio.ensure_future(slot.became_up.wait()) for slot in self.slots]
        try:
            done, _ = await asyncio.wait(waits, timeout=timeout_s, return_when="FIRST_COMPLETED")
        finally:
            for wait in waits:
                wait.cancel()
        return bool(done)

    def slot_for(self, session_id: str) -> UpstreamSlot:
        """The slot that ranks first for the session among those up (among all when none is)."""
        slots = self.slots
        candidates = [slot for slot in slots if slot.up] or slots
        return max(candidates, key=lambda slot: zlib.crc32(f"{session_id}|{slot.key}".encode()))

    def any_stub(self) -> agent_pb2_grpc.AgentServiceStub:
        """A stub for unary calls about no session, spread over the slots that are up."""
        slots = [slot for slot in self.slots if slot.up] or self.slots
        return slots[next(self._rr) % len(slots)].stub

    async def ready(self, timeout_s: float = 1.0) -> bool:
        """Whether some replica answers its health check as SERVING."""
        by_replica = [slots[0] for slots in self._by_address.values()]
        checks = await asyncio.gather(*(slot.healthy(timeout_s) for slot in by_replica))
        return any(checks)


async def unary(call: Awaitable[Any]) -> Any:
    """Await a unary RPC; a failure becomes an EdgeError (see errors.error_from_grpc)."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            # the edge's own credential, not the user's: the user can do nothing about it
            log.error("%s", _refused_message(exc))
            raise unavailable("the agent service refused the edge's credentials") from None
        raise error_from_grpc(exc.code(), exc.details() or "") from None


_REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def _refused_message(exc: grpc.aio.AioRpcError) -> str:
    return (
        f"the agent service refused the edge ({exc.code().name}: {exc.details()}); "
        "check --upstream-token (it needs the scopes read chat admin)"
    )
