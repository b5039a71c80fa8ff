"""The agent service's settings: one frozen object, built once at start-up."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent_service.auth import MIN_SECRET_BYTES, parse_identities
from relay_shared.event_loop import check_event_loop
from relay_shared.settings import field, load_settings
from relay_shared.telemetry import parse_listen

BUSY_POLICIES = ("queue", "reject", "interrupt")
MODEL_PROVIDERS = ("demo", "openai", "anthropic")


@dataclass(frozen=True, kw_only=True)
class ServiceSettings:
    """Everything the agent service can be told. Flags and AGENT_RELAY_* variables set it."""

    listen: str = field("127.0.0.1:50051", "host:port the gRPC server listens on (port 0: any)")
    store_url: str = field(
        "sqlite:///var/agent-relay.sqlite3",
        "conversation store: sqlite:///PATH (relative to the working folder), "
        "sqlite:///:memory: or postgresql://USER@HOST:PORT/DB (shared by replicas)",
    )
    log_url: str = field(
        "",
        "durable event log: sqlite:///PATH, memory:// (in-process, lost at exit) or "
        "redis://HOST:PORT/DB?prefix=P (shared by replicas: sessions get leases there and "
        "replicas route commands to the owner); empty: the store's SQLite file (memory:// "
        "when the store is in memory)",
    )
    retention_events: int = field(
        10_000,
        "events kept per session for replay, in the log and in memory; older ones are trimmed "
        "in the background and a resume from before them gets a gap",
    )
    lease_ttl_s: float = field(
        5.0,
        "replicas (log on redis://): seconds a session's lease outlives its owner; after a "
        "kill -9 another replica takes the session over within about this long (renewed "
        "every third of it)",
    )
    replica_id: str = field(
        "", "this replica's name in session leases (no spaces); empty: hostname-pid"
    )
    advertise_address: str = field(
        "",
        "host:port other replicas reach this one's gRPC at, to forward commands for sessions "
        "it owns; empty: the listen address with the port bound",
    )
    backend_timeout_s: float = field(
        5.0,
        "longest a command waits for the store, the log or the owning replica, in seconds, "
        "before it fails with UNAVAILABLE (retryable)",
    )
    max_pending_accepts: int = field(
        1024,
        "user messages this process accepts at once (read, not yet answered); past it, or "
        "when those ahead would hold a new one past its sender's deadline (at the rate "
        "messages were accepted lately), it is refused at once with RESOURCE_EXHAUSTED (the "
        "edge's `overloaded`) and a retry time",
    )
    busy_policy: str = field("queue", "a message during an active run: queue, reject or interrupt")
    model: str = field("demo", "model provider: demo (built in, no network), openai or anthropic")
    demo_tokens_per_s: float = field(
        30.0, "demo model speed in words per second; 0 = as fast as possible"
    )
    demo_reply_words: int = field(40, "length of the demo model's plain replies, in words")
    openai_base_url: str = field("https://api.openai.com/v1", "OpenAI-compatible endpoint")
    openai_api_key: str = field("", "API key for the openai provider (or OPENAI_API_KEY)")
    openai_model: str = field("gpt-4o-mini", "model name for the openai provider")
    anthropic_base_url: str = field("https://api.anthropic.com", "Anthropic Messages API endpoint")
    anthropic_api_key: str = field("", "API key for the anthropic provider (or ANTHROPIC_API_KEY)")
    anthropic_model: str = field("claude-sonnet-4-5", "model name for the anthropic provider")
    anthropic_max_tokens: int = field(
        4096, "anthropic provider: the most tokens one model step may write (the API requires it)"
    )
    model_max_retries: int = field(
        2, "openai and anthropic: retries of a failed request (429, 5xx, connection), by the SDK"
    )
    model_connect_timeout_s: float = field(
        10.0, "openai and anthropic: seconds to connect to the model endpoint"
    )
    model_read_timeout_s: float = field(
        120.0, "openai and anthropic: longest silence from the model, in seconds, before a timeout"
    )
    max_steps: int = field(8, "model steps (calls) per run before it ends with max_steps")
    run_timeout_s: float = field(
        600.0, "a run still going after this long ends with a timeout error"
    )
    workspace_dir: Path = field(
        Path("workspace"),
        "folder the search_files and read_file tools may read (created if missing)",
    )
    python_cpu_s: int = field(10, "python tool: CPU seconds per call")
    python_memory_mb: int = field(256, "python tool: address-space limit per call, in MiB")
    python_timeout_s: float = field(30.0, "python tool: wall-clock seconds per call")
    python_output_bytes: int = field(64_000, "python tool: stdout+stderr bytes kept per call")
    python_sandbox: str = field(
        "auto",
        "python tool: confine each run with Landlock (no files outside its folder, no TCP, no "
        "signals out): auto (when the kernel has it), landlock (required) or off",
    )
    python_isolation: str = field(
        "auto",
        "python tool: run each program in new PID, network and mount namespaces as a uid of "
        "its own, with a seccomp filter (no network of any kind, no process outlives the call, "
        "a size-bounded folder, a process limit): auto (when the kernel allows it, checked at "
        "start-up), required or off",
    )
    python_disk_mb: int = field(
        32, "python tool, with isolation: size of each run's folder (a tmpfs), in MiB"
    )
    python_max_processes: int = field(
        32, "python tool, with isolation: processes one run may have at once"
    )
    python_max_concurrent: int = field(
        8, "python tool: programs running at once in the service; one more gets `busy`"
    )
    python_uid_base: int = field(
        2_000_000_000,
        "python tool, with isolation as root: the first of the uids (and gids) programs run "
        "as, owning nothing on the system; each service process takes python_max_concurrent "
        "of them (the block its pid picks among 65536), one per program running at once",
    )
    tool_worker_processes: int = field(
        2,
        "CPU-bound tools (the calculator) run in up to this many worker processes, off the "
        "event loop and killed at their timeout; more calls at once wait for a free one",
    )
    session_idle_unload_s: float = field(
        600.0,
        "a session with no subscriber and no run for this long is unloaded from memory "
        "(its log stays durable: a later load continues at the same seq)",
    )
    shutdown_grace_s: float = field(5.0, "on SIGTERM, how long in-flight runs may take to finish")
    tls_cert_file: Path | None = field(None, "PEM certificate: serve TLS when set")
    tls_key_file: Path | None = field(None, "PEM private key for tls_cert_file")
    tls_client_ca_file: Path | None = field(
        None, "PEM CA bundle: require client certificates (mTLS)"
    )
    auth_jwt_secret: str = field(
        "",
        "HS256 secret (at least 32 bytes) of backend bearer tokens; when any credential is "
        "configured every call needs one (mint tokens with `agent-relay token`)",
    )
    auth_jwt_public_key_file: Path | None = field(
        None, "PEM public key (RSA or EC P-256): also accept RS256/ES256 bearer tokens"
    )
    mtls_identities: tuple[str, ...] = field(
        (),
        "client-certificate identities, comma-separated NAME=SCOPES (e.g. edge=read chat admin); "
        "NAME is the certificate's common name or a SAN; needs tls_client_ca_file",
    )
    insecure_allow_unauthenticated: bool = field(
        False,
        "allow listening beyond loopback with no credentials configured: anyone who reaches "
        "the port may do anything",
    )
    merge_delta_chars: int = field(
        4096,
        "a model delta made while its step's previous delta waits for the log joins that "
        "event, up to this many characters (0: every delta is its own event): the busier "
        "the log writer, the more words per event",
    )
    delta_hold_ms: float = field(
        25.0,
        "under load, a model delta that continues its step's stream waits up to this long "
        "for the next words to join its event (the wait grows with the log writer's load "
        "from 0 when idle; a run's first delta and every other event never wait; 0: off)",
    )
    event_loop: str = field(
        "uvloop", "the event loop: uvloop (libuv's, in C: cheaper per callback) or asyncio"
    )
    gc_gen0_threshold: int = field(
        50_000,
        "after start-up: gc.freeze() and this gen0 collection threshold (objects); "
        "0: the interpreter's GC defaults",
    )
    gil_switch_interval_ms: float = field(
        1.0,
        "how long a thread may hold the interpreter lock while another waits for it (the "
        "interpreter's default is 5): the log writer's thread takes it back after each "
        "SQLite step, and waited for the busy event loop's turn that long each time",
    )
    log_level: str = field("INFO", "DEBUG, INFO, WARNING or ERROR")
    metrics_listen: str = field(
        "127.0.0.1:9464", "host:port of the Prometheus /metrics endpoint (port 0: any; empty: off)"
    )

    def __post_init__(self) -> None:
        check_event_loop(self.event_loop)
        if self.busy_policy not in BUSY_POLICIES:
            raise ValueError(f"busy_policy must be one of {', '.join(BUSY_POLICIES)}")
        if self.model not in MODEL_PROVIDERS:
            raise ValueError(f"model must be one of {', '.join(MODEL_PROVIDERS)}")
        if self.anthropic_max_tokens < 1:
            raise ValueError("anthropic_max_tokens must be at least 1")
        if self.model_max_retries < 0:
            raise ValueError("model_max_retries must be 0 or more")
        if self.model_connect_timeout_s <= 0 or self.model_read_timeout_s <= 0:
            raise ValueError("model_connect_timeout_s and model_read_timeout_s must be positive")
        if self.lease_ttl_s <= 0 or self.backend_timeout_s <= 0:
            raise ValueError("lease_ttl_s and backend_timeout_s must be positive")
        if " " in self.replica_id:
            raise ValueError("replica_id must contain no space")
        if self.merge_delta_chars < 0:
            raise ValueError("merge_delta_chars must be 0 (off) or more")
        if self.gil_switch_interval_ms <= 0:
            raise ValueError("gil_switch_interval_ms must be positive")
        if self.delta_hold_ms < 0:
            raise ValueError("delta_hold_ms must be 0 (off) or more")
        if self.retention_events < 1:
            raise ValueError("retention_events must be at least 1")
        if self.max_pending_accepts < 1:
            raise ValueError("max_pending_accepts must be at least 1")
        if self.max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        if self.demo_tokens_per_s < 0:
            raise ValueError("demo_tokens_per_s must be 0 (as fast as possible) or more")
        parse_listen(self.metrics_listen)  # raises ValueError for a malformed address
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.auth_jwt_secret and len(self.auth_jwt_secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"auth_jwt_secret must be at least {MIN_SECRET_BYTES} bytes")
        parse_identities(self.mtls_identities)  # raises ValueError for a malformed entry
        if self.mtls_identities and self.tls_client_ca_file is None:
            raise ValueError("mtls_identities needs tls_client_ca_file (client certificates)")

    @property
    def credentials_configured(self) -> bool:
        """Whether callers must authenticate (else every call is allowed, see auth.py)."""
        return bool(self.auth_jwt_secret or self.auth_jwt_public_key_file or self.mtls_identities)


def load(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> ServiceSettings:
    """Build the settings from flags and the environment (see ServiceSettings)."""
    return load_settings(
        ServiceSettings,
        argv,
        env,
        prog="agent-relay serve",
        description="Run the agent gRPC service.",
    )
