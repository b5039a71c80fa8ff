"""The group commit: durable before visible, one batch across sessions, retries in order."""

from __future__ import annotations

import asyncio

import pytest

from agent_relay.v1 import agent_pb2 as pb
from agent_service.errors import Unavailable
from agent_service.eventlog import SessionLog
from agent_service.log import Append, Fenced
from agent_service.log_memory import MemoryLog
from agent_service.log_writer import LogWriter
from agent_service.session import Session, Subscriber
from agent_service.store import SessionRecord


class CountingLog(MemoryLog):
    """A memory log that counts appends, can fail the next ones, and can be held."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[Append]] = []
        self.fail_next = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def append(self, batch):  # type: ignore[no-untyped-def]
        await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise OSError("disk full")
        self.batches.append(list(batch))
        await super().append(batch)


def session(writer: LogWriter, session_id: str) -> Session:
    record = SessionRecord(session_id, "u", "", 1)
    return Session(record, SessionLog(session_id, capacity=100), writer)


def delta(text: str) -> pb.SessionEvent:
    return pb.SessionEvent(response_delta=pb.ResponseDelta(text=text))


async def test_nothing_is_visible_or_woken_before_the_log_has_it() -> None:
    log = CountingLog()
    log.gate.clear()
    writer = LogWriter(log, retention_events=100)
    writer.start()
    one = session(writer, "s1")
    subscriber = Subscriber()
    one.subscribers.add(subscriber)
    stamped = one.append(delta("a"))
    await asyncio.sleep(0.01)
    assert stamped.seq == 1 and one.log.head_seq == 0 and not subscriber.wake.is_set()
    log.gate.set()
    await one.durable(1)
    assert one.log.head_seq == 1 and subscriber.wake.is_set() and "s1" in subscriber.dirty
    assert await log.head("s1") == 1
    await writer.stop()


async def test_events_that_pile_up_during_a_commit_go_in_one_batch_across_sessions() -> None:
    log = CountingLog()
    writer = LogWriter(log, retention_events=100)
    writer.start()
    a, b = session(writer, "a"), session(writer, "b")
    a.append(delta("first"))
    await a.durable(1)
    log.gate.clear()  # the next commit is slow: everything below waits for it together
    a.append(delta("x"))
    await asyncio.sleep(0.01)
    for index in range(50):
        a.append(delta(str(index)))
        b.append(delta(str(index)))
    log.gate.set()
    await writer.flush()
    sizes = [sorted((x.session_id, len(x.events)) for x in batch) for batch in log.batches]
    assert sizes == [[("a", 1)], [("a", 1)], [("a", 50), ("b", 50)]]
    assert a.log.head_seq == 52 and b.log.head_seq == 50
    await writer.stop()


async def test_a_failed_append_is_retried_before_anything_after_it() -> None:
    log = CountingLog()
    log.fail_next = 2
    writer = LogWriter(log, retention_events=100)
    writer.start()
    one = session(writer, "s")
    for text in "abc":
        one.append(delta(text))
    await asyncio.wait_for(one.durable(3), 5)
    assert [e.response_delta.text for e in await log.read_after("s", 0, 10)] == ["a", "b", "c"]
    assert writer.healthy
    await writer.stop()


async def test_retention_trims_the_log_in_the_background() -> None:
    log = CountingLog()
    writer = LogWriter(log, retention_events=5, trim_interval_s=0.01)
    writer.start()
    one = session(writer, "s")
    for index in range(20):
        one.append(delta(str(index)))
    await one.durable(20)
    for _ in range(100):
        if len(await log.read_after("s", 0, 100)) == 5:
            break
        await asyncio.sleep(0.01)
    assert [e.seq for e in await log.read_after("s", 0, 100)] == [16, 17, 18, 19, 20]
    await writer.stop()


class RefusingLog(CountingLog):
    """A memory log that refuses (Fenced) every append of the sessions in `fenced`."""

    def __init__(self) -> None:
        super().__init__()
        self.fenced: set[str] = set()

    async def append(self, batch):  # type: ignore[no-untyped-def]
        if any(item.session_id in self.fenced for item in batch):
            raise Fenced("lost the lease")
        await super().append(batch)


async def test_a_fenced_session_is_told_and_dropped_while_the_others_are_written() -> None:
    log = RefusingLog()
    log.gate.clear()  # both sessions' events go in one batch
    writer = LogWriter(log, retention_events=100)
    writer.start()
    refused: list[str] = []
    lost = Session(
        SessionRecord("lost", "u", "", 1),
        SessionLog("lost", capacity=100),
        writer,
        fence=7,
        on_refused=lambda s: refused.append(s.session_id),
    )
    kept = session(writer, "kept")
    log.fenced.add("lost")
    lost.append(delta("a"))
    kept.append(delta("b"))
    await asyncio.sleep(0.01)
    log.gate.set()
    await kept.durable(1)
    assert refused == ["lost"] and lost.fenced
    assert await log.head("kept") == 1 and await log.head("lost") == 0
    with pytest.raises(Unavailable):  # nobody waits forever for what will never be written
        await lost.durable(1)
    assert lost.append(delta("c")).seq == 0  # a fenced session appends nothing more
    assert writer.healthy
    await writer.stop()
