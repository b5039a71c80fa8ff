"""The built-in tools: calculator, python, search_files, read_file, long_task.

`build_registry(settings)` returns a registry holding all of them, configured
from the service settings (the workspace folder, the python tool's limits).
Add tools of your own to the registry it returns before the service starts.
"""

from __future__ import annotations

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

__all__ = ["BUILTIN_TOOL_NAMES", "build_registry"]

BUILTIN_TOOL_NAMES = ("calculator", "long_task", "python", "read_file", "search_files")


def build_registry(settings: ServiceSettings) -> ToolRegistry:
    """A new registry with every built-in tool, configured from settings."""
    registry = ToolRegistry()
    workspace = Workspace.at(settings.workspace_dir)
    calculator.register(registry)
    python_exec.register(registry, settings)
    search_files.register(registry, workspace)
    read_file.register(registry, workspace)
    long_task.register(registry)
    return registry
