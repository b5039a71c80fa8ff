"""GET /api/sessions (the caller's conversations) and the run history names as still going."""

from __future__ import annotations

import json

from tests.integration.edge.test_edge_streaming import http
from tests.support.edge import EdgeClient, create_session, make_token


async def test_the_list_holds_the_token_users_sessions_it_may_open_newest_first(edge):
    first = create_session(edge, title="first")
    second = create_session(edge, token=first["token"], title="second")
    stranger = create_session(edge, title="someone else's")
    status, body = http(edge, "/api/sessions", token=second["token"])
    assert status == 200
    listed = json.loads(body)["sessions"]
    assert [(s["session_id"], s["title"]) for s in listed] == [
        (second["session_id"], "second"),
        (first["session_id"], "first"),
    ]
    assert stranger["session_id"] not in {s["session_id"] for s in listed}
    # The first token predates the second session: it may open only the first.
    status, body = http(edge, "/api/sessions", token=first["token"])
    assert [s["session_id"] for s in json.loads(body)["sessions"]] == [first["session_id"]]
    # A token naming a session of another user lists nothing of theirs.
    forged = make_token(first["user_id"], [stranger["session_id"]])
    status, body = http(edge, "/api/sessions", token=forged)
    assert status == 200 and json.loads(body)["sessions"] == []
    assert http(edge, "/api/sessions")[0] == 401


async def test_history_names_the_run_still_going_and_none_once_it_ended(edge):
    session = create_session(edge)
    client = await EdgeClient.connect(edge.ws_url, token=session["token"])
    await client.join(session["session_id"])
    ack = await client.say(session["session_id"], "run a long task for 30 seconds")
    path = f"/api/sessions/{session['session_id']}/messages"
    await client.until(lambda f: f.get("type") == "chat:tool_execution")
    status, body = http(edge, path, token=session["token"])
    assert status == 200 and json.loads(body)["active_run_id"] == ack["run_id"]
    await client.request({"type": "chat:cancel", "session_id": session["session_id"]})
    await client.until_complete(session["session_id"], ack["run_id"])
    await client.close()
    status, body = http(edge, path, token=session["token"])
    assert status == 200 and json.loads(body)["active_run_id"] == ""
