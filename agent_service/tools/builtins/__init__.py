"""The built-in tools: calculator, python, search_files, read_file, long_task.

`build_registry(settings)` returns a registry holding all of them, configured
from the service settings (the workspace folder, the python tool's limits).
Add tools of your own to the registry it returns before the service starts.
"""

from __future__ import annotations

from pathlib import Path

from agent_service.config import ServiceSettings
from agent_service.tools.base import ToolRegistry
from agent_service.tools.builtins import (
    calculator,
    long_task,
    python_exec,
    read_file,
    search_files,
)
from agent_service.tools.builtins.workspace import Workspace
from agent_service.tools.workers import ProcessWorkers

STORE_SUFFIXES = ("", "-wal", "-shm", "-journal")  # a SQLite database and its side files

__all__ = ["BUILTIN_TOOL_NAMES", "build_registry"]

BUILTIN_TOOL_NAMES = ("calculator", "long_task", "python", "read_file", "search_files")


def service_data(settings: ServiceSettings) -> tuple[Path, ...]:
    """What the file tools must never show: the folder of the store when it lies inside
    the workspace (under `make run` it also holds the edge's token secret), else the
    store's files alone."""
    if not settings.store_url.startswith("sqlite://"):
        return ()
    location = settings.store_url.removeprefix("sqlite://").removeprefix("/")
    if not location or location.startswith(":memory:"):
        return ()
    store = Path(location).resolve()
    workspace = Path(settings.workspace_dir).resolve()
    if store.parent != workspace and store.parent.is_relative_to(workspace):
        return (store.parent,)
    return tuple(store.with_name(store.name + suffix) for suffix in STORE_SUFFIXES)


def build_registry(settings: ServiceSettings) -> ToolRegistry:
    """A new registry with every built-in tool, configured from settings."""
    registry = ToolRegistry()
    settings.workspace_dir.mkdir(parents=True, exist_ok=True)
    workspace = Workspace.at(settings.workspace_dir, excluded=service_data(settings))
    calculator.register(registry, ProcessWorkers(settings.tool_worker_processes))
    python_exec.register(registry, settings)
    search_files.register(registry, workspace)
    read_file.register(registry, workspace)
    long_task.register(registry)
    return registry
