"""Who owns a session: a lease per session, with a fencing token.

The runs of a session execute on one replica at a time: the one that holds the
session's lease. Each grant of a lease gets a token larger than every earlier
one; appends to the log carry it (log.Append.fence), and a log that keeps
leases (Redis) refuses an append whose token is no longer current, so a
replica that lost its lease (paused, cut off) can never write after the one
that took over.

Two implementations:

- `LocalLease`: one process owns every session (the single-machine default:
  SQLite, `make run`). Nothing is shared, the token is 0 (no fencing).
- `RedisLease` (lease_redis.py): `SET key owner PX ttl` with a token from the
  conversation store (a FenceSource: durable, so it keeps growing even when Redis
  loses everything), renewed in the background, released on a clean shutdown.

Calling rule: every method runs on the service's event loop.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Holder:
    """A session's current owner, as the lease says."""

    replica_id: str
    address: str  # the gRPC address other replicas reach it at
    token: int


LostCallback = Callable[[str], None]
"""Called with a session id when this replica finds it no longer holds that lease."""


class FenceSource(Protocol):
    """Where fencing tokens come from (store.ConversationStore is one): durable, so a
    token is never handed out twice, whatever the lease backend forgets."""

    async def next_fence(self, session_id: str) -> int:
        """A token larger than every earlier one of the session; 0: no such session."""
        ...

    async def fences(self, session_ids: Sequence[str]) -> dict[str, int]:
        """The newest token given to each of these sessions."""
        ...


class Lease(Protocol):
    """Session leases of one replica."""

    replica_id: str
    address: str

    @property
    def shared(self) -> bool:
        """False when this process owns every session (nothing to route, nothing to take)."""
        ...

    @property
    def healthy(self) -> bool:
        """False while the lease backend does not answer (reported by health checks)."""
        ...

    @property
    def settled(self) -> bool:
        """False for a TTL after the backend came back from an outage or lost its data:
        a lease it does not show may still be held by a live replica that has not
        renewed (put back) yet, so nobody takes it meanwhile."""
        ...

    def on_lost(self, callback: LostCallback) -> None:
        """Call `callback(session_id)` for each lease this replica finds it lost."""
        ...

    async def open(self) -> None:
        """Connect and start renewing."""
        ...

    async def close(self) -> None:
        """Stop renewing and release every lease held (a clean shutdown)."""
        ...

    async def acquire(self, session_id: str) -> int | None:
        """Take the session's lease when nobody holds it; its token when this replica
        holds it (now or already), None when another replica does."""
        ...

    def held(self, session_id: str) -> int | None:
        """The token of a lease this replica holds and is sure it still holds (renewed
        within the TTL by its own clock); None otherwise. No I/O."""
        ...

    async def holder(self, session_id: str) -> Holder | None:
        """Who holds the session's lease; None when nobody does."""
        ...

    async def release(self, session_id: str) -> None:
        """Give the lease up (when this replica holds it)."""
        ...


def default_replica_id() -> str:
    """hostname-pid: unique among the replicas of one cluster."""
    return f"{socket.gethostname()}-{os.getpid()}"


class LocalLease:
    """This process owns every session, for good: the single-machine lease."""

    def __init__(self, replica_id: str = "", address: str = "") -> None:
        self.replica_id = replica_id or default_replica_id()
        self.address = address

    @property
    def shared(self) -> bool:
        return False

    @property
    def healthy(self) -> bool:
        return True

    @property
    def settled(self) -> bool:
        return True

    def on_lost(self, callback: LostCallback) -> None:
        return None  # never lost

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def acquire(self, session_id: str) -> int | None:
        return 0

    def held(self, session_id: str) -> int | None:
        return 0

    async def holder(self, session_id: str) -> Holder | None:
        return Holder(self.replica_id, self.address, 0)

    async def release(self, session_id: str) -> None:
        return None
