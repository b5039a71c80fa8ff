"""Start the real edge process (`python -m ws_edge`) on 127.0.0.1 at a free port."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from dataclasses import dataclass

import jwt
import websockets

from agent_relay.v1 import edge_pb2 as epb
from agent_relay_client.wire import PROTOCOLS, ProtoCodec
from tests.support.process import ManagedProcess, start_module
from tests.support.timing import scaled

TEST_JWT_SECRET = "edge-test-secret-0123456789abcdef-0123456789abcdef"


@dataclass
class EdgeProcess(ManagedProcess):
    """A running edge: its base URL, WebSocket URL and output."""

    url: str = ""
    args: tuple[str, ...] = ()

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + "/ws"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


def start_edge(
    upstream: str, *extra_args: str, listen: str = "127.0.0.1:0", secret: str = TEST_JWT_SECRET
) -> EdgeProcess:
    """Start the edge in front of the agent service at upstream; wait until it listens."""
    args = (
        "--listen",
        listen,
        "--upstream",
        upstream,
        "--jwt-secret",
        secret,
        "--static-dir",
        "/nonexistent",
        *extra_args,
    )
    managed, url = start_module("ws_edge", args, "ws_edge listening on")
    return EdgeProcess(managed.process, managed.output, url, args)


def make_token(
    user_id: str,
    sessions: list[str],
    *,
    expires_in_s: float = 3600,
    secret: str = TEST_JWT_SECRET,
    algorithm: str = "HS256",
) -> str:
    """A token as the edge issues it (or, with other arguments, one it must refuse)."""
    now = int(time.time())
    key = secret if algorithm != "none" else None
    return jwt.encode(
        {"sub": user_id, "sessions": sessions, "iat": now, "exp": now + int(expires_in_s)},
        key,
        algorithm=algorithm,
    )


def proto_frame_to_dict(data: bytes) -> dict:
    """A binary frame of agent-relay.v1+proto as the JSON frame of the same meaning: events
    by the edge's own JSON mapping (so the two wires can be compared), other frames field by
    field, as present."""
    from ws_edge.events import event_to_dict

    frame = epb.Frame.FromString(data)
    case = frame.WhichOneof("kind")
    if case == "event":
        return event_to_dict(frame.event)
    out: dict = {"type": "chat:response" if case == "response" else case}
    if frame.HasField("ref"):
        out["ref"] = frame.ref
    for fd, value in getattr(frame, case).ListFields():
        out[fd.name] = value
    return out


class EdgeClient:
    """A `websockets` client speaking agent-relay.v1 (or, with wire="proto", its binary
    twin agent-relay.v1+proto, frames mapped to and from the same dicts), for tests.
    Frames are kept in order."""

    def __init__(self, ws: object, wire: str = "json") -> None:
        self.ws = ws
        self.wire = wire
        self.frames: list[dict] = []
        self._ids = iter(range(1, 1_000_000))
        self.welcome: dict = {}

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        token: str | None = None,
        origin: str | None = None,
        wire: str = "json",
        **kwargs: object,
    ) -> EdgeClient:
        ws = await websockets.connect(
            url, subprotocols=[PROTOCOLS[wire]], origin=origin, open_timeout=scaled(10), **kwargs
        )
        client = cls(ws, wire)
        client.welcome = await client.recv()
        if token is not None:
            ack = await client.request({"type": "auth", "token": token})
            assert ack["type"] == "ack", ack
        return client

    async def recv(self, timeout_s: float = 10.0) -> dict:
        data = await asyncio.wait_for(self.ws.recv(), scaled(timeout_s))
        if self.wire == "proto":
            assert isinstance(data, bytes), f"a text frame on agent-relay.v1+proto: {data!r}"
            frame = proto_frame_to_dict(data)
        else:
            frame = json.loads(data)
        self.frames.append(frame)
        return frame

    async def send(self, frame: dict) -> None:
        if self.wire == "proto":
            await self.ws.send(ProtoCodec().encode(frame))
        else:
            await self.ws.send(json.dumps(frame))

    async def request(self, frame: dict, timeout_s: float = 10.0) -> dict:
        """Send a frame with a fresh id; return its reply (ack or error), keeping other frames."""
        frame_id = f"t{next(self._ids)}"
        await self.send({**frame, "id": frame_id})
        return await self.until(lambda f: f.get("ref") == frame_id, timeout_s)

    async def until(self, predicate, timeout_s: float = 10.0) -> dict:
        """Receive until a frame matches predicate; frames already received count too."""
        for frame in self.frames:
            if predicate(frame) and not frame.get("_seen"):
                frame["_seen"] = True
                return frame
        deadline = time.monotonic() + scaled(timeout_s)
        while True:
            frame = await self.recv(max(0.01, deadline - time.monotonic()))
            if predicate(frame):
                frame["_seen"] = True
                return frame

    async def join(self, session_id: str, after_seq: int = 0, **prefs: str) -> dict:
        """Join; like a real client, retry while the edge says the agent is unavailable."""
        deadline = time.monotonic() + scaled(15)
        while True:
            reply = await self.request(
                {"type": "join", "session_id": session_id, "after_seq": after_seq, **prefs}
            )
            if reply.get("code") != "upstream_unavailable" or time.monotonic() > deadline:
                return reply
            await asyncio.sleep(reply.get("retry_after_ms", 200) / 1000)

    async def say(
        self, session_id: str, text: str, message_id: str | None = None, **extra: object
    ) -> dict:
        return await self.request(
            {
                "type": "chat:message",
                "session_id": session_id,
                "message_id": message_id or uuid.uuid4().hex,
                "text": text,
                **extra,
            }
        )

    async def until_complete(
        self, session_id: str, run_id: str | None = None, timeout_s: float = 20.0
    ) -> dict:
        return await self.until(
            lambda f: (
                f.get("type") == "chat:complete"
                and f.get("session_id") == session_id
                and (run_id is None or f.get("run_id") == run_id)
            ),
            timeout_s,
        )

    def events(self, session_id: str) -> list[dict]:
        return [
            f
            for f in self.frames
            if f.get("session_id") == session_id
            and "seq" in f
            and f.get("type", "").startswith("chat:")
        ]

    def seqs(self, session_id: str) -> list[int]:
        """Every seq covered by the session's event frames (a batch covers from_seq..seq)."""
        out: list[int] = []
        for f in self.events(session_id):
            out.extend(range(f.get("from_seq", f["seq"]), f["seq"] + 1))
        return out

    def last_seq(self, session_id: str) -> int:
        seqs = self.seqs(session_id)
        return seqs[-1] if seqs else 0

    async def close(self) -> None:
        await self.ws.close()


def create_session(
    edge: EdgeProcess, token: str | None = None, title: str = "", context: object = None
) -> dict:
    """POST /api/sessions; returns the JSON reply (session_id, token, user_id, expires_at)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        edge.url + "/api/sessions",
        method="POST",
        headers=headers,
        data=json.dumps({"title": title}).encode(),
    )
    with urllib.request.urlopen(request, timeout=scaled(10), context=context) as reply:
        return json.loads(reply.read())
