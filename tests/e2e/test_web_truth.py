"""The chat UI tells the truth through crashes and outages, and does what a chat UI should.

In Chromium against the real agent service and edge: how each tool call ended, live
and rebuilt from history after a crash; the agent service's state in the badge and a
banner; the app starting from its service worker while the edge is down; a prompt
reconnect after a long outage; the phone menu; the conversation list across tabs and
from the server; focus after Stop and Cancel; copy, retry, edit and resend; a favicon.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, Response, expect

from tests.e2e.ui import (
    WAIT_MS,
    Edge,
    Service,
    assistant_text,
    forget_saved_conversation,
    history,
    last_assistant,
    open_chat,
    role_of,
    screenshot,
    send,
    wait_for_offline_shell,
    wait_streaming_text,
)
from tests.support.timing import scaled


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    s = Service(tmp_path)
    yield s
    s.stop()


# A running card (cards that ended keep the bar where they stopped) that moved.
PROGRESS_ABOVE_ZERO = """() => {
    const bars = document.querySelectorAll('[data-status=progress] [role=progressbar]');
    const bar = bars[bars.length - 1];
    return bar !== undefined && Number(bar.getAttribute('aria-valuenow')) > 0;
}"""


def composer(page: Page):
    return page.get_by_label("Message", exact=True)


def tool_cards(page: Page) -> list[tuple[str, str]]:
    """(tool name, status text) of every card, in order."""
    cards = page.get_by_test_id("tool-card")
    return [
        (
            card.locator(".tool-name").inner_text(),
            card.get_by_test_id("tool-status").inner_text(),
        )
        for card in cards.all()
    ]


def test_each_tool_call_ends_as_it_did_live_and_after_a_crash_in_history(
    page: Page, edge: Edge, service: Service
) -> None:
    open_chat(page, edge)
    # A failed call, live: its error, no bar.
    send(page, "calc 1 / 0")
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    failed = page.get_by_test_id("tool-card").last
    expect(failed.get_by_test_id("tool-status")).to_have_text(re.compile("^failed"))
    expect(failed.get_by_role("alert")).not_to_be_empty()
    # An instant call: no "in 0.0s", no full bar.
    send(page, "calc 2 * (3 + 4)")
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    instant = page.get_by_test_id("tool-card").last
    expect(instant.get_by_test_id("tool-status")).to_have_text("completed")
    expect(instant.get_by_role("progressbar")).to_have_count(0)
    # A call cancelled on its own; the keyboard stays in the composer.
    send(page, "run a long task for 30 seconds")
    page.wait_for_function(PROGRESS_ABOVE_ZERO, timeout=WAIT_MS)
    page.get_by_test_id("tool-card").last.get_by_role("button", name="Cancel long_task").click()
    expect(composer(page)).to_be_focused()
    expect(page.get_by_test_id("tool-card").last.get_by_test_id("tool-status")).to_have_text(
        "cancelled", timeout=WAIT_MS
    )
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    # A call running when the service dies.
    send(page, "run a long task for 60 seconds")
    page.wait_for_function(PROGRESS_ABOVE_ZERO, timeout=WAIT_MS)
    service.kill()
    badge = page.get_by_test_id("connection-badge")
    expect(badge).to_have_text(re.compile("Agent service unavailable"), timeout=WAIT_MS)
    expect(badge).to_have_attribute("data-state", "degraded")
    banner = page.get_by_test_id("outage-banner")
    expect(banner).to_contain_text("The agent service is unavailable")
    expect(page.get_by_test_id("typing-indicator")).to_have_count(0)
    expect(page.get_by_role("button", name="Stop")).to_have_count(0)
    expect(page.get_by_role("button", name="Cancel long_task")).to_have_count(0)
    expect(last_assistant(page).get_by_test_id("reply-paused")).to_be_visible()
    # The banner stays while the service is down (a passing notice went after 6 s).
    page.wait_for_timeout(scaled(7_000))
    expect(banner).to_be_visible()
    screenshot(page, "service-down.png")
    service.start()
    expect(badge).to_have_text(re.compile("^Connected"), timeout=WAIT_MS)
    expect(banner).to_have_count(0)
    running = page.get_by_test_id("tool-card").last
    expect(running.get_by_test_id("tool-status")).to_have_text("interrupted", timeout=WAIT_MS)
    expect(running.get_by_role("button", name=re.compile("Cancel"))).to_have_count(0)
    expect(last_assistant(page)).to_have_attribute("data-state", "interrupted")
    live = tool_cards(page)
    screenshot(page, "tool-interrupted.png")
    # The same conversation rebuilt from the server's history alone.
    forget_saved_conversation(page)
    page.reload()
    expect(page.get_by_test_id("tool-card")).to_have_count(4, timeout=WAIT_MS)
    rebuilt = tool_cards(page)
    assert rebuilt == live  # durations too: history keeps them
    assert [(name, status.split(" in ")[0]) for name, status in rebuilt] == [
        ("calculator", "failed"),
        ("calculator", "completed"),
        ("long_task", "cancelled"),
        ("long_task", "interrupted"),
    ]
    cards = page.get_by_test_id("tool-card")
    expect(cards.nth(0).get_by_role("alert")).to_have_text(re.compile(r"\w+: .+"))
    expect(cards.nth(1).get_by_role("progressbar")).to_have_count(0)
    expect(cards.nth(3).get_by_role("button", name=re.compile("Cancel"))).to_have_count(0)
    expect(last_assistant(page)).to_have_attribute("data-state", "interrupted")
    expect(page.get_by_role("button", name="Stop")).to_have_count(0)
    screenshot(page, "history-rebuilt.png")


def test_reload_while_the_edge_is_down_starts_from_the_cache_and_reconnects_by_itself(
    page: Page, edge: Edge
) -> None:
    open_chat(page, edge)
    send(page, "Remember me while the edge is away")
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    reply = assistant_text(page)
    wait_for_offline_shell(page)
    edge.stop()
    page.reload()
    expect(page.get_by_test_id("user-message")).to_contain_text(
        "Remember me while the edge is away"
    )
    assert assistant_text(page) == reply
    banner = page.get_by_test_id("outage-banner")
    expect(banner).to_contain_text("The server cannot be reached", timeout=WAIT_MS)
    send(page, "Written while the edge is down")
    queued = page.get_by_test_id("user-message").last
    expect(queued).to_have_attribute("data-state", "queued")
    screenshot(page, "edge-down-reload.png")
    edge.start()  # no click: the page finds the edge on its own
    expect(page.get_by_test_id("connection-badge")).to_have_text(
        re.compile("^Connected"), timeout=WAIT_MS
    )
    expect(queued).to_have_attribute("data-state", "sent", timeout=WAIT_MS)
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    users = [m["text"] for m in history(page)["messages"] if role_of(m) == "user"]
    assert users == ["Remember me while the edge is away", "Written while the edge is down"]


COUNTDOWN = re.compile(r"Reconnecting in (\d+)s")


def test_after_a_long_outage_it_reconnects_before_its_backoff_timer(page: Page, edge: Edge) -> None:
    open_chat(page, edge)
    edge.stop()
    badge = page.get_by_test_id("connection-badge")
    # Wait until the backoff has grown: the next attempt is many seconds away.
    deadline = time.monotonic() + scaled(120)
    seconds_left = 0
    while time.monotonic() < deadline:
        match = COUNTDOWN.search(badge.inner_text())
        if match and int(match.group(1)) >= 10:
            seconds_left = int(match.group(1))
            break
        page.wait_for_timeout(250)
    assert seconds_left >= 10, "the backoff never grew past 10 s"
    started = time.monotonic()
    edge.start()
    expect(badge).to_have_text(re.compile("^Connected"), timeout=WAIT_MS)
    waited = time.monotonic() - started
    # The page's own timer fires no earlier than seconds_left - 1 after it was read (before
    # the edge started): coming back well before that is the probe's doing.
    print(f"reconnected {waited:.1f} s after the edge was back; the backoff said {seconds_left} s")
    assert waited < seconds_left - 3


def test_phone_menu_closes_on_escape_and_on_a_tap_outside(page: Page, edge: Edge) -> None:
    page.set_viewport_size({"width": 390, "height": 760})
    open_chat(page, edge)
    menu = page.get_by_role("button", name="Conversations")
    nav = page.get_by_role("navigation", name="Conversations")
    menu.click()
    expect(nav).to_be_visible()
    page.keyboard.press("Escape")
    expect(nav).to_be_hidden()
    expect(menu).to_be_focused()
    expect(menu).to_have_attribute("aria-expanded", "false")
    menu.click()
    expect(nav).to_be_visible()
    box = page.get_by_role("log", name="Messages").bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] - 20)
    expect(nav).to_be_hidden()
    # A tap inside the menu keeps it open.
    menu.click()
    nav.get_by_text("Names and removals are kept in this browser only.").click()
    expect(nav).to_be_visible()


def test_the_list_follows_other_tabs_and_renames_and_removes(page: Page, edge: Edge) -> None:
    open_chat(page, edge)
    send(page, "A first conversation")
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    other = page.context.new_page()
    other.goto(page.url)
    other_nav = other.get_by_role("navigation", name="Conversations")
    expect(other_nav.get_by_role("listitem")).to_have_count(1, timeout=WAIT_MS)
    nav = page.get_by_role("navigation", name="Conversations")
    nav.get_by_role("button", name="+ New conversation").click()
    expect(nav.get_by_role("listitem")).to_have_count(2, timeout=WAIT_MS)
    expect(other_nav.get_by_role("listitem")).to_have_count(2, timeout=WAIT_MS)  # no reload
    nav.get_by_role("button", name="Rename A first conversation").click()
    field = nav.get_by_label("New name for A first conversation")
    field.fill("Renamed in tab one")
    field.press("Enter")
    expect(nav).to_contain_text("Renamed in tab one")
    expect(other_nav).to_contain_text("Renamed in tab one", timeout=WAIT_MS)
    screenshot(page, "conversation-list.png")
    other_nav.get_by_role("button", name="Remove Renamed in tab one").click()
    expect(other_nav).to_contain_text("The server keeps it")
    other_nav.get_by_role("button", name="Remove", exact=True).click()
    expect(other_nav.get_by_role("listitem")).to_have_count(1)
    expect(nav.get_by_role("listitem")).to_have_count(1, timeout=WAIT_MS)
    expect(nav).not_to_contain_text("Renamed in tab one")
    # Removed here only: the server still lists it, and the list does not bring it back.
    page.reload()
    expect(page.get_by_test_id("connection-badge")).to_contain_text("Connected", timeout=WAIT_MS)
    page.wait_for_timeout(scaled(1_000))
    expect(nav.get_by_role("listitem")).to_have_count(1)
    other.close()


def test_the_list_holds_the_servers_conversations_this_browser_forgot(
    page: Page, edge: Edge
) -> None:
    open_chat(page, edge)
    send(page, "Older conversation")
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    nav = page.get_by_role("navigation", name="Conversations")
    nav.get_by_role("button", name="+ New conversation").click()
    expect(nav.get_by_role("listitem")).to_have_count(2, timeout=WAIT_MS)
    # This browser forgets the older one (its list entry and its saved copy).
    page.evaluate(
        """() => {
            const sid = location.hash.replace(/^#\\/?s\\//, '');
            const list = JSON.parse(localStorage.getItem('agent-relay:sessions'));
            localStorage.setItem('agent-relay:sessions',
                                 JSON.stringify(list.filter(s => s.sessionId === sid)));
            for (const s of list) {
                if (s.sessionId === sid) continue;
                localStorage.removeItem('agent-relay:conversation:' + s.sessionId);
            }
        }"""
    )
    page.reload()
    expect(nav.get_by_role("listitem")).to_have_count(2, timeout=WAIT_MS)
    nav.get_by_role("button", name=re.compile("^Older conversation")).click()
    expect(page.get_by_test_id("user-message")).to_contain_text(
        "Older conversation", timeout=WAIT_MS
    )
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)


def test_stop_then_retry_edit_and_resend_and_copy(page: Page, edge: Edge) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    open_chat(page, edge)
    send(page, "Tell me a long story")
    wait_streaming_text(page, 10)
    page.get_by_role("button", name="Stop").click()
    expect(composer(page)).to_be_focused()
    expect(last_assistant(page)).to_have_attribute("data-state", "cancelled", timeout=WAIT_MS)
    # Retry the stopped reply: the question goes again, and is answered in full.
    last_assistant(page).get_by_role("button", name="Retry").click()
    expect(page.get_by_test_id("user-message")).to_have_count(2, timeout=WAIT_MS)
    expect(page.get_by_test_id("assistant-message")).to_have_count(2, timeout=WAIT_MS)
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    expect(last_assistant(page).get_by_role("button", name="Retry")).to_have_count(0)
    # Copy the reply.
    last_assistant(page).get_by_role("button", name="Copy the reply").click()
    expect(last_assistant(page).get_by_role("button", name="Copy the reply")).to_have_text("Copied")
    copied = page.evaluate("() => navigator.clipboard.readText()")
    assert " ".join(copied.replace("**", "").split()) == assistant_text(page)
    # Only the last message of the user can be edited; editing fills the composer.
    users = page.get_by_test_id("user-message")
    expect(users.first.get_by_role("button", name="Edit your last message")).to_have_count(0)
    users.last.get_by_role("button", name="Edit your last message").click()
    expect(composer(page)).to_have_value("Tell me a long story")
    expect(composer(page)).to_be_focused()
    composer(page).press("End")
    composer(page).type(", with a happy end")
    screenshot(page, "edit-and-resend.png")
    composer(page).press("Enter")
    expect(users).to_have_count(3)
    expect(users.last).to_contain_text("Tell me a long story, with a happy end")
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    texts = [m["text"] for m in history(page)["messages"] if role_of(m) == "user"]
    assert texts == [
        "Tell me a long story",
        "Tell me a long story",
        "Tell me a long story, with a happy end",
    ]


def test_a_favicon_and_no_missing_file(page: Page, edge: Edge) -> None:
    missing: list[str] = []

    def check(response: Response) -> None:
        if response.status >= 400:
            missing.append(f"{response.status} {response.url}")

    page.on("response", check)
    open_chat(page, edge)
    expect(page.get_by_test_id("connection-badge")).to_contain_text("Connected")
    icon = page.evaluate("() => document.querySelector('link[rel=icon]').href")
    assert page.request.get(icon).status == 200
    ico = page.request.get(edge.url + "/favicon.ico")
    assert ico.status == 200 and ico.body()[:4] == b"\x00\x00\x01\x00"
    assert missing == []
