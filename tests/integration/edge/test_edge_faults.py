"""Faults: a dropped socket, a slow consumer, the agent service killed, the edge restarted."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.edge import EdgeClient, create_session, make_token, start_edge
from tests.support.service import start_agent_service
from tests.support.timing import scaled

# About 2 s per reply, so a fault can land mid-run.
SLOW = ("--demo-tokens-per-s", "100", "--demo-reply-words", "200")


def assembled(frames: list[dict], run_id: str) -> str:
    return "".join(
        f["text"] for f in frames if f["type"] == "chat:response" and f["run_id"] == run_id
    )


async def close_code(client: EdgeClient, timeout_s: float = 20.0) -> int:
    """Read until the socket closes; its close code (0 when the reads ran dry instead)."""
    try:
        for _ in range(100_000):
            await client.recv(timeout_s)
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, "no close frame"
        return closed.rcvd.code
    except TimeoutError:
        return 0
    return 0


@pytest.fixture(scope="module")
def slow_agent(tmp_path_factory):
    proc = start_agent_service(tmp_path_factory.mktemp("slow"), *SLOW)
    yield proc
    proc.stop()


async def test_resume_after_a_dropped_socket_is_gap_free_and_duplicate_free(slow_agent):
    edge = start_edge(slow_agent.address)
    try:
        session = create_session(edge)
        sid = session["session_id"]
        first = await EdgeClient.connect(edge.ws_url, token=session["token"])
        await first.join(sid)
        run_id = (await first.say(sid, "tell me a long story"))["run_id"]
        await first.until(lambda f: f["type"] == "chat:response" and f["seq"] >= 15)
        first.ws.transport.abort()  # the TCP connection drops; no close frame
        await asyncio.sleep(0.3)  # the run goes on meanwhile
        resumed = await EdgeClient.connect(edge.ws_url, token=session["token"])
        await resumed.join(sid, after_seq=first.last_seq(sid))
        done = await resumed.until_complete(sid, run_id)
        seqs = first.seqs(sid) + resumed.seqs(sid)
        assert seqs == list(range(1, done["seq"] + 1))
        text = assembled(first.events(sid), run_id) + assembled(resumed.events(sid), run_id)
        assert text == done["text"]
        await resumed.close()
    finally:
        edge.stop()


async def test_a_slow_consumer_is_closed_1013_without_slowing_the_others(tmp_path: Path):
    # A long reply (about 1 MB of text, three times what the kernel buffers hold) at
    # 40,000 words/s, and a socket that stops reading: its kernel buffers fill, then its
    # send queue, then it is closed. The pace is the fast reader's margin: at full speed a
    # loaded machine could pause the test's process longer than the bound lets a reader lag
    # (CI once closed the fast socket too), and that is the slow-consumer policy working.
    agent = start_agent_service(
        tmp_path,
        "--demo-tokens-per-s",
        "40000",
        "--demo-reply-words",
        "150000",
        "--retention-events",
        "200000",
    )
    edge = None
    try:
        edge = start_edge(
            agent.address,
            # the bound admits a frame while the backlog before it is under it, and at full
            # speed a batch frame or the completion (the whole text) is tens to hundreds of KB:
            # at 64 KB one such frame still in the fast socket's transport got it closed too
            # (1 run in 6-12)
            "--send-queue-max-bytes",
            "196608",
            "--socket-send-buffer-bytes",
            "65536",
            "--socket-write-buffer-bytes",
            "4096",
        )
        session = create_session(edge)
        sid = session["session_id"]
        # No permessage-deflate: the demo's repetitive text would shrink to nothing.
        slow = await EdgeClient.connect(edge.ws_url, token=session["token"], compression=None)
        fast = await EdgeClient.connect(edge.ws_url, token=session["token"], compression=None)
        await slow.join(sid)
        await fast.join(sid)
        slow.ws.transport.pause_reading()  # the slow consumer stops reading
        run_id = (await fast.say(sid, "a very long answer"))["run_id"]
        done = await fast.until_complete(sid, run_id, timeout_s=60)
        assert assembled(fast.events(sid), run_id) == done["text"]
        slow.ws.transport.resume_reading()
        code = await close_code(slow)
        assert code == 1013, (len(slow.frames), slow.frames[-1]["type"])
        resumed = await EdgeClient.connect(edge.ws_url, token=session["token"])
        await resumed.join(sid, after_seq=slow.last_seq(sid))
        await resumed.until_complete(sid, run_id, timeout_s=60)
        assert slow.seqs(sid) + resumed.seqs(sid) == list(range(1, done["seq"] + 1))
        assert (
            assembled(slow.events(sid), run_id) + assembled(resumed.events(sid), run_id)
            == (done["text"])
        )
        await fast.close()
        await resumed.close()
    finally:
        if edge is not None:
            edge.stop()
        agent.stop()


async def test_agent_killed_mid_run_then_restarted_the_socket_sees_the_run_end_with_no_gap(
    tmp_path: Path,
):
    agent = start_agent_service(tmp_path, *SLOW)
    port = agent.address.rsplit(":", 1)[1]
    edge = None
    restarted = None
    try:
        edge = start_edge(agent.address, "--upstream-backoff-max-s", "0.3")
        session = create_session(edge)
        sid = session["session_id"]
        client = await EdgeClient.connect(edge.ws_url, token=session["token"])
        await client.join(sid)
        run_id = (await client.say(sid, "a long story"))["run_id"]
        await client.until(lambda f: f["type"] == "chat:response" and f["seq"] >= 10)
        agent.kill()
        error = await client.until(lambda f: f["type"] == "error")
        assert error["code"] == "upstream_unavailable" and error["retryable"] is True
        assert error["session_id"] == sid
        seen_text = assembled(client.events(sid), run_id)
        refused = await client.say(sid, "while it is down")
        assert refused["code"] == "upstream_unavailable" and refused["retryable"] is True
        restarted = start_agent_service(
            tmp_path, *SLOW, store_path=agent.store_path, listen=f"127.0.0.1:{port}"
        )
        # The edge resubscribes on its own at the room's last seq; the socket was never
        # closed, and it sees the run end with exactly the text it had assembled.
        ended = await client.until_complete(sid, run_id, timeout_s=30)
        assert ended["finish_reason"] == "interrupted"
        # what it had, and any delta that was durable but not delivered when the agent died
        assert ended["text"] == assembled(client.events(sid), run_id)
        assert ended["text"].startswith(seen_text)
        ack = await asyncio.wait_for(_retry_say(client, sid, "after the restart"), scaled(20))
        done = await client.until_complete(sid, ack["run_id"], timeout_s=30)
        assert done["finish_reason"] == "stop"
        assert not [f for f in client.frames if f["type"] == "chat:gap"]
        assert client.seqs(sid) == list(range(1, done["seq"] + 1)), "a seq missing or repeated"
        request = urllib.request.Request(
            f"{edge.url}/api/sessions/{sid}/messages",
            headers={"Authorization": f"Bearer {session['token']}"},
        )
        history = json.loads(await asyncio.to_thread(_read, request))
        replies = {m["run_id"]: m for m in history["messages"] if m["role"] == "assistant"}
        assert replies[run_id]["status"] == "interrupted", history
        assert replies[run_id]["text"] == ended["text"]
        assert replies[ack["run_id"]]["status"] == "complete", history
        await client.close()
    finally:
        if edge is not None:
            edge.stop()
        agent.kill()  # a no-op after the kill above; stops it when the test failed before
        if restarted is not None:
            restarted.stop()


async def test_agent_sigterm_mid_run_the_socket_sees_the_run_interrupted_and_goes_on(
    tmp_path: Path,
):
    agent = start_agent_service(tmp_path, *SLOW, "--shutdown-grace-s", "0.2")
    port = agent.address.rsplit(":", 1)[1]
    edge = None
    restarted = None
    try:
        edge = start_edge(agent.address, "--upstream-backoff-max-s", "0.3")
        session = create_session(edge)
        sid = session["session_id"]
        client = await EdgeClient.connect(edge.ws_url, token=session["token"])
        await client.join(sid)
        run_id = (await client.say(sid, "a long story"))["run_id"]
        await client.until(lambda f: f["type"] == "chat:response" and f["seq"] >= 10)
        agent.process.send_signal(signal.SIGTERM)
        ended = await client.until_complete(sid, run_id)
        assert ended["finish_reason"] == "interrupted"
        assert ended["text"] == assembled(client.events(sid), run_id)
        assert agent.process.wait(timeout=scaled(15)) == 0
        restarted = start_agent_service(
            tmp_path, *SLOW, store_path=agent.store_path, listen=f"127.0.0.1:{port}"
        )
        ack = await asyncio.wait_for(_retry_say(client, sid, "after the restart"), scaled(20))
        done = await client.until_complete(sid, ack["run_id"], timeout_s=30)
        assert done["finish_reason"] == "stop"
        assert not [f for f in client.frames if f["type"] == "chat:gap"]
        assert client.seqs(sid) == list(range(1, done["seq"] + 1))
        await client.close()
    finally:
        if edge is not None:
            edge.stop()
        agent.kill()
        if restarted is not None:
            restarted.stop()


async def test_a_session_unloaded_while_nobody_watched_resumes_with_no_gap(tmp_path: Path):
    agent = start_agent_service(
        tmp_path,
        "--demo-tokens-per-s",
        "0",
        "--session-idle-unload-s",
        "0.2",
        "--log-level",
        "DEBUG",
    )
    edge = None
    try:
        edge = start_edge(agent.address, "--room-grace-s", "0.1")
        session = create_session(edge)
        sid = session["session_id"]
        first = await EdgeClient.connect(edge.ws_url, token=session["token"])
        await first.join(sid)
        done = await first.until_complete(sid, (await first.say(sid, "hello"))["run_id"])
        await first.close()
        await asyncio.sleep(scaled(1.5))  # the room goes, then the agent unloads the session
        assert f"unloaded idle session {sid}" in agent.text()
        later = await EdgeClient.connect(edge.ws_url, token=session["token"])
        await later.join(sid, after_seq=done["seq"] - 2)
        ack = await later.say(sid, "still there?")
        again = await later.until_complete(sid, ack["run_id"])
        assert not [f for f in later.frames if f["type"] == "chat:gap"]
        assert later.seqs(sid) == list(range(done["seq"] - 1, again["seq"] + 1))
        await later.close()
    finally:
        if edge is not None:
            edge.stop()
        agent.stop()


def _read(request: urllib.request.Request) -> bytes:
    with urllib.request.urlopen(request, timeout=scaled(10)) as reply:
        return reply.read()


async def _retry_say(client: EdgeClient, sid: str, text: str) -> dict:
    message_id = "after-restart"
    while True:
        reply = await client.say(sid, text, message_id=message_id)
        if reply["type"] == "ack":
            return reply
        assert reply["code"] == "upstream_unavailable", reply
        await asyncio.sleep(0.2)


async def test_edge_restarted_mid_run_clients_get_1012_and_resume_on_the_new_one(slow_agent):
    edge = start_edge(slow_agent.address)
    port = edge.port
    try:
        session = create_session(edge)
        sid = session["session_id"]
        client = await EdgeClient.connect(edge.ws_url, token=session["token"])
        await client.join(sid)
        run_id = (await client.say(sid, "a long story for the restart"))["run_id"]
        await client.until(lambda f: f["type"] == "chat:response" and f["seq"] >= 10)
        edge.process.send_signal(__import__("signal").SIGTERM)
        assert await close_code(client) == 1012
        assert edge.process.wait(timeout=scaled(15)) == 0
        edge = start_edge(slow_agent.address, listen=f"127.0.0.1:{port}")
        resumed = await EdgeClient.connect(edge.ws_url, token=session["token"])
        await resumed.join(sid, after_seq=client.last_seq(sid))
        done = await resumed.until_complete(sid, run_id)
        assert client.seqs(sid) + resumed.seqs(sid) == list(range(1, done["seq"] + 1))
        assert (
            assembled(client.events(sid), run_id) + assembled(resumed.events(sid), run_id)
            == (done["text"])
        )
        await resumed.close()
    finally:
        edge.stop()


async def test_with_no_agent_service_the_edge_is_up_not_ready_and_says_so_retryably():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    edge = start_edge(dead, "--upstream-backoff-max-s", "0.2")
    try:
        assert _status(f"{edge.url}/healthz") == 200
        assert _status(f"{edge.url}/readyz") == 503
        assert _status(f"{edge.url}/api/sessions", method="POST") == 503
        session_id = "s_whatever"
        client = await EdgeClient.connect(edge.ws_url, token=make_token("u_1", [session_id]))
        refused = await client.request({"type": "join", "session_id": session_id})
        assert refused["code"] == "upstream_unavailable" and refused["retryable"] is True
        assert refused["retry_after_ms"] > 0
        await client.close()
    finally:
        edge.stop()


def _status(url: str, method: str = "GET") -> int:
    request = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=scaled(10)) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code
