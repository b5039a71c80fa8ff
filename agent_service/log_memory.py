"""The in-process event log (`memory://`): for tests and throwaway runs.

It has the durable log's semantics within one process (seq checks, trim,
follow) and keeps nothing across a restart.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence

from agent_relay.v1 import agent_pb2 as pb
from agent_service.log import Append, SeqConflict


class MemoryLog:
    """EventLog in a dict of lists."""

    def __init__(self) -> None:
        self._events: dict[str, list[pb.SessionEvent]] = defaultdict(list)
        self._heads: dict[str, int] = {}
        self._grew = asyncio.Condition()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def append(self, batch: Sequence[Append]) -> None:
        for item in batch:
            if item.expected_seq != self._heads.get(item.session_id, 0) + 1:
                raise SeqConflict(
                    f"session {item.session_id}: expected seq {item.expected_seq}, "
                    f"head is {self._heads.get(item.session_id, 0)}"
                )
        for item in batch:
            self._events[item.session_id].extend(item.events)
            self._heads[item.session_id] = item.events[-1].seq
        async with self._grew:
            self._grew.notify_all()

    async def head(self, session_id: str) -> int:
        return self._heads.get(session_id, 0)

    async def read_after(
        self, session_id: str, after_seq: int, limit: int
    ) -> list[pb.SessionEvent]:
        events = self._events.get(session_id, [])
        start = bisect.bisect_right(events, after_seq, key=lambda e: e.seq)
        return events[start : start + limit]

    async def read_tail(self, session_id: str, count: int) -> list[pb.SessionEvent]:
        return self._events.get(session_id, [])[-count:] if count > 0 else []

    async def follow(self, session_id: str, after_seq: int) -> AsyncIterator[list[pb.SessionEvent]]:
        while True:
            events = await self.read_after(session_id, after_seq, 1000)
            if events:
                after_seq = events[-1].seq
                yield events
                continue
            async with self._grew:
                await self._grew.wait()

    async def trim(self, session_id: str, keep_after_seq: int) -> int:
        events = self._events.get(session_id, [])
        cut = bisect.bisect_right(events, keep_after_seq, key=lambda e: e.seq)
        del events[:cut]
        return cut

    async def ping(self) -> None:
        return None
