"""Accessibility of the chat UI, checked by axe-core (the engine behind most a11y tools).

The page is checked in its main states: empty, with a streamed reply and a
running tool card, and at phone size with the menu open. Serious and critical
violations fail the test; the report names the rule and the elements.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.ui import WAIT_MS, Edge, last_assistant, open_chat, screenshot, send

AXE = Path(__file__).resolve().parents[2] / "clients" / "web" / "node_modules" / "axe-core"


def violations(page: Page) -> list[str]:
    if not (AXE / "axe.min.js").exists():
        pytest.fail("axe-core is missing: run `make web` (npm ci in clients/web)")
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE / "axe.min.js"))
    found = page.evaluate(
        """async () => {
            const result = await axe.run(document, { resultTypes: ['violations'] });
            return result.violations
                .filter(v => v.impact === 'serious' || v.impact === 'critical')
                .map(v => v.id + ': ' + v.help + ' -> '
                          + v.nodes.map(n => n.target.join(' ')).join(', '));
        }"""
    )
    return list(found)


def test_no_serious_accessibility_violations(page: Page, edge: Edge) -> None:
    open_chat(page, edge)
    assert violations(page) == []
    send(page, "run a long task for 6 seconds")
    expect(page.get_by_test_id("tool-card").last.get_by_role("progressbar")).to_be_visible(
        timeout=WAIT_MS
    )
    assert violations(page) == []
    expect(last_assistant(page)).to_have_attribute("data-state", "complete", timeout=WAIT_MS)
    page.set_viewport_size({"width": 390, "height": 760})
    page.get_by_role("button", name="Conversations").click()
    expect(page.get_by_role("navigation", name="Conversations")).to_be_visible()
    screenshot(page, "phone-menu.png")
    assert violations(page) == []
    # The check can fail: a button with no name is caught.
    page.evaluate("() => document.body.appendChild(document.createElement('button'))")
    assert any(v.startswith("button-name") for v in violations(page))
