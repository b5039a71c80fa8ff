"""Start the real edge process (`python -m ws_edge`) on 127.0.0.1 at a free port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import jwt

from tests.support.timing import scaled

REPO = Path(__file__).resolve().parents[2]
TEST_JWT_SECRET = "edge-test-secret-0123456789abcdef-0123456789abcdef"


@dataclass
class EdgeProcess:
    """A running edge: its base URL, WebSocket URL and output."""

    process: subprocess.Popen[str]
    url: str
    args: tuple[str, ...]
    output: list[str] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + "/ws"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM (drain), then wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=scaled(timeout_s))
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def text(self) -> str:
        return "".join(self.output)


def start_edge(
    upstream: str, *extra_args: str, listen: str = "127.0.0.1:0", secret: str = TEST_JWT_SECRET
) -> EdgeProcess:
    """Start the edge in front of the agent service at upstream; wait until it listens."""
    args = (
        "--listen",
        listen,
        "--upstream",
        upstream,
        "--jwt-secret",
        secret,
        "--static-dir",
        "/nonexistent",
        *extra_args,
    )
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "ws_edge", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    output: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if not found.is_set() and "ws_edge listening on" in line:
                url.append(line.rsplit(" ", 1)[1].strip())
                found.set()
        found.set()

    threading.Thread(target=pump, daemon=True).start()
    if not found.wait(scaled(30)) or not url:
        process.kill()
        raise RuntimeError("edge did not start:\n" + "".join(output))
    return EdgeProcess(process, url[0], args, output)


def make_token(
    user_id: str,
    sessions: list[str],
    *,
    expires_in_s: float = 3600,
    secret: str = TEST_JWT_SECRET,
    algorithm: str = "HS256",
) -> str:
    """A token as the edge issues it (or, with other arguments, one it must refuse)."""
    now = int(time.time())
    key = secret if algorithm != "none" else None
    return jwt.encode(
        {"sub": user_id, "sessions": sessions, "iat": now, "exp": now + int(expires_in_s)},
        key,
        algorithm=algorithm,
    )
