"""Streaming through the real edge and agent service, with a `websockets` client."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

from tests.support.edge import EdgeClient, EdgeProcess, create_session, start_edge
from tests.support.service import start_agent_service
from tests.support.timing import scaled


def http(edge: EdgeProcess, path: str, *, token: str | None = None, body: dict | None = None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        edge.url + path, data=data, headers=headers, method="POST" if body is not None else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=scaled(10)) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def assert_gap_free(seqs: list[int], first: int = 1) -> None:
    assert seqs == list(range(first, first + len(seqs))), seqs


async def test_a_message_streams_its_reply_with_gap_free_seqs(edge):
    session = create_session(edge, title="stream")
    client = await EdgeClient.connect(edge.ws_url, token=session["token"])
    assert client.welcome["protocol"] == "agent-relay.v1"
    assert client.ws.subprotocol == "agent-relay.v1"
    joined = await client.join(session["session_id"])
    assert joined == {
        "type": "ack",
        "ref": joined["ref"],
        "session_id": session["session_id"],
        "head_seq": 0,
        "_seen": True,
    }
    ack = await client.say(session["session_id"], "hello edge", message_id="m-1")
    assert ack["type"] == "ack" and ack["message_id"] == "m-1" and ack["duplicate"] is False
    done = await client.until_complete(session["session_id"], ack["run_id"])
    assert done["finish_reason"] == "stop"
    events = client.events(session["session_id"])
    kinds = [f["type"] for f in events]
    assert kinds[:2] == ["chat:accepted", "chat:run_started"] and kinds[-1] == "chat:complete"
    deltas = [f for f in events if f["type"] == "chat:response"]
    assert "".join(f["text"] for f in deltas) == done["text"]
    assert_gap_free(client.seqs(session["session_id"]))
    await client.close()


async def test_a_retried_message_id_is_acked_as_a_duplicate_and_starts_no_second_run(edge):
    session = create_session(edge)
    client = await EdgeClient.connect(edge.ws_url, token=session["token"])
    await client.join(session["session_id"])
    first = await client.say(session["session_id"], "once", message_id="same-id")
    again = await client.say(session["session_id"], "once", message_id="same-id")
    assert again["duplicate"] is True and again["run_id"] == first["run_id"]
    await client.until_complete(session["session_id"])
    await asyncio.sleep(0.3)
    runs = {
        f["run_id"] for f in client.events(session["session_id"]) if f["type"] == "chat:run_started"
    }
    assert runs == {first["run_id"]}
    await client.close()


async def test_several_sockets_in_one_session_see_the_same_frames(edge):
    session = create_session(edge)
    clients = [await EdgeClient.connect(edge.ws_url, token=session["token"]) for _ in range(3)]
    for client in clients:
        await client.join(session["session_id"])
    ack = await clients[0].say(session["session_id"], "to everyone")
    for client in clients:
        await client.until_complete(session["session_id"], ack["run_id"])
    seen = [[(f["type"], f["seq"]) for f in c.events(session["session_id"])] for c in clients]
    assert seen[0] == seen[1] == seen[2]
    for client in clients:
        await client.close()


async def test_selective_streaming_sends_completed_messages_only_when_asked(edge):
    session = create_session(edge)
    finals = await EdgeClient.connect(edge.ws_url, token=session["token"])
    everything = await EdgeClient.connect(edge.ws_url, token=session["token"])
    await finals.join(session["session_id"], deltas="final", tool_output="final")
    await everything.join(session["session_id"])
    ack = await everything.say(session["session_id"], "calc 6 * 7")
    done = await finals.until_complete(session["session_id"], ack["run_id"])
    await everything.until_complete(session["session_id"], ack["run_id"])
    final_types = {f["type"] for f in finals.events(session["session_id"])}
    assert "chat:response" not in final_types and "42" in done["text"]
    assert "chat:response" in {f["type"] for f in everything.events(session["session_id"])}
    statuses = [
        f["status"]
        for f in finals.events(session["session_id"])
        if f["type"] == "chat:tool_execution"
    ]
    assert statuses and set(statuses) <= {"started", "completed", "failed", "cancelled"}
    await finals.close()
    await everything.close()


async def test_history_token_refresh_and_health_over_http(edge):
    session = create_session(edge)
    client = await EdgeClient.connect(edge.ws_url, token=session["token"])
    await client.join(session["session_id"])
    ack = await client.say(session["session_id"], "remember this")
    done = await client.until_complete(session["session_id"], ack["run_id"])
    await client.close()
    status, body = http(
        edge, f"/api/sessions/{session['session_id']}/messages", token=session["token"]
    )
    history = json.loads(body)
    assert status == 200 and history["as_of_seq"] >= done["seq"]
    assert [m["role"] for m in history["messages"]] == ["user", "assistant"]
    assert history["messages"][1]["text"] == done["text"]
    status, body = http(edge, "/api/token", body={"token": session["token"]})
    assert status == 200 and json.loads(body)["token"]
    status, _ = http(edge, f"/api/sessions/{session['session_id']}/messages")
    assert status == 401
    second = create_session(edge, token=session["token"])  # same user, both sessions
    assert second["user_id"] == session["user_id"]
    status, _ = http(edge, f"/api/sessions/{session['session_id']}/messages", token=second["token"])
    assert status == 200
    assert http(edge, "/healthz")[0] == 200
    assert http(edge, "/readyz")[0] == 200
    status, metrics = http(edge, "/metrics")
    assert status == 200 and b"agent_relay_edge_connections" in metrics


async def test_permessage_deflate_is_used_when_the_client_offers_it(edge):
    session = create_session(edge)
    client = await EdgeClient.connect(edge.ws_url, token=session["token"])
    extensions = [type(e).__name__ for e in client.ws.protocol.extensions]
    assert extensions == ["PerMessageDeflate"]
    plain = await EdgeClient.connect(edge.ws_url, token=session["token"], compression=None)
    assert plain.ws.protocol.extensions == []
    await client.close()
    await plain.close()


async def test_app_ping_is_answered_with_pong(edge):
    client = await EdgeClient.connect(edge.ws_url)
    pong = await client.request({"type": "ping", "ts": 12345})
    assert pong["type"] == "pong" and pong["ts"] == 12345
    await client.close()


async def test_a_traceparent_makes_the_edges_span_a_child_of_the_clients(agent, monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    edge = start_edge(agent.address)
    try:
        session = create_session(edge)
        client = await EdgeClient.connect(edge.ws_url, token=session["token"])
        await client.join(session["session_id"])
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        ack = await client.say(
            session["session_id"], "traced", traceparent=f"00-{trace_id}-00f067aa0ba902b7-01"
        )
        assert ack["type"] == "ack"
        await client.close()
    finally:
        edge.stop()  # flushes the spans
    output = edge.text()
    assert '"name": "chat:message"' in output and trace_id in output


def test_the_web_ui_is_served_at_the_root_when_built(agent, tmp_path):
    (tmp_path / "index.html").write_text("<!doctype html><title>agent-relay</title>")
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "app.js").write_text("console.log('hi')")
    edge = start_edge(agent.address, "--static-dir", str(tmp_path))
    try:
        status, body = http(edge, "/")
        assert status == 200 and b"<title>agent-relay</title>" in body
        assert http(edge, "/assets/app.js") == (200, b"console.log('hi')")
        assert http(edge, "/healthz")[0] == 200  # the API still wins over the files
    finally:
        edge.stop()


async def test_a_run_and_a_single_tool_call_can_be_cancelled(tmp_path):
    # A slow model, so a cancel always lands mid-run.
    agent = start_agent_service(tmp_path, "--demo-tokens-per-s", "20")
    agent_edge = None
    try:
        agent_edge = start_edge(agent.address)
        session = create_session(agent_edge)
        sid = session["session_id"]
        client = await EdgeClient.connect(agent_edge.ws_url, token=session["token"])
        await client.join(sid)
        tool_run = (await client.say(sid, "run a long task for 20 seconds"))["run_id"]
        started = await client.until(
            lambda f: f["type"] == "chat:tool_execution" and f["status"] == "started"
        )
        cancelled = await client.request(
            {"type": "tool:cancel", "session_id": sid, "call_id": started["call_id"]}
        )
        assert cancelled == {
            "type": "ack",
            "ref": cancelled["ref"],
            "session_id": sid,
            "cancelled": True,
            "_seen": True,
        }
        ended = await client.until(
            lambda f: (
                f["type"] == "chat:tool_execution"
                and f["call_id"] == started["call_id"]
                and f["status"] not in ("started", "progress", "output")
            )
        )
        assert ended["status"] == "cancelled"
        await client.until_complete(sid, tool_run)  # the run goes on without the tool
        long_run = (await client.say(sid, "tell me a long story " * 3))["run_id"]
        await client.until(lambda f: f["type"] == "chat:response" and f["run_id"] == long_run)
        stopped = await client.request(
            {"type": "chat:cancel", "session_id": sid, "run_id": long_run}
        )
        assert stopped["cancelled"] is True
        done = await client.until_complete(sid, long_run)
        assert done["finish_reason"] == "cancelled"
        unknown = await client.request(
            {"type": "tool:cancel", "session_id": sid, "call_id": "call_nope"}
        )
        assert unknown["type"] in ("ack", "error")
        assert unknown.get("cancelled") is not True
        await client.close()
    finally:
        if agent_edge is not None:
            agent_edge.stop()
        agent.stop()


async def test_many_rooms_share_the_few_upstream_chat_streams(tmp_path):
    agent = start_agent_service(tmp_path, "--metrics-listen", "127.0.0.1:0")
    edge = None
    try:
        edge = start_edge(agent.address, "--upstream-channels", "2")
        sessions = [create_session(edge) for _ in range(12)]
        clients = []
        for session in sessions:
            client = await EdgeClient.connect(edge.ws_url, token=session["token"])
            assert (await client.join(session["session_id"]))["type"] == "ack"
            clients.append(client)
        metrics_at = next(line for line in agent.output if "metrics on" in line).split()[-1]
        text = _get(f"http://{metrics_at}/metrics").decode()
        chat_calls = [
            line
            for line in text.splitlines()
            if line.startswith("rpc_server_active_calls") and "Chat" in line
        ]
        assert chat_calls and float(chat_calls[0].split()[-1]) == 2.0, chat_calls
        _, edge_metrics = http(edge, "/metrics")
        assert b"agent_relay_edge_rooms{" in edge_metrics
        rooms = [
            line
            for line in edge_metrics.decode().splitlines()
            if line.startswith("agent_relay_edge_rooms{")
        ]
        assert float(rooms[0].split()[-1]) == 12.0
        for client in clients:
            await client.close()
    finally:
        if edge is not None:
            edge.stop()
        agent.stop()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=scaled(10)) as reply:
        return reply.read()
