"""A run's end reaches the store only after its RunCompleted is durable.

Found by the chaos soak (tests/integration/test_chaos.py): the store said a run had
`ended` while the RunCompleted was still waiting for the log's commit; a kill -9 in
between left a run that never completed, since recovery starts from the runs the store
says are in flight. Here the log's commit of the RunCompleted is held back, as a
process that dies at that moment would leave it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from agent_relay.v1 import agent_pb2 as pb
from agent_service.agent import AgentLoop
from agent_service.config import ServiceSettings, load
from agent_service.hub import Hub
from agent_service.log import Append
from agent_service.log_memory import MemoryLog
from agent_service.providers.demo import DemoModel
from agent_service.recovery import plan
from agent_service.store import RunRecord
from agent_service.store_sqlite import SqliteStore
from agent_service.tools.builtins import build_registry
from relay_shared.agent_telemetry import AgentTelemetry


class HeldCompletions(MemoryLog):
    """A log whose batches holding a RunCompleted wait until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.holding = asyncio.Event()

    async def append(self, batch: Sequence[Append]) -> None:
        if any(e.HasField("run_completed") for item in batch for e in item.events):
            self.holding.set()
            await self.release.wait()
        await super().append(batch)


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[Hub, HeldCompletions]]:
    settings: ServiceSettings = load(
        ["--workspace-dir", str(tmp_path / "ws"), "--store-url", "sqlite:///:memory:"], env={}
    )
    store = SqliteStore(":memory:")
    await store.open()
    tools = build_registry(settings)
    body = AgentLoop(settings, store, DemoModel(tokens_per_s=0), tools, AgentTelemetry(None))
    log = HeldCompletions()
    hub = Hub(settings, store, log, tools, body)
    hub.start()
    yield hub, log
    log.release.set()
    await hub.shutdown(1.0)
    await store.close()


async def test_the_store_says_ended_only_once_the_run_completed_is_durable(
    parts: tuple[Hub, HeldCompletions],
) -> None:
    hub, log = parts
    session = await hub.session((await hub.create_session("u", "")).session_id)
    accepted = await hub.send_message(session.session_id, "m1", "hello", policy=None)
    await asyncio.wait_for(log.holding.wait(), 10)
    await asyncio.sleep(0.2)  # the run had every chance to write its end to the store
    # what a process killed now leaves: the store must still call the run in flight, so
    # that the next start's recovery ends it (it looks only at runs in flight)
    in_flight = [r.run_id for r in await hub.store.runs_in_flight()]
    assert in_flight == [accepted.run_id]
    durable = [e for e in session.log.retained() if e.seq <= session.log.head_seq]
    todo = plan((await hub.store.runs_in_flight())[0], durable)
    assert [e.WhichOneof("kind") for e in todo.append] == ["run_completed"]
    # once the commit goes through, the run ends in the store, with one RunCompleted
    log.release.set()
    run = session.runs.get(accepted.run_id)
    if run is not None and run.task is not None:
        await asyncio.wait_for(run.task, 10)
    for _ in range(200):
        if not await hub.store.runs_in_flight():
            break
        await asyncio.sleep(0.02)
    assert await hub.store.runs_in_flight() == []
    completed = [e for e in session.log.retained() if e.HasField("run_completed")]
    assert [e.run_completed.finish_reason for e in completed] == [pb.FINISH_REASON_STOP]


def test_recovery_appends_an_acceptance_the_log_lacks() -> None:
    # Also found by the chaos soak: a kill -9 between the store's commit of a message and
    # the log's commit of its MessageAccepted left a stored message, acknowledged on a
    # resend as `duplicate`, that the log never showed.
    run = RunRecord("r1", "s", "m1", "running")
    started = pb.SessionEvent(run_id="r1", seq=1, run_started=pb.RunStarted(message_id="m1"))
    todo = plan(run, [started], user_text="hello")
    assert [e.WhichOneof("kind") for e in todo.append] == ["message_accepted", "run_completed"]
    accepted = todo.append[0].message_accepted
    assert (accepted.message_id, accepted.text, accepted.run_id) == ("m1", "hello", "r1")
    logged = pb.SessionEvent(
        run_id="r1", seq=1, message_accepted=pb.MessageAccepted(message_id="m1", run_id="r1")
    )
    kinds = [e.WhichOneof("kind") for e in plan(run, [logged], "hello").append]
    assert kinds == ["run_completed"]
