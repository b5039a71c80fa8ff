"""What a user waits for in the browser: Enter -> "Sent", -> first reply text, -> reply complete.

Not a test (no assertion): a measurement, printed. Starts its own agent service
(demo model at full speed, 40-word replies) and edge on 127.0.0.1, drives
Chromium, and times each stage inside the page with `performance.now()` and a
MutationObserver, so the figures are what the page shows, not what the socket
carries. Printed beside a baseline measured in the same run: a bare
WebSocket's app ping -> pong from the same page to the same edge. Run from the repository root:

    .venv/bin/python -m tests.e2e.measure_latency [rounds]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.e2e.ui import Edge
from tests.support.service import start_agent_service

# Types a message, presses Enter, and resolves with [sent, first text, complete] in ms.
ROUND = """(text) => new Promise((resolve) => {
  const box = document.querySelector('#composer-input');
  const before = document.querySelectorAll('[data-testid=assistant-message]').length;
  const t0 = performance.now();
  let sent, first;
  const observer = new MutationObserver(() => {
    const users = document.querySelectorAll('[data-testid=user-message]');
    const user = users[users.length - 1];
    if (sent === undefined && user && user.dataset.state === 'sent') sent = performance.now() - t0;
    const all = document.querySelectorAll('[data-testid=assistant-message]');
    const reply = all.length > before ? all[all.length - 1] : null;
    if (first === undefined && reply && reply.innerText.trim()) first = performance.now() - t0;
    if (reply && reply.dataset.state === 'complete' && sent !== undefined && first !== undefined) {
      observer.disconnect();
      resolve([sent, first, performance.now() - t0]);
    }
  });
  observer.observe(document.body,
                   { subtree: true, childList: true, attributes: true, characterData: true });
  const setValue = Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, 'value').set;
  setValue.call(box, text);
  box.dispatchEvent(new Event('input', { bubbles: true }));
  box.dispatchEvent(new KeyboardEvent('keydown', { key: 'Enter', bubbles: true }));
})"""


# The floor, measured in the same page: a bare WebSocket's app ping -> pong to the edge.
BASELINE = """(rounds) => new Promise((resolve) => {
  const ws = new WebSocket(location.origin.replace(/^http/, 'ws') + '/ws', ['agent-relay.v1']);
  const times = [];
  let t0 = 0;
  const ping = () => {
    t0 = performance.now();
    ws.send(JSON.stringify({type: 'ping', id: 'b', ts: 0}));
  };
  ws.onmessage = (e) => {
    const frame = JSON.parse(e.data);
    if (frame.type === 'welcome') return ping();
    if (frame.type !== 'pong') return;
    times.push(performance.now() - t0);
    if (times.length === rounds) { ws.close(); resolve(times); } else ping();
  };
})"""


def main(rounds: int = 30) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        service = start_agent_service(
            Path(tmp), "--demo-tokens-per-s", "0", "--demo-reply-words", "40"
        )
        edge = Edge(service.address)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_context().new_page()
                page.goto(edge.url + "/")
                page.wait_for_selector("text=Connected")
                rows = [page.evaluate(ROUND, f"hello number {i}") for i in range(rounds + 3)]
                baseline = sorted(page.evaluate(BASELINE, rounds + 3)[3:])
                browser.close()
        finally:
            edge.stop()
            service.stop()
    rows = rows[3:]  # warm-up
    print(
        f"{'baseline ping':16} p50 {statistics.median(baseline):6.1f} ms"
        f"   (a bare WebSocket app ping -> pong to the same edge, same page)"
    )
    for name, k in (("Enter -> Sent", 0), ("-> first text", 1), ("-> complete", 2)):
        values = sorted(row[k] for row in rows)
        p90 = values[int(0.9 * (len(values) - 1))]
        print(
            f"{name:16} p50 {statistics.median(values):6.1f} ms   p90 {p90:6.1f} ms"
            f"   max {values[-1]:6.1f} ms   (n={len(values)})"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
