"""The chat UI in Chromium against the real agent service and edge.

What a user sees: a reply streaming in, a tool's progress bar moving and its
cancel, a stopped run, and a conversation that survives an edge restart, a page
reload and a message sent while the edge is down, with no text lost or doubled.
"""

from __future__ import annotations

import os
import re
import signal

import pytest
from playwright.sync_api import Page, WebSocket, expect

from tests.e2e.ui import (
    WAIT_MS,
    Edge,
    assistant_text,
    history,
    last_assistant,
    open_chat,
    role_of,
    screenshot,
    send,
    stored_assistant_text,
    wait_streaming_text,
)
from tests.support.timing import scaled


def test_reply_streams_in_with_typing_indicator(page: Page, edge: Edge) -> None:
    open_chat(page, edge)
    send(page, "Hello relay, how are **you**?")
    user = page.get_by_test_id("user-message").last
    expect(user.get_by_test_id("message-state")).to_have_text("Sent")
    wait_streaming_text(page, 60)
    first = len(assistant_text(page))
    expect(last_assistant(page).get_by_test_id("typing-indicator")).to_be_visible()
    screenshot(page, "streaming.png")
    # Still streaming, and more text than before: it arrives piece by piece.
    page.wait_for_function(
        """(n) => {
            const all = document.querySelectorAll('[data-testid=assistant-message]');
            const m = all[all.length - 1];
            return m.dataset.state === 'streaming' && m.innerText.trim().length > n + 5;
        }""",
        arg=first,
        timeout=WAIT_MS,
    )
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    expect(last_assistant(page).get_by_test_id("typing-indicator")).to_have_count(0)
    assert assistant_text(page) == stored_assistant_text(page)
    # The quoted **you** is rendered as Markdown, not shown as asterisks.
    expect(last_assistant(page).locator("strong")).to_have_text("you")
    # The sidebar names the conversation after its first message.
    expect(page.get_by_role("navigation", name="Conversations")).to_contain_text("Hello relay")
    screenshot(page, "complete.png")
    page.set_viewport_size({"width": 390, "height": 760})
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    screenshot(page, "phone.png")


PROGRESS_ABOVE = """(n) => {
    const bar = document.querySelector('[role=progressbar]');
    return bar !== null && Number(bar.getAttribute('aria-valuenow')) > n;
}"""


def test_tool_progress_moves_then_cancel(page: Page, edge: Edge) -> None:
    open_chat(page, edge)
    send(page, "run a long task for 20 seconds")
    card = page.get_by_test_id("tool-card").last
    expect(card).to_contain_text("long_task", timeout=WAIT_MS)
    bar = card.get_by_role("progressbar")
    page.wait_for_function(PROGRESS_ABOVE, arg=0, timeout=WAIT_MS)
    before = int(bar.get_attribute("aria-valuenow") or "0")
    page.wait_for_function(PROGRESS_ABOVE, arg=before, timeout=WAIT_MS)
    expect(card.get_by_test_id("tool-status")).to_have_text("running")
    card.get_by_text("Arguments").click()
    expect(card).to_contain_text('"seconds": 20')
    screenshot(page, "tool-progress.png")
    card.get_by_role("button", name="Cancel long_task").click()
    expect(card.get_by_test_id("tool-status")).to_have_text(
        re.compile("^cancelled"), timeout=WAIT_MS
    )
    expect(card.get_by_role("button", name="Cancel long_task")).to_have_count(0)
    # The run goes on without the tool and ends normally.
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    progress = int(bar.get_attribute("aria-valuenow") or "0")
    assert 0 < progress < 100, f"cancelled mid-way, progress {progress}"
    screenshot(page, "tool-cancelled.png")


def test_stop_button_cancels_the_run(page: Page, edge: Edge) -> None:
    open_chat(page, edge)
    send(page, "Tell me about the relay")
    wait_streaming_text(page, 10)
    stop = page.get_by_role("button", name="Stop")
    expect(stop).to_be_visible()
    stop.click()
    expect(last_assistant(page)).to_have_attribute("data-state", "cancelled", timeout=WAIT_MS)
    expect(last_assistant(page)).to_contain_text("Stopped")
    expect(stop).to_have_count(0)
    screenshot(page, "stopped.png")
    assert assistant_text(page) == stored_assistant_text(page)


def test_edge_restart_mid_stream_resumes_without_duplicates(page: Page, edge: Edge) -> None:
    open_chat(page, edge)
    send(page, "Keep talking while the edge restarts")
    wait_streaming_text(page, 10)
    edge.stop()
    badge = page.get_by_test_id("connection-badge")
    expect(badge).to_contain_text(re.compile("Reconnecting|Connecting"), timeout=WAIT_MS)
    screenshot(page, "reconnecting.png")
    edge.start()
    expect(badge).to_contain_text("Connected", timeout=WAIT_MS)
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    shown = assistant_text(page)
    assert shown == stored_assistant_text(page), "the UI text differs from the server's record"
    assert page.get_by_test_id("assistant-message").count() == 1
    assert page.get_by_test_id("user-message").count() == 1


def test_reload_mid_run_keeps_the_conversation_and_the_run(page: Page, edge: Edge) -> None:
    open_chat(page, edge)
    send(page, "Survive a reload please")
    wait_streaming_text(page, 10)
    page.reload()
    expect(page.get_by_test_id("user-message")).to_have_count(1, timeout=WAIT_MS)
    expect(page.get_by_test_id("user-message")).to_contain_text("Survive a reload please")
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    assert assistant_text(page) == stored_assistant_text(page)
    assert page.get_by_test_id("assistant-message").count() == 1


def test_message_sent_while_edge_is_down_is_delivered_once(page: Page, edge: Edge) -> None:
    open_chat(page, edge)
    edge.stop()
    badge = page.get_by_test_id("connection-badge")
    expect(badge).to_contain_text(re.compile("Reconnecting|Connecting"), timeout=WAIT_MS)
    send(page, "Sent while the edge was down")
    user = page.get_by_test_id("user-message").last
    expect(user).to_have_attribute("data-state", "queued")
    expect(user.get_by_test_id("message-state")).to_contain_text("Queued")
    screenshot(page, "queued-while-down.png")
    edge.start()
    expect(user).to_have_attribute("data-state", "sent", timeout=WAIT_MS)
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    users = [m for m in history(page)["messages"] if role_of(m) == "user"]
    assert [m["text"] for m in users] == ["Sent while the edge was down"]
    assert page.get_by_test_id("user-message").count() == 1


DISTANCE_FROM_BOTTOM = """() => {
    const log = document.querySelector('[role=log]');
    return log.scrollHeight - log.scrollTop - log.clientHeight;
}"""


def test_scroll_follows_new_text_unless_the_reader_scrolled_up(page: Page, edge: Edge) -> None:
    page.set_viewport_size({"width": 390, "height": 480})
    open_chat(page, edge)
    send(page, "First, fill the screen with a long message. " * 4)
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    assert page.evaluate(
        "() => { const l = document.querySelector('[role=log]'); "
        "return l.scrollHeight > l.clientHeight; }"
    ), "the conversation should overflow the log for this test"
    # Following: while the reply streams, the view stays at the bottom.
    send(page, "Now stream while I watch")
    wait_streaming_text(page, 20)
    assert page.evaluate(DISTANCE_FROM_BOTTOM) <= 48
    # Scrolled up: the view stays put and offers a button instead.
    page.evaluate("() => { document.querySelector('[role=log]').scrollTop = 0; }")
    new_messages = page.get_by_role("button", name=re.compile("New messages"))
    expect(new_messages).to_be_visible(timeout=WAIT_MS)
    assert page.evaluate("() => document.querySelector('[role=log]').scrollTop") == 0
    screenshot(page, "new-messages.png")
    new_messages.click()
    expect(new_messages).to_have_count(0)
    assert page.evaluate(DISTANCE_FROM_BOTTOM) <= 48


def test_tool_output_and_code_blocks(page: Page, edge: Edge) -> None:
    open_chat(page, edge)
    box = page.get_by_label("Message", exact=True)
    # Shift+Enter breaks lines inside the box; Enter sends the whole message.
    box.type("Run this:")
    box.press("Shift+Enter")
    box.type("```python")
    box.press("Shift+Enter")
    box.type("for i in range(3): print('line', i)")
    box.press("Shift+Enter")
    box.type("```")
    expect(box).to_have_value("Run this:\n```python\nfor i in range(3): print('line', i)\n```")
    box.press("Enter")
    card = page.get_by_test_id("tool-card").last
    expect(card).to_contain_text("python", timeout=WAIT_MS)
    expect(card.get_by_label("python output")).to_have_text(
        "line 0\nline 1\nline 2\n", timeout=WAIT_MS
    )
    expect(card.get_by_test_id("tool-status")).to_have_text(re.compile("^completed"))
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    expect(page.get_by_test_id("user-message").last).to_contain_text("```python")
    screenshot(page, "tool-output.png")


def test_failed_reply_and_refused_message_show_why(page: Page, edge: Edge) -> None:
    open_chat(page, edge)
    send(page, "/fail")
    reply = last_assistant(page)
    expect(reply).to_have_attribute("data-state", "failed", timeout=WAIT_MS)
    expect(reply.get_by_role("alert")).not_to_be_empty()
    # Larger than the edge's max_frame_bytes: refused before it is sent, with a retry.
    send(page, "x" * 70_000)
    user = page.get_by_test_id("user-message").last
    expect(user).to_have_attribute("data-state", "failed", timeout=WAIT_MS)
    expect(user.get_by_test_id("message-state")).to_contain_text("too long")
    retry = user.get_by_role("button", name="Retry")
    expect(retry).to_be_visible()
    screenshot(page, "failed.png")
    retry.click()
    expect(user).to_have_attribute("data-state", "failed")
    users = [m for m in history(page)["messages"] if role_of(m) == "user"]
    assert [m["text"] for m in users] == ["/fail"]


@pytest.mark.edge_args("--token-ttl-s", "4")
def test_token_is_refreshed_in_band_before_it_expires(page: Page, edge: Edge) -> None:
    sockets: list[str] = []
    auth_frames: list[str] = []

    def watch(ws: WebSocket) -> None:
        sockets.append(ws.url)
        ws.on("framesent", lambda p: auth_frames.append(str(p)) if '"auth"' in str(p) else None)

    page.on("websocket", watch)
    open_chat(page, edge)
    # Tokens live 4 s: by 6 s the first one is dead, and the socket must have
    # renewed its token in-band (new `auth` frames) without reconnecting.
    page.wait_for_timeout(scaled(6_000))
    assert len(auth_frames) >= 3, auth_frames
    assert len(sockets) == 1, sockets
    expect(page.get_by_test_id("connection-badge")).to_contain_text("Connected")
    send(page, "Still authorised?")
    expect(page.get_by_test_id("user-message").last).to_have_attribute("data-state", "sent")


def test_new_conversation_and_back_to_an_earlier_one(page: Page, edge: Edge) -> None:
    open_chat(page, edge)
    send(page, "First conversation here")
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    first_text = assistant_text(page)
    nav = page.get_by_role("navigation", name="Conversations")
    nav.get_by_role("button", name="+ New conversation").click()
    expect(page.get_by_test_id("user-message")).to_have_count(0)
    expect(page.get_by_label("Message", exact=True)).to_be_focused()
    expect(page.get_by_test_id("connection-badge")).to_contain_text("Connected", timeout=WAIT_MS)
    send(page, "Second conversation here")
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    items = nav.get_by_role("listitem")
    expect(items).to_have_count(2)
    expect(items.first).to_contain_text("Second conversation here")  # newest first
    nav.get_by_role("button", name=re.compile("^First conversation here")).click()
    expect(page.get_by_test_id("user-message")).to_have_count(1)
    expect(page.get_by_test_id("user-message")).to_contain_text("First conversation here")
    assert assistant_text(page) == first_text
    expect(page.get_by_test_id("connection-badge")).to_contain_text("Connected", timeout=WAIT_MS)
    # The earlier conversation is live again: it takes a new message.
    send(page, "Back in the first one")
    expect(page.get_by_test_id("assistant-message")).to_have_count(2, timeout=WAIT_MS)
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    assert assistant_text(page) == stored_assistant_text(page)


@pytest.mark.edge_args("--ping-interval-s", "2")
def test_heartbeat_finds_a_frozen_edge_and_comes_back(page: Page, edge: Edge) -> None:
    open_chat(page, edge)
    assert edge.proc is not None
    pid = edge.proc.process.pid
    badge = page.get_by_test_id("connection-badge")
    # SIGSTOP: the TCP connection stays open but nothing answers. The page's
    # heartbeat (a ping every heartbeat_ms = 2 s; a link silent for two of them is
    # dead, found at the tick after: within 3 intervals) must notice.
    os.kill(pid, signal.SIGSTOP)
    try:
        expect(badge).to_contain_text(
            re.compile("Reconnecting|Connecting"), timeout=scaled(3 * 2_000 + 3_000)
        )
        screenshot(page, "heartbeat-lost.png")
    finally:
        os.kill(pid, signal.SIGCONT)
    expect(badge).to_contain_text("Connected", timeout=WAIT_MS)
    send(page, "Alive again")
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)


def test_offline_waits_quietly_then_delivers_once_back_online(page: Page, edge: Edge) -> None:
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    open_chat(page, edge)
    page.context.set_offline(True)
    badge = page.get_by_test_id("connection-badge")
    expect(badge).to_contain_text("Offline: waiting for the network", timeout=WAIT_MS)
    send(page, "Written on a train in a tunnel")
    user = page.get_by_test_id("user-message").last
    expect(user).to_have_attribute("data-state", "queued")
    page.wait_for_timeout(3_000)  # quiet: no attempts while offline
    assert len(sockets) == 1, sockets
    screenshot(page, "offline.png")
    page.context.set_offline(False)
    expect(badge).to_contain_text("Connected", timeout=WAIT_MS)
    expect(user).to_have_attribute("data-state", "sent", timeout=WAIT_MS)
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    users = [m for m in history(page)["messages"] if role_of(m) == "user"]
    assert [m["text"] for m in users] == ["Written on a train in a tunnel"]


def test_two_tabs_on_one_conversation_see_the_same_reply(page: Page, edge: Edge) -> None:
    open_chat(page, edge)
    other = page.context.new_page()  # same browser profile: same storage and tokens
    other.goto(page.url)
    expect(other.get_by_test_id("connection-badge")).to_contain_text("Connected", timeout=WAIT_MS)
    send(page, "Both tabs should see this")
    for tab in (page, other):
        expect(tab.get_by_test_id("user-message")).to_have_count(1, timeout=WAIT_MS)
        expect(last_assistant(tab)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    assert assistant_text(other) == assistant_text(page) == stored_assistant_text(page)
    users = [m for m in history(page)["messages"] if role_of(m) == "user"]
    assert [m["text"] for m in users] == ["Both tabs should see this"]
    other.close()


def test_a_message_sent_during_a_reply_waits_its_turn(page: Page, edge: Edge) -> None:
    open_chat(page, edge)
    send(page, "First question")
    wait_streaming_text(page, 10)
    send(page, "Second question, asked while the first is answered")
    second = page.get_by_test_id("user-message").last
    expect(second.get_by_test_id("message-state")).to_contain_text("waiting for the current reply")
    # One reply being written: one typing indicator, on it.
    expect(page.get_by_test_id("typing-indicator")).to_have_count(1)
    screenshot(page, "queued-behind-a-run.png")
    expect(page.get_by_test_id("assistant-message")).to_have_count(2, timeout=WAIT_MS)
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    expect(second.get_by_test_id("message-state")).to_have_text("Sent")
    # In order: question, its answer, question, its answer.
    roles = page.locator("[data-testid=user-message], [data-testid=assistant-message]")
    expect(roles).to_have_count(4)
    texts = [t.split("\n")[0] for t in roles.all_inner_texts()]
    assert texts[0] == "First question"
    assert texts[1].startswith("You said: “First question”")
    assert texts[2].startswith("Second question")
    assert texts[3].startswith("You said: “Second question")
