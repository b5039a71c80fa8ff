"""Start-up recovery: end the runs a stopped process left in flight, exactly once.

For each such run (the store says `queued` or `running`), the session's durable
log says what clients could have seen. Recovery appends what is missing, and
only what is missing, so a crash during recovery and another recovery still
leave exactly one of each:

- one ToolExecution `cancelled` (reason `interrupted`) for each tool call that
  started and has no final event;
- one RunCompleted `interrupted` whose text is exactly the run's deltas in the
  log (what a client that saw everything assembled);
- first, when the log has no MessageAccepted for the run (the process died
  between the store's commit of the message and the log's commit of its
  acceptance), that acceptance, so the log shows every stored message once.

Then it brings the store in line (idempotent upserts): the step being streamed
is stored with the log's text and status `interrupted`, each unanswered tool
call gets a result, a queued message that will never run gets status
`interrupted`, and last the run is marked ended.

`plan()` is pure: events of one run in, what to append and store out.
`end_run()` recovers one run of a loaded session (the hub calls it when it
takes a session over from a replica that died); `recover()` does it at start-up
for every run a single process left.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent_relay.v1 import agent_pb2 as pb
from agent_service.context import unfinished_call_result
from agent_service.ids import now_ms
from agent_service.session import Session
from agent_service.store import ConversationStore, MessageRecord, RunRecord

if TYPE_CHECKING:  # the hub calls end_run() at a takeover; recover() is handed a hub
    from agent_service.hub import Hub

log = logging.getLogger(__name__)

FINAL_TOOL_UPDATES = frozenset({"completed", "failed", "cancelled"})


@dataclass
class Plan:
    """What recovering one run takes."""

    append: list[pb.SessionEvent] = field(default_factory=list)
    step_texts: dict[int, str] = field(default_factory=dict)  # step -> its text in the log
    calls_in_flight: list[tuple[str, str]] = field(default_factory=list)  # (call_id, tool)


def plan(run: RunRecord, events: Sequence[pb.SessionEvent], user_text: str | None = None) -> Plan:
    """The events `run` still needs, from its session's durable events (any order of
    sessions' events; only this run's are read). `user_text`, the stored text of the
    run's user message, is given to append a MessageAccepted the log lacks."""
    result = Plan()
    pieces: dict[int, list[str]] = defaultdict(list)
    started_calls: dict[str, str] = {}
    finished_calls: set[str] = set()
    completed = accepted = False
    for event in events:
        if event.run_id != run.run_id:
            continue
        kind = event.WhichOneof("kind")
        if kind == "message_accepted":
            accepted = True
        elif kind == "response_delta":
            pieces[event.response_delta.step].append(event.response_delta.text)
        elif kind == "tool_execution":
            execution = event.tool_execution
            update = execution.WhichOneof("update")
            if update == "started":
                started_calls[execution.call_id] = execution.tool_name
            elif update in FINAL_TOOL_UPDATES:
                finished_calls.add(execution.call_id)
        elif kind == "run_completed":
            completed = True
    result.step_texts = {step: "".join(texts) for step, texts in sorted(pieces.items())}
    result.calls_in_flight = [
        (call_id, name) for call_id, name in started_calls.items() if call_id not in finished_calls
    ]
    if not accepted and user_text is not None:
        result.append.append(
            pb.SessionEvent(
                run_id=run.run_id,
                message_accepted=pb.MessageAccepted(
                    message_id=run.user_message_id,
                    text=user_text,
                    run_id=run.run_id,
                    queued=run.status == "queued",
                ),
            )
        )
    if completed:
        return result
    for call_id, name in result.calls_in_flight:
        result.append.append(
            pb.SessionEvent(
                run_id=run.run_id,
                tool_execution=pb.ToolExecution(
                    call_id=call_id,
                    tool_name=name,
                    cancelled=pb.ToolCancelled(reason="interrupted"),
                ),
            )
        )
    result.append.append(
        pb.SessionEvent(
            run_id=run.run_id,
            run_completed=pb.RunCompleted(
                finish_reason=pb.FINISH_REASON_INTERRUPTED,
                assistant_message_id=f"{run.run_id}.0" if run.status == "running" else "",
                text="".join(result.step_texts.values()),
            ),
        )
    )
    return result


async def recover(hub: Hub) -> list[RunRecord]:
    """End every run left in flight (see the module docstring); returns them."""
    runs = await hub.store.runs_in_flight()
    for run in runs:
        await end_run(hub.store, await hub.session(run.session_id), run)
    return runs


async def end_run(store: ConversationStore, session: Session, run: RunRecord) -> None:
    """End one run left in flight by a process that stopped, in `session` (loaded, owned
    by this process); idempotent."""
    log.warning(
        "run %s of session %s was in flight at the last stop: interrupted",
        run.run_id,
        run.session_id,
    )
    user = [
        m
        for m in await store.context_for_run(run.session_id, run.run_id)
        if m.role == "user" and m.message_id == run.user_message_id
    ]
    session.context.invalidate()  # the messages stored below are not the context's feed
    todo = plan(run, session.log.retained(), user[0].text if user else None)
    last = None
    for event in todo.append:
        last = session.append(event)
    if last is not None:
        await session.durable(last.seq)
    await _settle_store(store, run, todo)


async def _settle_store(store: ConversationStore, run: RunRecord, todo: Plan) -> None:
    stored = {
        m.message_id: m
        for m in await store.context_for_run(run.session_id, run.run_id)
        if m.run_id == run.run_id
    }
    now = now_ms()
    if run.status == "running":
        steps = todo.step_texts or {0: ""}
        for step, text in steps.items():
            message_id = f"{run.run_id}.{step}"
            earlier = stored.get(message_id)
            if earlier is not None and earlier.status != "streaming":
                continue  # the step was stored when it ended
            await store.upsert_message(
                MessageRecord(
                    run.session_id, message_id, "assistant", text, run.run_id, "interrupted", now
                )
            )
    answered = {m.call_id for m in stored.values() if m.role == "tool"}
    unanswered = {call_id for call_id, _ in todo.calls_in_flight}
    for message in stored.values():
        unanswered.update(c.call_id for c in message.tool_calls)
    for call_id in sorted(unanswered - answered):
        await store.upsert_message(
            MessageRecord(
                run.session_id,
                call_id,
                "tool",
                unfinished_call_result("interrupted"),
                run.run_id,
                "interrupted",
                now,
                call_id=call_id,
            )
        )
    await store.update_run(
        RunRecord(
            run.run_id,
            run.session_id,
            run.user_message_id,
            "ended",
            finish_reason="interrupted",
            started_ms=run.started_ms,
            ended_ms=now,
        ),
        user_message_status="interrupted" if run.status == "queued" else "",
    )
