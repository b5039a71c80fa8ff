"""Property-based fuzzing of WebSocket frames against the real edge and agent service.

Hypothesis draws batches of frames: JSON objects of every client frame type with
fields of any shape (other users' sessions included), arbitrary JSON, deep
nesting, non-JSON text, oversized text and binary frames. Sent on one socket
(authenticated or not, reconnected whenever the edge closes it), they must each
get a documented answer:

- a frame with a readable `id` gets a reply naming it (`ack`, `pong` or `error`);
- every `error` has a code from the documented table, a message and `retryable`;
- a close carries a documented code (1008 abuse, 1009 too large, 4501 token),
  never 1006 or 1011, and a final `ping` is always answered while the socket is open.

Meanwhile an honest client of another user streams replies on its own thread
and must see every run complete with gap-free seqs; at the end the edge is up
and has logged no traceback. Examples: AGENT_RELAY_FUZZ_EXAMPLES (default 120;
`make soak` runs 3,000).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from tests.support.edge import EdgeClient, EdgeProcess, create_session, start_edge
from tests.support.service import start_agent_service
from tests.support.timing import scaled
from ws_edge.errors import ErrorCode

EXAMPLES = int(os.environ.get("AGENT_RELAY_FUZZ_EXAMPLES", "120"))
# About a second an example on a busy machine, and room to spare.
pytestmark = [pytest.mark.slow, pytest.mark.soak, pytest.mark.timeout(600 + 3 * EXAMPLES)]
ERROR_CODES = {str(code) for code in ErrorCode}
# Closes the edge may choose for a fuzzing peer: abuse strikes, a frame over the hard
# limit, a refused first token, too slow to authenticate.
FUZZ_CLOSE_CODES = {1008, 1009, 4501, 4503}
TYPES = ["auth", "join", "leave", "chat:message", "chat:cancel", "tool:cancel", "ping"]
FIELDS = [
    "token",
    "session_id",
    "after_seq",
    "deltas",
    "tool_output",
    "message_id",
    "text",
    "busy_policy",
    "traceparent",
    "tracestate",
    "run_id",
    "call_id",
    "ts",
]


@dataclass
class World:
    """The real processes and the fixed facts the strategies draw from."""

    edge: EdgeProcess
    own: dict
    foreign: dict
    stats: Counter = field(default_factory=Counter)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    agent = start_agent_service(
        Path(tmp_path_factory.mktemp("fuzz")),
        "--demo-tokens-per-s",
        "400",
        "--demo-reply-words",
        "20",
    )
    edge = start_edge(agent.address)
    try:
        yield World(edge, create_session(edge), create_session(edge))
    finally:
        edge.stop()
        agent.stop()
    assert "Traceback" not in edge.text(), edge.text()[-4000:]


def json_values() -> st.SearchStrategy[object]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )


def frame_objects(world: World) -> st.SearchStrategy[dict]:
    sessions = st.sampled_from(
        [world.own["session_id"], world.foreign["session_id"], "s_nope", ""]
    ) | st.text(max_size=200)
    tokens = st.sampled_from(
        [world.own["token"], world.foreign["token"], "not.a.token", ""]
    ) | st.text(max_size=60)
    special = {
        "session_id": sessions,
        "token": tokens,
        "after_seq": st.integers(min_value=-5, max_value=2**70) | json_values(),
        "text": st.text(max_size=100) | st.just("x" * 40_000),
    }
    field_values = st.sampled_from(FIELDS).flatmap(
        lambda name: st.tuples(st.just(name), special.get(name, json_values()))
    )
    return st.builds(
        lambda kind, fields, extra: {"type": kind, **dict(fields), **extra},
        st.sampled_from(TYPES) | st.text(max_size=12) | json_values(),
        st.lists(field_values, max_size=6),
        st.dictionaries(st.text(max_size=6), json_values(), max_size=2),
    )


def nested(depth: int) -> str:
    return '{"type": "ping", "x": ' + '{"a": ' * depth + "1" + "}" * depth + "}"


def frames(world: World) -> st.SearchStrategy[list[tuple[str, str | bytes]]]:
    objects = frame_objects(world).map(lambda obj: ("object", obj))
    one = st.one_of(
        objects,  # the frames that reach the dispatch, drawn more often than the rest
        objects,
        objects,
        json_values().map(lambda value: ("json", json.dumps(value))),
        st.text(max_size=200).map(lambda text: ("text", text)),
        st.integers(min_value=50, max_value=5000).map(lambda d: ("text", nested(d))),
        st.binary(max_size=200).map(lambda data: ("binary", data)),
        st.integers(min_value=60_000, max_value=1_200_000).map(lambda n: ("text", "x" * n)),
    )
    return st.lists(one, min_size=1, max_size=6)


def as_json(obj: object) -> tuple[str, bool]:
    """The frame's text, and whether it is JSON a strict reader takes (no NaN or Infinity,
    no lone surrogates): only then can its `id` be read back."""
    try:
        text = json.dumps(obj, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return json.dumps(obj), False
    return text, True


class Fuzzer:
    """One socket the fuzz frames go to; a fresh one whenever the edge closes it."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.client: EdgeClient | None = None
        self.ids = 0

    async def socket(self, authenticate: bool) -> EdgeClient:
        if self.client is None:
            token = self.world.own["token"] if authenticate else None
            self.client = await EdgeClient.connect(self.world.edge.ws_url, token=token)
            if authenticate:
                await self.client.join(self.world.own["session_id"])
        return self.client

    async def run(self, batch: list[tuple[str, object]], authenticate: bool) -> None:
        client = await self.socket(authenticate)
        expected: list[str] = []
        try:
            for kind, item in batch:
                if kind == "object":
                    assert isinstance(item, dict)
                    self.ids += 1
                    frame_id = f"f{self.ids}"
                    text, readable = as_json({**item, "id": frame_id})
                    if readable:  # valid JSON in valid UTF-8: its id must come back in `ref`
                        expected.append(frame_id)
                    await client.ws.send(text)
                elif kind == "binary":
                    await client.ws.send(item)
                else:
                    await client.ws.send(item)
                self.world.stats[kind] += 1
            for _ in range(20):  # the barrier may itself be over the frame budget
                barrier = await client.request({"type": "ping"}, timeout_s=20)
                if barrier.get("code") != "rate_limited":
                    break
                await asyncio.sleep(barrier["retry_after_ms"] / 1000)
            assert barrier["type"] == "pong", barrier
            replies = {f.get("ref") for f in client.frames}
            for frame_id in expected:
                if frame_id not in replies:  # an ack may follow the pong (upstream replies)
                    await client.until(lambda f, i=frame_id: f.get("ref") == i, timeout_s=20)
        except ConnectionClosed as closed:
            self.client = None
            assert closed.rcvd is not None, "the edge dropped the socket without a close frame"
            assert closed.rcvd.code in FUZZ_CLOSE_CODES, closed.rcvd
            self.world.stats[f"closed {closed.rcvd.code}"] += 1
        finally:
            for frame in client.frames:
                if frame.get("type") == "error":
                    assert frame["code"] in ERROR_CODES, frame
                    assert isinstance(frame["message"], str), frame
                    assert isinstance(frame["retryable"], bool), frame
                    self.world.stats[f"error {frame['code']}"] += 1
            client.frames.clear()


def honest_client(world: World, stop: threading.Event, report: dict) -> None:
    """Another user chatting on its own event loop while the fuzz runs."""

    async def chat() -> None:
        session = create_session(world.edge)
        sid = session["session_id"]
        client = await EdgeClient.connect(world.edge.ws_url, token=session["token"])
        await client.join(sid)
        while not stop.is_set() or report["replies"] == 0:
            ack = await client.say(sid, "are you there?")
            assert ack["type"] == "ack", ack
            await client.until_complete(sid, ack["run_id"], timeout_s=30)
            report["replies"] += 1
        seqs = client.seqs(sid)
        report["gap_free"] = seqs == list(range(1, seqs[-1] + 1))
        report["errors"] = [f for f in client.frames if f.get("type") == "error"]
        await client.close()

    try:
        asyncio.run(chat())
    except BaseException as exc:  # reported to the test's thread
        report["failure"] = repr(exc)


def test_fuzzed_frames_always_get_documented_answers_and_others_stream_on(world: World):
    stop = threading.Event()
    report: dict = {"replies": 0}
    honest = threading.Thread(target=honest_client, args=(world, stop, report), daemon=True)
    honest.start()
    fuzzer = Fuzzer(world)
    loop = asyncio.new_event_loop()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=frames(world), authenticate=st.booleans())
    def check(batch: list[tuple[str, object]], authenticate: bool) -> None:
        loop.run_until_complete(asyncio.wait_for(fuzzer.run(batch, authenticate), scaled(60)))

    try:
        check()
    finally:
        if fuzzer.client is not None:
            loop.run_until_complete(fuzzer.client.close())
        loop.close()
        stop.set()
        honest.join(scaled(60))
    print(f"\nfuzz: {EXAMPLES} examples; {dict(sorted(world.stats.items()))}")
    print(f"honest client: {report}")
    assert "failure" not in report, report
    assert report["replies"] >= 1 and report["gap_free"] and report["errors"] == [], report
    assert world.edge.process.poll() is None, "the edge died"
