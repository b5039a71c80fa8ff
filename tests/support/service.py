"""Start the real agent service process on 127.0.0.1 at a free port."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.support.process import ManagedProcess, start_module


@dataclass
class ServiceProcess(ManagedProcess):
    """A running `python -m agent_service`, its gRPC address and its output."""

    address: str = ""
    store_path: Path = Path()
    args: tuple[str, ...] = ()


def start_agent_service(
    tmp_path: Path, *extra_args: str, store_path: Path | None = None, listen: str = "127.0.0.1:0"
) -> ServiceProcess:
    """Start the service with a store under tmp_path (or store_path) and wait until it serves."""
    store = store_path or tmp_path / "agent.sqlite3"
    args = ("--listen", listen, "--store-url", f"sqlite:///{store}", *extra_args)
    managed, address = start_module("agent_service", args, "agent_service listening on")
    return ServiceProcess(managed.process, managed.output, address, store, args)
