"""Deltas made while a commit is in flight share one event (SessionLog.extend_unsubmitted_delta),
through the real hub, agent loop and demo model, with a log that takes its time; and a
loaded log writer holds a delta that continues its step's stream back (LogWriter.hold),
so the step's next words join it: never a run's first, never past an event after it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from agent_relay.v1 import agent_pb2 as pb
from agent_service.eventlog import SessionLog
from agent_service.hub import Hub
from agent_service.log import Append
from agent_service.log_memory import MemoryLog
from agent_service.log_writer import LogWriter
from agent_service.providers.demo import DemoModel
from agent_service.session import Session
from agent_service.store import SessionRecord
from tests.middle.hubs import running_hub

WORDS = 300


class SlowLog(MemoryLog):
    """A log whose every commit takes 20 ms, as a busy disk's would; it keeps what it was
    given, serialized, so a change to an event after its append would show."""

    def __init__(self) -> None:
        super().__init__()
        self.written: dict[str, list[bytes]] = {}

    async def append(self, batch: Sequence[Append]) -> None:
        for item in batch:
            self.written.setdefault(item.session_id, []).extend(
                e.SerializeToString() for e in item.events
            )
        await asyncio.sleep(0.02)
        await super().append(batch)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    model = DemoModel(tokens_per_s=0, reply_words=WORDS)
    args = ("--merge-delta-chars", "64")
    async with running_hub(tmp_path, args=args, event_log=SlowLog(), model=model) as running:
        yield running


async def test_a_busy_log_carries_several_words_per_delta_and_loses_none(hub: Hub) -> None:
    session = await hub.session((await hub.create_session("u", "")).session_id)
    accepted = await hub.send_message(session.session_id, "m1", "hello", policy=None)
    run = session.runs[accepted.run_id]
    assert run.task is not None
    await asyncio.wait_for(run.task, 30)
    await hub.writer.flush()
    events = session.log.retained()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # dense, from 1
    deltas = [e.response_delta.text for e in events if e.HasField("response_delta")]
    completed = [e.run_completed for e in events if e.HasField("run_completed")]
    assert len(completed) == 1
    assert "".join(deltas) == completed[0].text
    assert len(completed[0].text.split()) == WORDS
    assert len(deltas) < WORDS  # words made during a commit went in one event
    # what the log wrote is what subscribers see: no event changed after its append
    log = hub.event_log
    assert isinstance(log, SlowLog)
    written = [pb.SessionEvent.FromString(b) for b in log.written[session.session_id]]
    assert written == events
    history = await hub.store.list_messages(session.session_id, 10, 0)
    assert [m.text for m in history if m.role == "assistant"] == [completed[0].text]


# -- the adaptive window: a loaded writer holds a continuing delta back (LogWriter.hold) ----

HOLD_S = 60.0  # long beyond any test: a held delta shows up only when something flushes it


def log_session(writer: LogWriter, session_id: str) -> Session:
    record = SessionRecord(session_id, "u", "", 1)
    return Session(record, SessionLog(session_id, capacity=1000, merge_delta_chars=64), writer)


async def load_up(writer: LogWriter, sessions: int = 40) -> None:
    """Batches of `sessions` deltas each (every session's next word in one turn), until the
    writer counts itself loaded: it holds for its whole window."""
    streams = [log_session(writer, f"load-{i}") for i in range(sessions)]
    for _ in range(100):
        for stream in streams:
            stream.append_delta("warm", 0, "word ")
        await writer.flush()
        if writer.hold_s == writer.hold_max_s:
            return
    raise AssertionError(f"the writer never counted itself loaded (hold_s {writer.hold_s})")


@pytest.fixture
async def writer() -> AsyncIterator[LogWriter]:
    running = LogWriter(MemoryLog(), retention_events=10_000, hold_max_s=HOLD_S)
    running.start()
    yield running
    await running.stop()


async def durable(session: Session, event: pb.SessionEvent) -> None:
    await asyncio.wait_for(session.durable(event.seq), 10)


async def test_an_idle_writer_holds_no_delta(writer: LogWriter) -> None:
    s = log_session(writer, "s1")
    for i in range(20):
        event = s.append_delta("r1", 0, f"w{i} ")
        await durable(s, event)  # each word alone in its batch: not loaded, never held
    assert writer.hold_s == 0
    assert [(e.seq, e.response_delta.text) for e in s.log.retained()] == [
        (i + 1, f"w{i} ") for i in range(20)
    ]


async def test_a_loaded_writer_holds_a_continuing_delta_until_an_event_follows(
    writer: LogWriter,
) -> None:
    await load_up(writer)
    s = log_session(writer, "s1")
    first = s.append_delta("r1", 0, "one ")
    await durable(s, first)  # a run's first delta is never held
    held = s.append_delta("r1", 0, "two ")
    for _ in range(10):
        await asyncio.sleep(0)
    assert s.log.head_seq == first.seq  # held: not taken, so not durable, seen by nobody
    assert s.append_delta("r1", 0, "three ") is held  # the next word joins it, no new seq
    done = s.append(pb.SessionEvent(run_id="r1", run_completed=pb.RunCompleted(text="x")))
    await durable(s, done)  # the completion takes the held delta with it, first
    events = s.log.retained()
    assert [e.seq for e in events] == [1, 2, 3]
    assert [e.WhichOneof("kind") for e in events] == [
        "response_delta",
        "response_delta",
        "run_completed",
    ]
    assert [e.response_delta.text for e in events[:2]] == ["one ", "two three "]
    stored = await writer.log.read_after("s1", 0, 10)
    assert stored == events


async def test_a_new_step_is_not_held(writer: LogWriter) -> None:
    await load_up(writer)
    s = log_session(writer, "s1")
    await durable(s, s.append_delta("r1", 0, "one "))
    await durable(s, s.append_delta("r1", 1, "again "))  # the step's first: not held
    assert [e.response_delta.step for e in s.log.retained()] == [0, 1]


async def test_flush_and_stop_take_a_held_delta() -> None:
    event_log = MemoryLog()
    writer = LogWriter(event_log, retention_events=10_000, hold_max_s=HOLD_S)
    writer.start()
    await load_up(writer)
    s = log_session(writer, "s1")
    await durable(s, s.append_delta("r1", 0, "one "))
    held = s.append_delta("r1", 0, "two ")
    await asyncio.wait_for(writer.stop(), 10)  # shutdown's drain: the held delta is written
    assert s.log.head_seq == held.seq
    stored = await event_log.read_after("s1", 0, 10)
    assert [e.response_delta.text for e in stored] == ["one ", "two "]


@pytest.fixture
async def paced_hub(tmp_path: Path) -> AsyncIterator[Hub]:
    model = DemoModel(tokens_per_s=50, reply_words=WORDS)
    args = ("--delta-hold-ms", str(HOLD_S * 1000))
    async with running_hub(tmp_path, args=args, model=model) as running:
        yield running


async def test_a_run_cancelled_with_a_held_delta_ends_after_it(paced_hub: Hub) -> None:
    hub = paced_hub
    await load_up(hub.writer)
    session = await hub.session((await hub.create_session("u", "")).session_id)
    accepted = await hub.send_message(session.session_id, "m1", "hello", policy=None)
    run = session.runs[accepted.run_id]

    def streaming() -> bool:  # the first word out, the next ones held
        visible = [e for e in session.log.retained() if e.HasField("response_delta")]
        return bool(visible) and session.log.unpublished > 0

    for _ in range(1000):
        if streaming():
            break
        await asyncio.sleep(0.01)
    assert streaming()
    assert await hub.cancel_run(session.session_id, accepted.run_id)
    assert run.task is not None
    await asyncio.wait_for(run.task, 10)
    await asyncio.wait_for(hub.writer.flush(), 10)
    events = session.log.retained()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    kinds = [e.WhichOneof("kind") for e in events]
    assert kinds[-1] == "run_completed"
    deltas = [e for e in events if e.HasField("response_delta")]
    assert len(deltas[0].response_delta.text.split()) == 1  # the first word went alone
    assert len(deltas) == 2  # every later word joined the held delta, up to the cancel
    assert kinds.index("response_delta") + 2 == len(kinds) - 1  # held delta, then the end
    completed = events[-1].run_completed
    assert completed.finish_reason != pb.FINISH_REASON_UNSPECIFIED
    assert "".join(d.response_delta.text for d in deltas) == completed.text
