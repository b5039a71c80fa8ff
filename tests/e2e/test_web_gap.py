"""The UI after a gap: the service kept too few events to replay what the page missed.

With a 10-event window, a page that is cut off for a few seconds mid-reply comes
back to a `chat:gap`: it must reload history and still end with exactly the
server's text, neither losing nor doubling a word.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, WebSocket, expect

from tests.e2e.ui import (
    SERVICE_ARGS,
    WAIT_MS,
    Edge,
    assistant_text,
    last_assistant,
    open_chat,
    send,
    stored_assistant_text,
    wait_streaming_text,
)
from tests.support.service import ServiceProcess, start_agent_service


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    proc = start_agent_service(
        tmp_path_factory.mktemp("e2e-gap"),
        *SERVICE_ARGS,
        *("--retention-events", "10", "--merge-delta-chars", "0"),  # one event per word
    )
    yield proc
    proc.stop()


def test_gap_reloads_history_and_finishes_the_reply(page: Page, edge: Edge) -> None:
    received: list[str] = []

    def watch(ws: WebSocket) -> None:
        ws.on("framereceived", lambda p: received.append(str(p)))

    page.on("websocket", watch)
    open_chat(page, edge)
    send(page, "Talk through a gap")
    wait_streaming_text(page, 10)
    edge.stop()
    # 12 words a second: 3 s away is well past the 10 retained events.
    page.wait_for_timeout(3_000)
    edge.start()
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    assert any('"chat:gap"' in frame for frame in received), "the edge should have sent a gap"
    assert assistant_text(page) == stored_assistant_text(page)
    assert page.get_by_test_id("assistant-message").count() == 1
    assert page.get_by_test_id("user-message").count() == 1
