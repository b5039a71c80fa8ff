"""The agent service's settings: one frozen object, built once at start-up."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from relay_shared.settings import field, load_settings
from relay_shared.telemetry import parse_listen

BUSY_POLICIES = ("queue", "reject", "interrupt")
MODEL_PROVIDERS = ("demo", "openai")


@dataclass(frozen=True, kw_only=True)
class ServiceSettings:
    """Everything the agent service can be told. Flags and AGENT_RELAY_* variables set it."""

    listen: str = field("127.0.0.1:50051", "host:port the gRPC server listens on (port 0: any)")
    store_url: str = field(
        "sqlite:///var/agent-relay.sqlite3",
        "conversation store: sqlite:///PATH (relative to the working folder) or sqlite:///:memory:",
    )
    bus_url: str = field("memory://", "event log and fan-out: memory:// (in-process)")
    retention_events: int = field(
        10_000, "events kept per session for replay; older ones give a gap"
    )
    busy_policy: str = field("queue", "a message during an active run: queue, reject or interrupt")
    model: str = field("demo", "model provider: demo (built in, no network) or openai")
    demo_tokens_per_s: float = field(
        30.0, "demo model speed in words per second; 0 = as fast as possible"
    )
    demo_reply_words: int = field(40, "length of the demo model's plain replies, in words")
    openai_base_url: str = field("https://api.openai.com/v1", "OpenAI-compatible endpoint")
    openai_api_key: str = field("", "API key for the openai provider (or OPENAI_API_KEY)")
    openai_model: str = field("gpt-4o-mini", "model name for the openai provider")
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
    partial_flush_interval_s: float = field(
        0.5, "how often a streaming reply's partial text is written to the store"
    )
    session_idle_unload_s: float = field(
        600.0,
        "a session with no subscriber and no run for this long is unloaded from memory "
        "(its replay window goes; a later resume gets a gap marker and reloads history)",
    )
    shutdown_grace_s: float = field(5.0, "on SIGTERM, how long in-flight runs may take to finish")
    tls_cert_file: Path | None = field(None, "PEM certificate: serve TLS when set")
    tls_key_file: Path | None = field(None, "PEM private key for tls_cert_file")
    tls_client_ca_file: Path | None = field(
        None, "PEM CA bundle: require client certificates (mTLS)"
    )
    log_level: str = field("INFO", "DEBUG, INFO, WARNING or ERROR")
    metrics_listen: str = field(
        "127.0.0.1:9464", "host:port of the Prometheus /metrics endpoint (port 0: any; empty: off)"
    )

    def __post_init__(self) -> None:
        if self.busy_policy not in BUSY_POLICIES:
            raise ValueError(f"busy_policy must be one of {', '.join(BUSY_POLICIES)}")
        if self.model not in MODEL_PROVIDERS:
            raise ValueError(f"model must be one of {', '.join(MODEL_PROVIDERS)}")
        if self.retention_events < 1:
            raise ValueError("retention_events must be at least 1")
        if self.max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        if self.demo_tokens_per_s < 0:
            raise ValueError("demo_tokens_per_s must be 0 (as fast as possible) or more")
        parse_listen(self.metrics_listen)  # raises ValueError for a malformed address
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")


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
