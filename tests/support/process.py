"""Start one of the project's processes (`python -m MODULE`) and wait until it serves."""

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
class ManagedProcess:
    """A child process, everything it printed, and graceful and hard ways to end it."""

    process: subprocess.Popen[str]
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

    def text(self) -> str:
        """Everything the process printed so far."""
        return "".join(self.output)


def start_module(module: str, args: tuple[str, ...], ready: str) -> tuple[ManagedProcess, str]:
    """Run `python -m module *args` from the repository; wait for its `<ready> ADDRESS` line.

    Returns the process and the address that ends that line. Its output keeps being
    collected (so the pipe never fills); a process that does not get ready is killed.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    managed = ManagedProcess(process)
    found = threading.Event()
    address: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            managed.output.append(line)
            if not found.is_set() and ready in line:
                address.append(line.rsplit(" ", 1)[1].strip())
                found.set()
        found.set()

    threading.Thread(target=pump, daemon=True).start()
    if not found.wait(scaled(30)) or not address:
        process.kill()
        raise RuntimeError(f"{module} did not start:\n{managed.text()}")
    return managed, address[0]
