"""The UI when the agent service itself dies mid-reply (kill -9) and comes back.

The edge reconnects upstream; the page learns of the gap, reloads history and
shows the reply as interrupted, with the text the service had kept. A new
message then works as usual.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.ui import (
    WAIT_MS,
    Edge,
    Service,
    last_assistant,
    open_chat,
    screenshot,
    send,
    stored_assistant_text,
    wait_streaming_text,
)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    s = Service(tmp_path)
    yield s
    s.stop()


def test_service_killed_mid_reply_shows_it_interrupted_then_carries_on(
    page: Page, edge: Edge, service: Service
) -> None:
    open_chat(page, edge)
    send(page, "Say something long before the crash")
    # Past the service's periodic flush of partial text (about a second).
    wait_streaming_text(page, 120)
    service.kill_and_restart()
    reply = last_assistant(page)
    expect(reply).to_have_attribute("data-state", "interrupted", timeout=WAIT_MS)
    expect(reply.get_by_role("alert")).to_have_text(
        "Interrupted: The service stopped during this reply."
    )
    expect(reply).to_contain_text("You said")
    expect(page.get_by_role("button", name="Stop")).to_have_count(0)
    screenshot(page, "service-restarted.png")
    send(page, "Are you back?")
    expect(page.get_by_test_id("assistant-message")).to_have_count(2, timeout=WAIT_MS)
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    assert stored_assistant_text(page).startswith("You said: “Are you back?”")
