"""The ConversationStore contract, run against every implementation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent_service.store import (
    ConversationStore,
    DuplicateMessage,
    MessageRecord,
    RunRecord,
    SessionRecord,
    StoredToolCall,
    open_store,
)
from tests.support.backends import postgres_database


@pytest.fixture(params=["sqlite-file", "sqlite-memory", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ConversationStore]:
    if request.param == "postgresql":
        async with postgres_database() as url:
            opened = open_store(url)
            await opened.open()
            yield opened
            await opened.close()
        return
    url = {
        "sqlite-file": f"sqlite:///{tmp_path}/store.sqlite3",
        "sqlite-memory": "sqlite:///:memory:",
    }[request.param]
    opened = open_store(url)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A store URL whose contents outlive a connection."""
    if request.param == "postgresql":
        async with postgres_database() as url:
            yield url
        return
    yield f"sqlite:///{tmp_path}/store.sqlite3"


def user(session: str, message_id: str, run_id: str, text: str = "hi") -> MessageRecord:
    return MessageRecord(session, message_id, "user", text, run_id, "complete", 1)


async def test_sessions_round_trip_and_list_newest_first(store: ConversationStore) -> None:
    for index in range(3):
        await store.create_session(
            SessionRecord(f"s{index}", "u1" if index else "u2", "", 100 + index, 0)
        )
    assert (await store.get_session("s1")) == SessionRecord("s1", "u1", "", 101, 0)
    assert await store.get_session("nope") is None
    assert [s.session_id for s in await store.list_sessions("", 10, None)] == ["s2", "s1", "s0"]
    assert [s.session_id for s in await store.list_sessions("u1", 10, None)] == ["s2", "s1"]
    assert [s.session_id for s in await store.list_sessions("", 10, 102)] == ["s1", "s0"]


async def test_fencing_tokens_only_grow_and_outlive_the_connection(durable_url: str) -> None:
    store = open_store(durable_url)
    await store.open()
    await store.create_session(SessionRecord("s1", "u", "", 1))
    await store.create_session(SessionRecord("s2", "u", "", 2))
    first = await store.next_fence("s1")
    second = await store.next_fence("s1")
    assert 0 < first < second
    assert await store.next_fence("nope") == 0  # no session, no token
    assert await store.fences(["s1", "s2", "nope"]) == {"s1": second, "s2": 0}
    await store.close()
    store = open_store(durable_url)  # a lease backend that forgot everything asks again
    await store.open()
    try:
        assert await store.next_fence("s1") > second
    finally:
        await store.close()


async def test_a_seq_reservation_only_grows(store: ConversationStore) -> None:
    await store.create_session(SessionRecord("s1", "u", "", 1))
    await store.reserve_seq([("s1", 500), ("nope", 9)])
    await store.reserve_seq([("s1", 200)])  # a late, smaller one changes nothing
    record = await store.get_session("s1")
    assert record is not None and record.seq_reserved == 500


async def test_history_groups_each_run_after_its_user_message(store: ConversationStore) -> None:
    await store.create_session(SessionRecord("s", "u", "", 1, 0))
    await store.accept_user_message(
        user("s", "m1", "r1"), RunRecord("r1", "s", "m1", "running"), title="hi"
    )
    # m2 arrives (queued) while r1 is still writing its reply
    await store.accept_user_message(
        user("s", "m2", "r2"), RunRecord("r2", "s", "m2", "queued"), title="hi"
    )
    call = StoredToolCall("c1", "calculator", '{"expression": "1+1"}')
    await store.upsert_message(
        MessageRecord("s", "r1.0", "assistant", "Calling", "r1", "complete", 2, tool_calls=(call,))
    )
    await store.upsert_message(
        MessageRecord("s", "c1", "tool", "2", "r1", "complete", 3, call_id="c1")
    )
    await store.upsert_message(
        MessageRecord("s", "r1.1", "assistant", "It is 2", "r1", "complete", 4)
    )
    history = [m.message_id for m in await store.list_messages("s", 100, 0)]
    assert history == ["m1", "r1.0", "c1", "r1.1", "m2"]
    assert [m.message_id for m in await store.list_messages("s", 2, 2)] == ["c1", "r1.1"]
    context = [m.message_id for m in await store.context_for_run("s", "r1")]
    assert context == ["m1", "r1.0", "c1", "r1.1"]
    tool_calls = (await store.list_messages("s", 100, 0))[1].tool_calls
    assert tool_calls == (call,)
    assert (await store.get_session("s")).title == "hi"  # type: ignore[union-attr]


async def test_user_messages_are_found_by_client_id(store: ConversationStore) -> None:
    await store.create_session(SessionRecord("s", "u", "", 1, 0))
    await store.accept_user_message(
        user("s", "m1", "r1", "hello"), RunRecord("r1", "s", "m1", "running"), title="hello"
    )
    await store.note_accept_seq("s", "m1", 7)
    await store.update_run(RunRecord("r1", "s", "m1", "ended", finish_reason="stop"))
    found = await store.find_user_message("s", "m1")
    assert found is not None and (found.text, found.run_id, found.accept_seq) == ("hello", "r1", 7)
    assert await store.find_user_message("s", "m2") is None


async def test_a_message_id_stored_before_is_refused_whole(store: ConversationStore) -> None:
    await store.create_session(SessionRecord("s", "u", "", 1, 0))
    await store.accept_user_message(
        user("s", "m1", "r1", "first"), RunRecord("r1", "s", "m1", "running"), title="first"
    )
    with pytest.raises(DuplicateMessage):
        await store.accept_user_message(
            user("s", "m1", "r2", "again"), RunRecord("r2", "s", "m1", "queued"), title="again"
        )
    # nothing of the refused acceptance is stored: not its run, not its title
    assert [r.run_id for r in await store.runs_in_flight()] == ["r1"]
    assert (await store.get_session("s")).title == "first"  # type: ignore[union-attr]
    assert [m.text for m in await store.list_messages("s", 10, 0)] == ["first"]
    # and the store goes on working
    await store.accept_user_message(
        user("s", "m2", "r3", "next"), RunRecord("r3", "s", "m2", "queued"), title="first"
    )
    assert [m.message_id for m in await store.list_messages("s", 10, 0)] == ["m1", "m2"]


async def test_writes_at_once_each_succeed_or_fail_alone(store: ConversationStore) -> None:
    # SQLite commits writes that arrive together in one transaction: a refused one must
    # not take the others with it
    await store.create_session(SessionRecord("s", "u", "", 1, 0))
    await store.accept_user_message(
        user("s", "m0", "r0"), RunRecord("r0", "s", "m0", "running"), title=""
    )

    async def accept(index: int) -> str:
        message_id = "m0" if index % 5 == 0 else f"m{index}"  # every fifth is a duplicate
        try:
            await store.accept_user_message(
                user("s", message_id, f"r{index}"),
                RunRecord(f"r{index}", "s", message_id, "queued"),
                title="",
            )
        except DuplicateMessage:
            return "duplicate"
        return "stored"

    outcomes = await asyncio.gather(*(accept(i) for i in range(1, 41)))
    assert outcomes.count("duplicate") == 8 and outcomes.count("stored") == 32
    stored = {m.message_id for m in await store.list_messages("s", 100, 0)}
    assert stored == {"m0"} | {f"m{i}" for i in range(1, 41) if i % 5}
    in_flight = {r.run_id for r in await store.runs_in_flight()}
    assert in_flight == {"r0"} | {f"r{i}" for i in range(1, 41) if i % 5}


async def test_upsert_replaces_text_and_status(store: ConversationStore) -> None:
    await store.create_session(SessionRecord("s", "u", "", 1, 0))
    await store.accept_user_message(
        user("s", "m1", "r1"), RunRecord("r1", "s", "m1", "running"), title=""
    )
    for text, status in (("par", "streaming"), ("partial", "streaming"), ("partial!", "complete")):
        await store.upsert_message(MessageRecord("s", "r1.0", "assistant", text, "r1", status, 2))
    last = (await store.list_messages("s", 10, 0))[-1]
    assert (last.text, last.status) == ("partial!", "complete")


async def test_runs_in_flight_are_found_after_a_reopen_until_they_are_ended(
    durable_url: str,
) -> None:
    url = durable_url
    first = open_store(url)
    await first.open()
    await first.create_session(SessionRecord("s", "u", "", 1))
    await first.accept_user_message(
        user("s", "m1", "r1"), RunRecord("r1", "s", "m1", "running"), title=""
    )
    queued = MessageRecord("s", "m2", "user", "hi", "r2", "queued", 1)
    await first.accept_user_message(queued, RunRecord("r2", "s", "m2", "queued"), title="")
    await first.close()
    second = open_store(url)
    await second.open()
    assert [r.run_id for r in await second.runs_in_flight()] == ["r1", "r2"]
    await second.update_run(
        RunRecord("r2", "s", "m2", "ended", finish_reason="interrupted"),
        user_message_status="interrupted",
    )
    assert [r.run_id for r in await second.runs_in_flight()] == ["r1"]
    m2 = await second.find_user_message("s", "m2")
    assert m2 is not None and m2.status == "interrupted"
    await second.close()


async def test_runs_in_flight_of_one_session_are_its_own_in_order(
    store: ConversationStore,
) -> None:
    for session in ("a", "b"):
        await store.create_session(SessionRecord(session, "u", "", 1))
    for index, session in enumerate("abab"):
        run = f"r{index}"
        status = "running" if index < 2 else "queued"
        await store.accept_user_message(
            user(session, f"m{index}", run), RunRecord(run, session, f"m{index}", status), title=""
        )
    await store.update_run(RunRecord("r0", "a", "m0", "ended", finish_reason="stop"))
    assert [r.run_id for r in await store.runs_in_flight("a")] == ["r2"]
    assert [r.run_id for r in await store.runs_in_flight("b")] == ["r1", "r3"]
    assert await store.runs_in_flight("nobody") == []
    assert [r.run_id for r in await store.runs_in_flight()] == ["r1", "r2", "r3"]


async def test_a_run_start_marks_its_queued_message_complete(store: ConversationStore) -> None:
    await store.create_session(SessionRecord("s", "u", "", 1))
    queued = MessageRecord("s", "m1", "user", "hi", "r1", "queued", 1)
    await store.accept_user_message(queued, RunRecord("r1", "s", "m1", "queued"), title="")
    await store.update_run(RunRecord("r1", "s", "m1", "running"), user_message_status="complete")
    m1 = await store.find_user_message("s", "m1")
    assert m1 is not None and m1.status == "complete"
    assert [r.status for r in await store.runs_in_flight()] == ["running"]


async def test_replicas_that_start_at_once_apply_each_migration_exactly_once() -> None:
    import asyncpg

    from agent_service.store_postgres import MIGRATIONS

    async with postgres_database() as url:
        stores = [open_store(url) for _ in range(4)]
        await asyncio.gather(*(s.open() for s in stores))  # all at once: no error, no race
        await stores[0].create_session(SessionRecord("s", "u", "", 1))
        again = open_store(url)
        await again.open()  # idempotent: nothing left to apply, data kept
        assert await again.get_session("s") == SessionRecord("s", "u", "", 1)
        db = await asyncpg.connect(url)
        versions = [r["version"] for r in await db.fetch("SELECT version FROM schema_migrations")]
        await db.close()
        assert versions == [v for v, _ in MIGRATIONS]
        for opened in [*stores, again]:
            await opened.close()


def test_an_unknown_store_url_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported store URL"):
        open_store("mysql://nope")


async def test_a_sqlite_file_an_older_version_wrote_keeps_its_history_in_order(
    tmp_path: Path,
) -> None:
    """Files from before the store dropped messages_by_run and AUTOINCREMENT open, lose the
    index, and go on adding messages and runs after the old ones, in order."""
    import sqlite3

    from agent_service.store_sqlite import SCHEMA

    path = tmp_path / "store.sqlite3"
    old_schema = (
        SCHEMA.replace("INTEGER PRIMARY KEY,", "INTEGER PRIMARY KEY AUTOINCREMENT,")
        .replace("DROP INDEX IF EXISTS messages_by_run", "")
        .rstrip()
        + "\nCREATE INDEX messages_by_run ON messages (run_id);"
    )
    old = sqlite3.connect(path)
    old.executescript(old_schema)
    old.close()
    store = open_store(f"sqlite:///{path}")
    await store.open()
    await store.create_session(SessionRecord("s", "u", "", 1, 0))
    for index in (1, 2):
        await store.accept_user_message(
            user("s", f"m{index}", f"r{index}"),
            RunRecord(f"r{index}", "s", f"m{index}", "running"),
            title="hi",
        )
        await store.upsert_message(
            MessageRecord("s", f"r{index}.0", "assistant", "ok", f"r{index}", "complete", 2)
        )
    await store.close()
    history = [m.message_id for m in await _reopened_history(path)]
    assert history == ["m1", "r1.0", "m2", "r2.0"]
    check = sqlite3.connect(path)
    indexes = {row[0] for row in check.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    keys = dict(check.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
    check.close()
    assert "messages_by_run" not in indexes
    assert keys == {"runs": 2, "messages": 4}  # the old file's keys still count


async def _reopened_history(path: Path) -> list[MessageRecord]:
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        return list(await store.list_messages("s", 100, 0))
    finally:
        await store.close()
