"""Start the real agent service process on 127.0.0.1 at a free port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.timing import scaled

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ServiceProcess:
    """A running `python -m agent_service`, its gRPC address and its output."""

    process: subprocess.Popen[str]
    address: str
    store_path: Path
    args: tuple[str, ...]
    output: list[str] = field(default_factory=list)

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, then wait for a graceful exit; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=scaled(timeout_s))
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def start_agent_service(
    tmp_path: Path, *extra_args: str, store_path: Path | None = None, listen: str = "127.0.0.1:0"
) -> ServiceProcess:
    """Start the service with a store under tmp_path (or store_path) and wait until it serves."""
    store = store_path or tmp_path / "agent.sqlite3"
    args = ("--listen", listen, "--store-url", f"sqlite:///{store}", *extra_args)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "agent_service", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    output: list[str] = []
    found = threading.Event()
    address: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if not found.is_set() and "agent_service listening on" in line:
                address.append(line.rsplit(" ", 1)[1].strip())
                found.set()
        found.set()

    threading.Thread(target=pump, daemon=True).start()
    if not found.wait(scaled(30)) or not address:
        process.kill()
        raise RuntimeError("agent service did not start:\n" + "".join(output))
    return ServiceProcess(process, address[0], store, args, output)
