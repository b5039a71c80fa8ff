"""Fixtures that start the real agent service and connect real gRPC clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from agent_relay.v1 import agent_pb2_grpc
from tests.support.service import ServiceProcess, start_agent_service

# 40 words per reply at 200 words per second: a reply takes about 0.2 s, long
# enough to cancel or cut mid-way, short enough to keep the suite fast.
DEFAULT_ARGS = ("--demo-tokens-per-s", "200", "--demo-reply-words", "40")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One agent service for the module, with a workspace of a few files."""
    root: Path = tmp_path_factory.mktemp("service")
    workspace = root / "workspace"
    workspace.mkdir()
    (workspace / "notes.txt").write_text("alpha\nTODO: beta\ngamma\n")
    proc = start_agent_service(root, *DEFAULT_ARGS, "--workspace-dir", str(workspace))
    yield proc
    proc.stop()


@pytest.fixture
async def stub(service: ServiceProcess) -> AsyncIterator[agent_pb2_grpc.AgentServiceStub]:
    async with grpc.aio.insecure_channel(service.address) as channel:
        yield agent_pb2_grpc.AgentServiceStub(channel)
