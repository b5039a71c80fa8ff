"""The settings of `agent-relay cluster` (`make cluster`): one frozen object, built once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from relay_shared.settings import field, load_settings


@dataclass(frozen=True, kw_only=True)
class ClusterSettings:
    """What `agent-relay cluster` can be told. Flags and AGENT_RELAY_* variables set it;
    every other AGENT_RELAY_* variable reaches every child unchanged (for instance
    AGENT_RELAY_DEMO_TOKENS_PER_S reaches both replicas)."""

    replica_listen: tuple[str, ...] = field(
        ("127.0.0.1:50051", "127.0.0.1:50052"),
        "host:port of each agent replica's gRPC API, comma-separated: one replica each",
    )
    edge_listen: tuple[str, ...] = field(
        ("127.0.0.1:8080", "127.0.0.1:8081"),
        "host:port of each edge (web UI and WebSocket), comma-separated: one edge each",
    )
    replica_metrics_listen: tuple[str, ...] = field(
        ("127.0.0.1:9464", "127.0.0.1:9465"),
        "host:port of each replica's Prometheus /metrics, in replica_listen's order (empty: off)",
    )
    redis_url: str = field(
        "redis://127.0.0.1:6379/0", "the Redis the replicas share (event log, leases)"
    )
    log_prefix: str = field("agent-relay:", "the replicas' Redis key prefix")
    postgres_url: str = field(
        "postgresql://postgres@127.0.0.1:5432/agent_relay",
        "the PostgreSQL database the replicas share (conversation store); created when missing",
    )
    start_backends: bool = field(
        True,
        "start a loopback Redis (redis-server) or PostgreSQL (pg_ctlcluster) that does not "
        "answer; they keep running after the cluster stops",
    )
    lease_ttl_s: float = field(
        5.0, "the replicas' --lease-ttl-s: takeover time after a replica dies, in seconds"
    )
    workspace_dir: Path = field(Path("."), "folder the demo's file tools may read")
    var_dir: Path = field(
        Path("var/.cluster"),
        "data folder: the edges' shared token secret, and logs/ under it (hidden, so the "
        "file tools never read it)",
    )
    log_dir: Path | None = field(
        None, "folder of the children's log files (default: VAR_DIR/logs), one file each"
    )
    backend_wait_s: float = field(30.0, "how long to wait for Redis and PostgreSQL to answer")
    ready_timeout_s: float = field(60.0, "a child not listening this long after start is killed")
    stop_timeout_s: float = field(
        20.0, "on stop, how long a child gets to exit after SIGTERM before SIGKILL"
    )

    def __post_init__(self) -> None:
        if not self.replica_listen or not self.edge_listen:
            raise ValueError("replica_listen and edge_listen name at least one address each")
        for value in (*self.replica_listen, *self.edge_listen, *self.replica_metrics_listen):
            host, _, port = value.rpartition(":")
            if not host or not port.isdigit() or int(port) == 0:
                raise ValueError(f"a listen address is host:port with a fixed port, not {value!r}")
        if self.replica_metrics_listen and len(self.replica_metrics_listen) != len(
            self.replica_listen
        ):
            raise ValueError("replica_metrics_listen names one address per replica, or none")
        if urlsplit(self.redis_url).scheme != "redis":
            raise ValueError(f"redis_url is redis://HOST:PORT/DB, not {self.redis_url!r}")
        if urlsplit(self.postgres_url).scheme not in {"postgresql", "postgres"}:
            raise ValueError(f"postgres_url is postgresql://..., not {self.postgres_url!r}")
        if not urlsplit(self.postgres_url).path.strip("/"):
            raise ValueError("postgres_url names its database (postgresql://USER@HOST:PORT/DB)")
        if self.lease_ttl_s <= 0:
            raise ValueError("lease_ttl_s must be positive")

    @property
    def logs(self) -> Path:
        """Where the children's log files go."""
        return self.log_dir if self.log_dir is not None else self.var_dir / "logs"

    @property
    def log_url(self) -> str:
        """The replicas' --log-url."""
        return f"{self.redis_url}?prefix={self.log_prefix}"


def load(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> ClusterSettings:
    """Flags, then AGENT_RELAY_* variables, then defaults. Raises SystemExit on bad input."""
    return load_settings(
        ClusterSettings,
        argv,
        env,
        prog="agent-relay cluster",
        description=(
            "Start agent replicas and edges on this machine against a shared Redis and "
            "PostgreSQL (starting those when they do not answer), print their addresses, "
            "stop them all on Ctrl-C, SIGTERM or SIGHUP."
        ),
    )
