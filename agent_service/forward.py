"""Commands for a session another replica owns go to that replica's own RPCs.

The lease names the owner's gRPC address (lease.Holder). A send travels as a
one-command Chat stream (send, then half-close: the owner replies and ends the
stream), a cancel as the unary Cancel. Each forwarded call carries the
`agent-relay-forwarded` metadata: a replica that gets a forwarded command for a
session it does not own answers UNAVAILABLE (retryable) instead of forwarding
again, so a command never loops between replicas while ownership moves.

The caller's bearer token (the `authorization` metadata of the RPC that
brought the command, kept in INCOMING_CREDENTIALS) goes along, so the owner
authorizes the same caller; over TLS the channel presents this replica's own
certificate (`channel_credentials`).

Every call is bounded by `timeout_s`; an owner that does not answer (killed,
paused) is UNAVAILABLE, and its answer's own error is passed on as it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextvars import ContextVar

import grpc
from grpc_status import rpc_status

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from agent_service.errors import ServiceError, Unavailable, error_from_status
from agent_service.lease import Holder
from agent_service.runs import BusyPolicy

FORWARDED = "agent-relay-forwarded"  # metadata key; its value is the forwarding replica's id
PASSED_ON = ("authorization",)  # metadata of the incoming RPC that forwarded calls carry
INCOMING_CREDENTIALS: ContextVar[tuple[tuple[str, str], ...]] = ContextVar(
    "incoming_credentials", default=()
)
POLICIES = {
    None: pb.BUSY_POLICY_UNSPECIFIED,
    BusyPolicy.QUEUE: pb.BUSY_POLICY_QUEUE,
    BusyPolicy.REJECT: pb.BUSY_POLICY_REJECT,
    BusyPolicy.INTERRUPT: pb.BUSY_POLICY_INTERRUPT,
}


class Forwarder:
    """gRPC channels to the other replicas, one per address, opened on first use."""

    def __init__(
        self,
        replica_id: str,
        *,
        timeout_s: float,
        channel_credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.replica_id = replica_id
        self.timeout_s = timeout_s
        self.channel_credentials = channel_credentials
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, holder: Holder) -> agent_pb2_grpc.AgentServiceStub:
        if not holder.address:
            raise Unavailable(
                f"replica {holder.replica_id} owns the session but advertises no address",
                reason="OWNER_UNREACHABLE",
            )
        channel = self._channels.get(holder.address)
        if channel is None:
            if self.channel_credentials is None:
                channel = grpc.aio.insecure_channel(holder.address)
            else:
                channel = grpc.aio.secure_channel(holder.address, self.channel_credentials)
            self._channels[holder.address] = channel
        return agent_pb2_grpc.AgentServiceStub(channel)

    @property
    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return ((FORWARDED, self.replica_id), *INCOMING_CREDENTIALS.get())

    async def send(
        self,
        holder: Holder,
        send: pb.SendMessage,
    ) -> pb.MessageAccepted:
        """Send a message through the owner; its acceptance (or its refusal, raised)."""
        stub = self._stub(holder)

        async def one() -> AsyncIterator[pb.ChatRequest]:
            yield pb.ChatRequest(request_id="forwarded", send=send)

        try:
            async with asyncio.timeout(self.timeout_s):
                call = stub.Chat(one(), metadata=self._metadata, timeout=self.timeout_s)
                async for response in call:
                    for reply in response.replies:
                        if reply.request_id != "forwarded":
                            continue
                        call.cancel()
                        if reply.status.code != 0:
                            raise error_from_status(reply.status)
                        return reply.accepted
        except grpc.aio.AioRpcError as exc:
            raise _unreachable(holder, exc) from exc
        except TimeoutError as exc:
            raise _timed_out(holder, self.timeout_s) from exc
        raise Unavailable(
            f"replica {holder.replica_id} ended the stream without a reply", reason="OWNER_GONE"
        )

    async def cancel(self, holder: Holder, request: pb.CancelRequest) -> bool:
        """Cancel a run or a tool call on the owner; whether something was cancelled."""
        try:
            response = await self._stub(holder).Cancel(
                request, metadata=self._metadata, timeout=self.timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise _unreachable(holder, exc) from exc
        return bool(response.cancelled)

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close(None)


def remember_credentials(metadata: object) -> None:
    """Keep the incoming RPC's credentials for the commands it forwards (call it in the
    RPC's own task, before starting the tasks that carry its commands out)."""
    pairs = tuple(
        (str(key), str(value))
        for key, value in (metadata or ())  # type: ignore[attr-defined]
        if key in PASSED_ON
    )
    INCOMING_CREDENTIALS.set(pairs)


def _unreachable(holder: Holder, error: grpc.aio.AioRpcError) -> ServiceError:
    """The owner's refusal as it gave it, or UNAVAILABLE when it did not answer."""
    if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        if status is not None:
            return error_from_status(status)
    return Unavailable(
        f"the session's owner (replica {holder.replica_id} at {holder.address}) does not "
        f"answer: {error.details()}; retry",
        reason="OWNER_UNAVAILABLE",
    )


def _timed_out(holder: Holder, timeout_s: float) -> Unavailable:
    return Unavailable(
        f"the session's owner (replica {holder.replica_id}) did not answer in {timeout_s:g} s",
        reason="OWNER_UNAVAILABLE",
    )
