"""The real agent service and the real edge, on 127.0.0.1 at free ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.edge import EdgeProcess, start_edge
from tests.support.service import ServiceProcess, start_agent_service

# About 0.2 s per reply: long enough to cut mid-stream, short enough for a fast suite.
AGENT_ARGS = ("--demo-tokens-per-s", "200", "--demo-reply-words", "40")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    proc = start_agent_service(tmp_path_factory.mktemp("agent"), *AGENT_ARGS)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def edge(agent: ServiceProcess) -> Iterator[EdgeProcess]:
    proc = start_edge(agent.address)
    yield proc
    proc.stop()
