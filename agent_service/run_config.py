"""The settings of `agent-relay run` (the supervisor): one frozen object, built once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from relay_shared.settings import field, load_settings


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """What `agent-relay run` can be told. Flags and AGENT_RELAY_* variables set it;
    every other AGENT_RELAY_* variable reaches both children unchanged."""

    service_listen: str = field(
        "127.0.0.1:50051", "host:port of the agent service's gRPC API (port 0: any free one)"
    )
    edge_listen: str = field(
        "127.0.0.1:8080", "host:port of the edge: web UI and WebSocket (port 0: any free one)"
    )
    workspace_dir: Path = field(
        Path("."),
        "folder the demo's file tools may read; the default, the folder it runs in, is the "
        "repository under `make run` (hidden files and var/ stay out of reach)",
    )
    var_dir: Path = field(Path("var"), "data folder: the token secret, and logs/ under it")
    log_dir: Path | None = field(
        None, "folder of the children's log files (default: VAR_DIR/logs), one file each"
    )
    restart_initial_s: float = field(0.5, "delay before the first restart of a crashed child")
    restart_max_s: float = field(10.0, "longest delay between restarts (the delay doubles)")
    restart_stable_s: float = field(
        10.0, "a child up this long counts as healthy again: the next crash restarts at once"
    )
    restart_max_failures: int = field(
        8, "crashes in a row (each within restart_stable_s of starting) before giving up"
    )
    ready_timeout_s: float = field(60.0, "a child not listening this long after start is killed")
    stop_timeout_s: float = field(
        20.0, "on stop, how long a child gets to exit after SIGTERM before SIGKILL"
    )

    def __post_init__(self) -> None:
        for name in ("service_listen", "edge_listen"):
            value = getattr(self, name)
            host, _, port = value.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{name} is host:port, not {value!r}")
        if self.restart_initial_s <= 0 or self.restart_max_s < self.restart_initial_s:
            raise ValueError("restart delays: 0 < restart_initial_s <= restart_max_s")
        if self.restart_max_failures < 1:
            raise ValueError("restart_max_failures is at least 1")

    @property
    def logs(self) -> Path:
        """Where the children's log files go."""
        return self.log_dir if self.log_dir is not None else self.var_dir / "logs"


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> RunSettings:
    """Flags, then AGENT_RELAY_* variables, then defaults. Raises SystemExit on bad input."""
    return load_settings(
        RunSettings,
        argv,
        env,
        prog="agent-relay run",
        description=(
            "Start the agent service and the edge, restart either when it crashes, stop both "
            "on Ctrl-C, SIGTERM or SIGHUP. Arguments after `--` go to the edge."
        ),
    )
