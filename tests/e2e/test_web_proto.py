"""The chat UI in Chromium on the binary wire (`?wire=proto`: agent-relay.v1+proto) against
the real agent service and edge: every frame either way is binary protobuf, a reply streams
in, and a restart of the edge mid-reply resumes by seq with nothing lost or doubled."""

from __future__ import annotations

import re

from playwright.sync_api import Page, WebSocket, expect

from agent_relay.v1 import edge_pb2 as epb
from tests.e2e.ui import (
    WAIT_MS,
    Edge,
    assistant_text,
    last_assistant,
    send,
    stored_assistant_text,
    wait_streaming_text,
)


class Frames:
    """Every frame of every socket the page opens, as Playwright saw it on the wire."""

    def __init__(self, page: Page) -> None:
        self.received: list[str | bytes] = []
        self.sent: list[str | bytes] = []
        page.on("websocket", self._watch)

    def _watch(self, ws: WebSocket) -> None:
        ws.on("framereceived", lambda payload: self.received.append(payload))
        ws.on("framesent", lambda payload: self.sent.append(payload))

    def kinds(self) -> list[str | None]:
        """The Frame.kind of every frame received (all must be binary)."""
        assert all(isinstance(f, bytes) for f in self.received), [
            f for f in self.received if not isinstance(f, bytes)
        ][:3]
        return [epb.Frame.FromString(f).WhichOneof("kind") for f in self.received]


def open_chat(page: Page, edge: Edge, query: str) -> None:
    page.goto(f"{edge.url}/{query}")
    expect(page.get_by_test_id("connection-badge")).to_contain_text("Connected", timeout=WAIT_MS)


def test_a_reply_streams_in_over_binary_frames(page: Page, edge: Edge) -> None:
    frames = Frames(page)
    open_chat(page, edge, "?wire=proto")
    send(page, "Hello over protobuf")
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    assert assistant_text(page) == stored_assistant_text(page)
    kinds = frames.kinds()
    assert kinds[0] == "welcome"
    welcome = epb.Frame.FromString(frames.received[0]).welcome  # type: ignore[arg-type]
    assert welcome.protocol == "agent-relay.v1+proto"
    assert "ack" in kinds and "event" in kinds
    assert "response" in kinds or kinds.count("event") > 3  # the deltas, batched or not
    assert frames.sent and all(isinstance(f, bytes) for f in frames.sent)
    sent = [epb.Frame.FromString(f).WhichOneof("kind") for f in frames.sent]  # type: ignore[arg-type]
    assert sent[:2] == ["auth", "join"] and "chat_message" in sent


def test_an_edge_restart_mid_reply_resumes_by_seq_on_the_binary_wire(
    page: Page, edge: Edge
) -> None:
    frames = Frames(page)
    open_chat(page, edge, "?wire=proto")
    send(page, "Keep talking in binary while the edge restarts")
    wait_streaming_text(page, 10)
    edge.stop()
    badge = page.get_by_test_id("connection-badge")
    expect(badge).to_contain_text(re.compile("Reconnecting|Connecting"), timeout=WAIT_MS)
    edge.start()
    expect(badge).to_contain_text("Connected", timeout=WAIT_MS)
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    assert assistant_text(page) == stored_assistant_text(page), "the UI differs from the record"
    assert page.get_by_test_id("assistant-message").count() == 1
    joins = [
        epb.Frame.FromString(f).join  # type: ignore[arg-type]
        for f in frames.sent
        if epb.Frame.FromString(f).WhichOneof("kind") == "join"  # type: ignore[arg-type]
    ]
    assert len(joins) >= 2 and joins[-1].after_seq > 0  # the second socket resumed by seq
    assert frames.kinds().count("welcome") >= 2


def test_without_a_query_the_page_speaks_its_default_wire(page: Page, edge: Edge) -> None:
    frames = Frames(page)
    open_chat(page, edge, "")
    send(page, "Which wire?")
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    # The default is JSON: measured faster to decode in Chromium (docs/protocol.md).
    assert frames.received and all(isinstance(f, str) for f in frames.received)
