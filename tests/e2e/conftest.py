"""Browser end-to-end fixtures: the real agent service and edge, and Debian's Chromium.

The edge serves the built web UI (clients/web/dist) at `/`, as in production.
Each test gets its own edge (some restart it) and a fresh browser context (its
own localStorage, so its own anonymous user and conversation).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from tests.e2e.ui import DIST, SERVICE_ARGS, Edge
from tests.support.service import ServiceProcess, start_agent_service
from tests.support.timing import scaled

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "clients" / "web"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _build_web() -> None:
    """Build the UI if no build exists (`make test` builds it first; this covers bare pytest)."""
    if (DIST / "index.html").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is needed to build clients/web (or run `make web` first)")
    if not (WEB / "node_modules").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True)
    subprocess.run([npm, "run", "build:app"], cwd=WEB, check=True)


@pytest.fixture(scope="session")
def web_dist() -> Path:
    _build_web()
    return DIST


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    proc = start_agent_service(tmp_path_factory.mktemp("e2e-service"), *SERVICE_ARGS)
    yield proc
    proc.stop()


@pytest.fixture
def edge(request: pytest.FixtureRequest, service: ServiceProcess, web_dist: Path) -> Iterator[Edge]:
    """The edge; a test marked `edge_args(...)` adds flags."""
    marker = request.node.get_closest_marker("edge_args")
    e = Edge(service.address, *(marker.args if marker else ()))
    yield e
    e.stop()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "edge_args(*flags): extra command-line flags for the edge")


# Module scope, not session: Playwright's sync API keeps an asyncio loop running
# in this thread while it is open, and the asyncio tests of other folders that
# run after these would find it ("cannot be called from a running event loop").
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    b = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield b
    b.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1100, "height": 760})
    ctx.set_default_timeout(scaled(15_000))
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()
