"""What the browser tests do and read, in a user's terms, shared by the e2e modules."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Locator, Page, expect

from tests.support.edge import EdgeProcess, start_edge
from tests.support.service import ServiceProcess, start_agent_service
from tests.support.timing import scaled

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "screenshots"
DIST = REPO / "clients" / "web" / "dist"

# About 12 words a second and 48-word replies: a reply streams for ~4 s, long
# enough to stop, reload or restart the edge in the middle of it.
SERVICE_ARGS = ("--demo-tokens-per-s", "12", "--demo-reply-words", "48")

# Drain quickly on SIGTERM so restarts stay short.
EDGE_ARGS = ("--static-dir", str(DIST), "--shutdown-timeout-s", "1")


class Edge:
    """The edge under test, restartable on the same port (the page keeps its URL)."""

    def __init__(self, upstream: str, *extra_args: str) -> None:
        self.upstream = upstream
        self.args = (*EDGE_ARGS, *extra_args)
        self.proc: EdgeProcess | None = start_edge(upstream, *self.args)
        self.url = self.proc.url
        self.port = self.proc.port

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def start(self) -> None:
        assert self.proc is None, "already running"
        self.proc = start_edge(self.upstream, *self.args, listen=f"127.0.0.1:{self.port}")


class Service:
    """The agent service, restartable on the same port and store."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.proc: ServiceProcess | None = start_agent_service(tmp_path, *SERVICE_ARGS)
        self.address = self.proc.address
        self.store_path = self.proc.store_path

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye (a crash)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc = None

    def start(self) -> None:
        assert self.proc is None, "already running"
        self.proc = start_agent_service(
            self.tmp_path, *SERVICE_ARGS, store_path=self.store_path, listen=self.address
        )

    def kill_and_restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


WAIT_MS = scaled(30_000)


def open_chat(page: Page, edge: Edge) -> None:
    page.goto(edge.url + "/")
    expect(page.get_by_test_id("connection-badge")).to_contain_text("Connected", timeout=WAIT_MS)


def send(page: Page, text: str) -> None:
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")
    expect(box).to_have_value("")


def last_assistant(page: Page) -> Locator:
    return page.get_by_test_id("assistant-message").last


def wait_streaming_text(page: Page, min_chars: int = 1) -> None:
    """Wait until the last assistant message is streaming and shows at least min_chars."""
    page.wait_for_function(
        """(min) => {
            const all = document.querySelectorAll('[data-testid=assistant-message]');
            const m = all[all.length - 1];
            return m && m.dataset.state === 'streaming' && m.innerText.trim().length >= min;
        }""",
        arg=min_chars,
        timeout=WAIT_MS,
    )


def assistant_text(page: Page) -> str:
    texts = last_assistant(page).get_by_test_id("assistant-text").all_inner_texts()
    return normalise(" ".join(texts))


def normalise(text: str) -> str:
    """Whitespace folded and Markdown emphasis marks dropped (the UI renders them)."""
    return re.sub(r"\s+", " ", text.replace("**", "")).strip()


def history(page: Page) -> dict:
    """GET /api/sessions/{id}/messages with the page's own token: the server's record."""
    return page.evaluate(
        """async () => {
            const sid = location.hash.replace(/^#\\/?s\\//, '');
            const { token } = JSON.parse(localStorage.getItem('agent-relay:token:' + sid));
            const r = await fetch('/api/sessions/' + sid + '/messages',
                                  { headers: { authorization: 'Bearer ' + token } });
            return await r.json();
        }"""
    )


def role_of(message: dict) -> str:
    return str(message.get("role", "")).lower().replace("role_", "")


def stored_assistant_text(page: Page) -> str:
    messages = [m for m in history(page)["messages"] if role_of(m) == "assistant"]
    return normalise(messages[-1].get("text", "")) if messages else ""


def forget_saved_conversation(page: Page) -> None:
    """Drop this browser's copy of the open conversation: the next load rebuilds it from
    the server's history (as a second browser of the same user would)."""
    page.evaluate(
        """() => {
            const sid = location.hash.replace(/^#\\/?s\\//, '');
            localStorage.removeItem('agent-relay:conversation:' + sid);
        }"""
    )


def wait_for_offline_shell(page: Page) -> None:
    """Wait until the service worker controls the page and holds the built files."""
    page.wait_for_function(
        """async () => {
            if (!navigator.serviceWorker.controller) return false;
            const keys = await caches.keys();
            for (const k of keys) {
                if (!k.startsWith('agent-relay-shell-')) continue;
                const cache = await caches.open(k);
                if ((await cache.keys()).length >= 4) return true;
            }
            return false;
        }""",
        timeout=WAIT_MS,
    )


def screenshot(page: Page, name: str) -> None:
    """Save a screenshot of a main state under docs/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name))
