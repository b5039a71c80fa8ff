"""Recorded frames of both wires, made by the edge's own encoders: clients/spec/wire/frames.json.

Each server frame appears as the JSON text the edge sends on `agent-relay.v1` and the bytes
(base64) it sends on `agent-relay.v1+proto`; each client frame as its JSON mapping and the
bytes the Python client's proto codec writes. The TypeScript codec's tests
(clients/web/src/lib/codec.test.ts) decode both and expect the same objects, so the two
clients' codecs and the edge cannot drift apart; the Chromium decode bench
(bench/browser_decode.py) times them. `python -m tests.support.wire_frames` rewrites the
file; tests/unit/edge/test_edge_wire.py fails when it is stale.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from agent_relay.v1 import agent_pb2 as pb
from agent_relay_client.wire import ProtoCodec
from ws_edge.errors import EdgeError, ErrorCode
from ws_edge.events import delta_frame, encode_event
from ws_edge.frames import ack_frame, error_frame, pong_frame, upstream_frame, welcome_frame
from ws_edge.wire import FieldsFrame, OutFrame, Wire

PATH = Path(__file__).resolve().parents[2] / "clients" / "spec" / "wire" / "frames.json"
SID, RUN = "s_4f1c2a9e", "r_7b3d"


def _event(seq: int, **kind: Any) -> pb.SessionEvent:
    return pb.SessionEvent(
        session_id=SID, seq=seq, run_id=RUN, time_unix_ms=1_767_000_000_000 + seq, **kind
    )


def server_frames() -> list[tuple[str, OutFrame]]:
    """(name, frame): every kind of server frame, as a chat with a tool call sends them."""
    tool = pb.ToolExecution
    frames: list[tuple[str, OutFrame]] = [
        (
            "welcome",
            welcome_frame(
                heartbeat_ms=15000,
                auth_timeout_ms=10000,
                max_frame_bytes=65536,
                batch_ms=5.0,
                wire=Wire.PROTO,
            ),
        ),
        ("ack auth", ack_frame("a1", user_id="u_1", expires_at=1_767_003_600)),
        ("ack join", ack_frame("j1", session_id=SID, head_seq=57)),
        (
            "ack message",
            ack_frame(
                "m1",
                session_id=SID,
                message_id="5f0c",
                seq=58,
                run_id=RUN,
                queued=False,
                duplicate=False,
            ),
        ),
        ("ack cancel", ack_frame("c1", session_id=SID, cancelled=True)),
        (
            "error reply",
            error_frame(EdgeError(ErrorCode.RATE_LIMITED, "too many frames", 800), "m2"),
        ),
        (
            "error notice",
            error_frame(
                EdgeError(ErrorCode.UPSTREAM_UNAVAILABLE, "away", 1000), None, session_id=SID
            ),
        ),
        ("pong", pong_frame("p1", 1767000000123)),
        ("upstream", upstream_frame(SID, "unavailable")),
        (
            "accepted",
            encode_event(
                _event(
                    58,
                    message_accepted=pb.MessageAccepted(
                        message_id="5f0c", text="hello, what is 6 x 7?", run_id=RUN, seq=58
                    ),
                )
            ),
        ),
        (
            "run started",
            encode_event(
                _event(
                    59,
                    run_started=pb.RunStarted(
                        message_id="5f0c", assistant_message_id="a_" + RUN, model="demo"
                    ),
                )
            ),
        ),
        (
            "one delta",
            encode_event(_event(60, response_delta=pb.ResponseDelta(text="Let me ", step=0))),
        ),
        (
            "tool started",
            encode_event(
                _event(
                    61,
                    tool_execution=tool(
                        call_id="call_1",
                        tool_name="calculator",
                        started=pb.ToolStarted(arguments_json='{"expression": "6*7"}'),
                    ),
                )
            ),
        ),
        (
            "tool progress",
            encode_event(
                _event(
                    62,
                    tool_execution=tool(
                        call_id="call_1",
                        tool_name="calculator",
                        progress=pb.ToolProgress(fraction=0.5, note="half way"),
                    ),
                )
            ),
        ),
        (
            "tool output",
            encode_event(
                _event(
                    63,
                    tool_execution=tool(
                        call_id="call_1",
                        tool_name="calculator",
                        output=pb.ToolOutput(text="42\n", stream="stdout"),
                    ),
                )
            ),
        ),
        (
            "tool completed",
            encode_event(
                _event(
                    64,
                    tool_execution=tool(
                        call_id="call_1",
                        tool_name="calculator",
                        completed=pb.ToolCompleted(result="42", duration_ms=3.5),
                    ),
                )
            ),
        ),
        (
            "tool failed",
            encode_event(
                _event(
                    65,
                    tool_execution=tool(
                        call_id="call_2",
                        tool_name="glob",
                        failed=pb.ToolFailed(
                            code="timeout", message="too slow", duration_ms=1000.0
                        ),
                    ),
                )
            ),
        ),
        (
            "tool cancelled",
            encode_event(
                _event(
                    66,
                    tool_execution=tool(
                        call_id="call_3",
                        tool_name="long_task",
                        cancelled=pb.ToolCancelled(reason="requested"),
                    ),
                )
            ),
        ),
    ]
    words = "The answer is forty two, which the calculator confirms for you ".split(" ")
    for i, word in enumerate(words):
        seq = 67 + 3 * i
        frames.append(
            (
                f"delta batch {i}",
                delta_frame(
                    session_id=SID,
                    run_id=RUN,
                    from_seq=seq,
                    seq=seq + 2,
                    time_unix_ms=1_767_000_000_000 + seq,
                    text=f"{word} ",
                    step=1,
                ),
            )
        )
    end = 67 + 3 * len(words)
    frames += [
        (
            "run error",
            encode_event(
                _event(
                    end,
                    run_error=pb.RunError(
                        code="model_rate_limited",
                        message="slow down",
                        retryable=True,
                        retry_after_ms=2000,
                    ),
                )
            ),
        ),
        (
            "complete",
            encode_event(
                _event(
                    end + 1,
                    run_completed=pb.RunCompleted(
                        finish_reason=pb.FINISH_REASON_STOP,
                        usage=pb.Usage(input_tokens=12, output_tokens=40),
                        assistant_message_id="a_" + RUN,
                        text="Let me check. " + " ".join(words),
                        duration_ms=300.0,
                    ),
                )
            ),
        ),
        (
            "gap",
            FieldsFrame(
                {
                    "type": "chat:gap",
                    "session_id": SID,
                    "run_id": "",
                    "time_unix_ms": 1_767_000_000_600,
                    "after_seq": 3,
                    "first_seq": 900,
                }
            ),
        ),
    ]
    return frames


def client_frames() -> list[dict[str, Any]]:
    return [
        {"type": "auth", "id": "a1", "token": "eyJhbGciOiJIUzI1NiJ9.e30.sig"},
        {
            "type": "join",
            "id": "j1",
            "session_id": SID,
            "after_seq": 41,
            "deltas": "stream",
            "tool_output": "final",
        },
        {"type": "join", "id": "j2", "session_id": SID, "after_seq": 0},
        {"type": "leave", "id": "l1", "session_id": SID},
        {
            "type": "chat:message",
            "id": "m1",
            "session_id": SID,
            "message_id": "5f0c",
            "text": "hello ☃",
            "busy_policy": "queue",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        },
        {"type": "chat:cancel", "id": "c1", "session_id": SID, "run_id": RUN},
        {"type": "tool:cancel", "id": "c2", "session_id": SID, "call_id": "call_1"},
        {"type": "ping", "id": "p1", "ts": 1767000000123},
    ]


def build() -> dict[str, Any]:
    codec = ProtoCodec()
    server = [
        {
            "name": name,
            "json": frame.data(Wire.JSON).decode("utf-8"),
            "proto": base64.b64encode(frame.data(Wire.PROTO)).decode("ascii"),
        }
        for name, frame in server_frames()
    ]
    client = []
    for frame in client_frames():
        data = codec.encode(frame)
        assert isinstance(data, bytes)
        client.append({"frame": frame, "proto": base64.b64encode(data).decode("ascii")})
    return {"server": server, "client": client}


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    PATH.write_text(render(), encoding="utf-8")
    print(PATH)
