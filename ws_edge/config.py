"""The edge's settings: one frozen object, built once at start-up from flags and AGENT_RELAY_*."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from relay_shared.event_loop import check_event_loop
from relay_shared.settings import field, load_settings
from ws_edge import codes_gen

DELIVERY_MODES = ("stream", "final")


# The least time the edge waits for a message's reply beyond its acceptance deadline.
ACCEPT_MARGIN_S = 1.0


@dataclass(frozen=True, kw_only=True)
class EdgeSettings:
    """Everything the edge can be told. Flags (--batch-ms) and AGENT_RELAY_* variables set it."""

    listen: str = field("127.0.0.1:8080", "host:port the edge listens on (port 0: any free port)")
    upstream: str = field(
        "127.0.0.1:50051",
        "the agent service's gRPC address, or several replicas: host:port,host:port (a name "
        "that resolves to several addresses is several replicas)",
    )
    upstream_channels: int = field(2, "gRPC channels to each agent replica, one Chat stream each")
    upstream_resolve_interval_s: float = field(
        30.0, "how often upstream host names are resolved again (0: only at start)"
    )
    # The clients' backoff (proto/agent_relay/v1/codes.json): the same full-jitter rule and
    # base. The cap is lower: an edge has one link per replica, not a herd of browsers to
    # spread, and every second it waits is a second every user of that replica waits.
    upstream_backoff_base_s: float = field(
        codes_gen.BACKOFF_BASE_MS / 1000,
        "ceiling of the first reconnect delay to the agent service",
    )
    upstream_backoff_max_s: float = field(2.0, "longest reconnect delay to the agent service")
    command_timeout_s: float = field(10.0, "how long a command may wait for the agent's reply")
    accept_timeout_s: float = field(
        0.0,
        "a chat:message must be accepted within this many seconds: the edge sends the deadline "
        "with it and the agent service refuses it `overloaded` (nothing stored) once it has "
        "passed. Less than command_timeout_s: the difference covers the service's store write "
        "and log commit after the deadline check, and clock skew between the machines; "
        "0: half of command_timeout_s",
    )
    upstream_max_in_flight: int = field(
        1024,
        "chat:message commands the edge carries to one agent replica at once, over all its "
        "channels (the service's own max_pending_accepts by default); past it a new one is "
        "refused at once with `overloaded` and a retry time",
    )
    upstream_tls_ca_file: Path | None = field(None, "PEM CA bundle: use TLS to the agent service")
    upstream_tls_cert_file: Path | None = field(None, "PEM client certificate for mutual TLS")
    upstream_tls_key_file: Path | None = field(None, "PEM private key of upstream_tls_cert_file")
    upstream_tls_server_name: str = field(
        "", "TLS name to expect from the agent (default: its host)"
    )
    upstream_token: str = field(
        "",
        "bearer token the edge presents to the agent service (it acts for its users: mint it with "
        "`agent-relay token --sub edge --scope 'read chat admin'`); empty: none",
    )
    tls_cert_file: Path | None = field(None, "PEM certificate: serve https:// and wss:// when set")
    tls_key_file: Path | None = field(None, "PEM private key for tls_cert_file")
    jwt_secret: str = field("", "HS256 key for session tokens (empty: random per process)")
    token_ttl_s: int = field(3600, "lifetime of the tokens the edge issues, in seconds")
    allow_anonymous: bool = field(True, "POST /api/sessions without a token makes a new user")
    anon_sessions_per_s: float = field(
        2.0, "anonymous POST /api/sessions per second per client address (then 429)"
    )
    anon_sessions_burst: float = field(60.0, "anonymous session burst per client address")
    http_request_timeout_s: float = field(
        10.0,
        "a connection must send a whole request head (and an API request its body) within "
        "this time, and an idle keep-alive connection is closed after it",
    )
    tls_handshake_timeout_s: float = field(10.0, "a TLS handshake must finish within this time")
    close_linger_s: float = field(
        2.0,
        "after the edge closes a socket, how long it still reads (and drops) the peer's bytes "
        "before the TCP close, so a peer still sending reads the close frame (0: close at once)",
    )
    allowed_origins: tuple[str, ...] = field(
        (),
        "Origins allowed at the WebSocket handshake, comma-separated (* = any); same-origin is "
        "always allowed and a request with no Origin (not a browser) is allowed",
    )
    max_frame_bytes: int = field(65_536, "largest client frame accepted; larger ones get an error")
    hard_max_frame_bytes: int = field(1_048_576, "larger client frames close the socket with 1009")
    ping_interval_s: float = field(15.0, "WebSocket ping interval; also the app ping hint")
    auth_timeout_s: float = field(10.0, "a socket that has not authenticated by then is closed")
    idle_timeout_s: float = field(300.0, "a socket joined to nothing and silent this long closes")
    batch_ms: float = field(5.0, "deltas of a run arriving within this window share one frame")
    room_grace_s: float = field(30.0, "a room lingers this long after its last socket leaves")
    room_buffer_events: int = field(2048, "recent events a room keeps to replay a resuming socket")
    send_queue_max_bytes: int = field(1_048_576, "queued bytes per socket before it closes 1013")
    send_queue_max_frames: int = field(2048, "queued frames per socket before it closes 1013")
    socket_write_buffer_bytes: int = field(
        65_536, "bytes buffered in a socket's transport before the edge waits for the peer"
    )
    socket_send_buffer_bytes: int = field(
        0, "kernel send buffer per socket (SO_SNDBUF); 0 leaves it to the OS"
    )
    send_queue_coalesce_frames: int = field(16, "queued frames past which deltas are coalesced")
    conn_frames_per_s: float = field(20.0, "client frames per second per connection")
    conn_frames_burst: float = field(60.0, "client frame burst per connection")
    conn_bytes_per_s: float = field(65_536.0, "client bytes per second per connection")
    conn_bytes_burst: float = field(262_144.0, "client byte burst per connection")
    user_frames_per_s: float = field(50.0, "client frames per second per user, all connections")
    user_frames_burst: float = field(150.0, "client frame burst per user")
    user_bytes_per_s: float = field(262_144.0, "client bytes per second per user")
    user_bytes_burst: float = field(1_048_576.0, "client byte burst per user")
    max_runs_per_user: int = field(4, "runs a user may have going at once")
    max_connections_per_user: int = field(16, "sockets one user may have open")
    abuse_strikes: int = field(30, "rejected frames within abuse_window_s that close with 1008")
    abuse_window_s: float = field(10.0, "window in which abuse strikes are counted")
    compress: bool = field(True, "permessage-deflate when the client offers it")
    static_dir: Path = field(Path("clients/web/dist"), "built web UI served at / when it exists")
    shutdown_timeout_s: float = field(5.0, "on SIGTERM, how long sockets get to close")
    # asyncio by default: on uvloop a peer that floods frames while the edge closes it got a
    # reset instead of the close frame (tests/integration/edge/test_edge_abuse.py)
    event_loop: str = field(
        "asyncio", "the event loop: asyncio, or uvloop (libuv's, in C: cheaper per callback)"
    )
    gc_gen0_threshold: int = field(
        50_000,
        "after start-up: gc.freeze() and this gen0 collection threshold (objects); "
        "0: the interpreter's GC defaults",
    )
    log_level: str = field("INFO", "DEBUG, INFO, WARNING or ERROR")

    @property
    def accept_window_s(self) -> float:
        """The seconds a chat:message may wait to be accepted (accept_timeout_s, or its default)."""
        return self.accept_timeout_s or self.command_timeout_s / 2

    def __post_init__(self) -> None:
        check_event_loop(self.event_loop)
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if (self.upstream_tls_cert_file is None) != (self.upstream_tls_key_file is None):
            raise ValueError("upstream_tls_cert_file and upstream_tls_key_file go together")
        if self.upstream_tls_cert_file is not None and self.upstream_tls_ca_file is None:
            raise ValueError("upstream_tls_cert_file needs upstream_tls_ca_file")
        if self.upstream_channels < 1 or self.upstream_max_in_flight < 1:
            raise ValueError("upstream_channels and upstream_max_in_flight must be at least 1")
        margin_s = min(ACCEPT_MARGIN_S, self.command_timeout_s / 2)
        if self.command_timeout_s <= 0 or not (
            0 < self.accept_window_s <= self.command_timeout_s - margin_s
        ):
            raise ValueError(
                "need 0 < accept_timeout_s <= command_timeout_s - "
                f"{ACCEPT_MARGIN_S:g} s (or half of it when shorter): the edge must wait "
                "longer than the service may take to accept, by a margin for the store "
                "write after the check and for clock skew"
            )
        if not 0 < self.max_frame_bytes <= self.hard_max_frame_bytes:
            raise ValueError("need 0 < max_frame_bytes <= hard_max_frame_bytes")
        if self.batch_ms < 0:
            raise ValueError("batch_ms must be 0 (no batching) or more")
        for name in (
            "room_buffer_events",
            "send_queue_max_bytes",
            "send_queue_max_frames",
            "max_runs_per_user",
            "max_connections_per_user",
            "abuse_strikes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.http_request_timeout_s <= 0 or self.tls_handshake_timeout_s <= 0:
            raise ValueError("http_request_timeout_s and tls_handshake_timeout_s must be > 0")
        if self.anon_sessions_per_s < 0 or self.anon_sessions_burst < 1:
            raise ValueError("need anon_sessions_per_s >= 0 and anon_sessions_burst >= 1")
        if ":" not in self.listen or ":" not in self.upstream:
            raise ValueError("listen and upstream are host:port")
        parse_targets(self.upstream)  # raises ValueError naming a malformed target

    @property
    def listen_host(self) -> str:
        return self.listen.rsplit(":", 1)[0]

    @property
    def listen_port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> EdgeSettings:
    """Build the settings from flags and the environment (see EdgeSettings)."""
    return load_settings(
        EdgeSettings,
        argv,
        env,
        prog="python -m ws_edge",
        description="Run the WebSocket edge in front of the agent service.",
    )


def parse_targets(upstream: str) -> list[tuple[str, int]]:
    """`host:port,host:port` (IPv6 hosts in brackets) as (host, port) pairs. Raises ValueError."""
    targets = []
    for item in filter(None, (part.strip() for part in upstream.split(","))):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"upstream target {item!r} is not host:port")
        targets.append((host.strip("[]"), int(port)))
    if not targets:
        raise ValueError("upstream names no target")
    return targets
