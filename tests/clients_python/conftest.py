"""Fixtures that start the real agent service (and edge) for the Python client's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agent_relay_client.grpc import AgentClient
from tests.support.edge import EdgeProcess, start_edge
from tests.support.service import ServiceProcess, start_agent_service

# 300 words per second: a default 40-word reply takes ~0.15 s; long replies are asked for
# with --demo-reply-words in the tests that need time to cut or cancel mid-way.
SERVICE_ARGS = ("--demo-tokens-per-s", "150", "--demo-reply-words", "120")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One agent service for the module, with a small workspace."""
    root: Path = tmp_path_factory.mktemp("client-service")
    workspace = root / "workspace"
    workspace.mkdir()
    (workspace / "notes.txt").write_text("alpha\nTODO: beta\n")
    proc = start_agent_service(root, *SERVICE_ARGS, "--workspace-dir", str(workspace))
    yield proc
    proc.stop()


@pytest.fixture
async def agent(service: ServiceProcess) -> AsyncIterator[AgentClient]:
    async with AgentClient(service.address) as client:
        yield client


@pytest.fixture(scope="module")
def edge(service: ServiceProcess) -> Iterator[EdgeProcess]:
    """One edge in front of the module's service."""
    proc = start_edge(service.address)
    yield proc
    proc.stop()
