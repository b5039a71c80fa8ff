"""The language-neutral client scenarios (clients/spec/*.json), run against the Python cores.

clients/web/src/lib/spec.test.ts runs the same files against the TypeScript cores, so the
two clients cannot drift: a rule changed in one fails here or there. Each scenario is a
list of inputs (user actions, frames received, timers fired) and the commands, outcomes
and state the core must answer with. The format is described in clients/spec/README.md.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from agent_relay_client.connection import (
    ConnectionMachine,
    GiveUp,
    Reconnect,
    RefreshToken,
    link_dead,
)
from agent_relay_client.conversation import REJECTED, SENDING
from agent_relay_client.events import decode_frame
from agent_relay_client.session_core import Command, Join, Leave, LoadHistory, Send, SessionCore
from agent_relay_client.ws import history_message_from_json

SPEC_DIR = Path(__file__).resolve().parents[2] / "clients" / "spec"


def _scenarios() -> list[Any]:
    found = []
    for path in sorted(SPEC_DIR.glob("*.json")):
        for scenario in json.loads(path.read_text(encoding="utf-8"))["scenarios"]:
            found.append(pytest.param(scenario, id=f"{path.stem}: {scenario['name']}"))
    return found


def test_the_scenarios_cover_every_rule_the_clients_share() -> None:
    names = {p.stem for p in SPEC_DIR.glob("*.json")}
    assert {"busy", "connection_backoff", "connection_close_codes", "dead_link", "dedup"} <= names
    assert {"gap", "interrupted", "outbox"} <= names


@pytest.mark.parametrize("scenario", _scenarios())
def test_scenario(scenario: dict[str, Any]) -> None:
    if scenario["core"] == "connection":
        _run_connection(scenario)
    else:
        _run_session(scenario)


# ----- the connection machine ------------------------------------------------------------------


def _decision(d: Reconnect | RefreshToken | GiveUp) -> dict[str, Any]:
    if isinstance(d, Reconnect):
        return {"reconnect": {"delay_ms": round(d.delay_s * 1000, 6), "attempt": d.attempt}}
    if isinstance(d, RefreshToken):
        return {"refresh_token": {"attempt": d.attempt}}
    return {"give_up": {"code": d.code}}


def _run_connection(scenario: dict[str, Any]) -> None:
    draws = itertools.cycle(scenario.get("random", [0.5]))
    machine = ConnectionMachine(random=lambda: next(draws))
    for i, step in enumerate(scenario["steps"]):
        where = f"step {i} ({step['do']})"
        do = step["do"]
        if do == "start":
            machine.receive_start()
        elif do == "connected":
            machine.receive_connected()
        elif do == "attempt":
            machine.receive_attempt()
        elif do == "stop":
            machine.receive_stop()
        elif do == "closed":
            got = machine.receive_closed(step["code"], "", step.get("retry_after_ms", 0))
            if "decision" in step:
                assert _decision(got) == _rounded(step["decision"]), where
        elif do == "link_dead":
            dead = link_dead(step["last_frame_ms"], step["now_ms"], step["interval_ms"])
            assert dead is step["dead"], where
        else:
            raise AssertionError(f"unknown step {do!r}")
        expected = step.get("state", {})
        if "state" in expected:
            assert machine.state.value == expected["state"], where
        if "attempt" in expected:
            assert machine.attempt == expected["attempt"], where


def _rounded(decision: dict[str, Any]) -> dict[str, Any]:
    reconnect = decision.get("reconnect")
    if reconnect is None:
        return decision
    return {"reconnect": {**reconnect, "delay_ms": round(float(reconnect["delay_ms"]), 6)}}


# ----- the session core ------------------------------------------------------------------------


def _command(c: Command) -> dict[str, Any]:
    if isinstance(c, Join):
        return {"join": c.session_id, "after_seq": c.after_seq}
    if isinstance(c, Leave):
        return {"leave": c.session_id}
    if isinstance(c, Send):
        return {"send": c.entry.message_id}
    assert isinstance(c, LoadHistory)
    return {"load_history": c.session_id}


def _user_state(status: str) -> str:
    """The scenario's words for a user message: the Python statuses behind them."""
    if status == SENDING:
        return "pending"
    if status == REJECTED:
        return "rejected"
    return "accepted"  # complete, or queued behind a run


def _step_session(core: SessionCore, step: dict[str, Any]) -> tuple[list[Command], str | None]:
    do, now = step["do"], step.get("now_ms", 0)
    if do == "follow":
        return core.follow(step["session"]), None
    if do == "connected":
        return core.receive_connected(), None
    if do == "disconnected":
        core.receive_disconnected()
        return [], None
    if do == "joined":
        return core.receive_joined(step["session"], now), None
    if do == "join_failed":
        code, after = step["code"], step.get("retry_after_ms", 0)
        return core.receive_join_failed(step["session"], code, after, now), None
    if do == "send":
        _, commands = core.send_message(
            step["session"],
            step["text"],
            message_id=step["message_id"],
            busy_policy=step.get("busy_policy", ""),
            now_ms=now,
        )
        return commands, None
    if do == "sent":
        core.receive_sent(step["message_id"])
        return [], None
    if do == "send_failed":
        outcome = core.receive_send_failed(
            step["message_id"],
            step["code"],
            step.get("message", ""),
            step.get("retry_after_ms", 0),
            now,
        )
        return [], outcome
    if do == "not_joined":
        return core.receive_not_joined(step["message_id"]), None
    if do == "event":
        event = decode_frame(json.dumps(step["event"]))
        outcome, commands = core.receive_event(event)  # type: ignore[arg-type]
        return commands, outcome.value
    if do == "history":
        history = step["history"]
        messages = [history_message_from_json(m) for m in history["messages"]]
        return core.receive_history(step["session"], messages, history["as_of_seq"]), None
    if do == "tick":
        return core.take_due(now), None
    raise AssertionError(f"unknown step {do!r}")


def _check_state(core: SessionCore, expected: dict[str, Any], where: str) -> None:
    if "outbox" in expected:
        assert [e.message_id for e in core.outbox.entries()] == expected["outbox"], where
    if "in_flight" in expected:
        flying = [e.message_id for e in core.outbox.entries() if e.in_flight]
        assert flying == expected["in_flight"], where
    if "next_due_ms" in expected:
        assert core.next_due_ms() == expected["next_due_ms"], where
    if "followed" in expected:
        assert sorted(core.conversations) == sorted(expected["followed"]), where
    for sid, seq in expected.get("last_seq", {}).items():
        assert core.conversations[sid].last_seq == seq, where
    convs = list(core.conversations.values())
    for message_id, state in expected.get("user", {}).items():
        item = next(c.find(message_id) for c in convs if c.find(message_id) is not None)
        assert item is not None and _user_state(item.status) == state, f"{where}: {message_id}"
    for run_id, state in expected.get("reply", {}).items():
        reply = next(r for c in convs if (r := c.assistant_for_run(run_id)) is not None)
        assert reply.status == state, f"{where}: {run_id}"
    for run_id, text in expected.get("text", {}).items():
        reply = next(r for c in convs if (r := c.assistant_for_run(run_id)) is not None)
        assert reply.text == text, f"{where}: {run_id}"


def _run_session(scenario: dict[str, Any]) -> None:
    core = SessionCore()
    for i, step in enumerate(scenario["steps"]):
        where = f"step {i} ({step['do']})"
        commands, outcome = _step_session(core, step)
        if "commands" in step:
            assert [_command(c) for c in commands] == step["commands"], where
        if "outcome" in step:
            assert outcome == step["outcome"], where
        _check_state(core, step.get("state", {}), where)
