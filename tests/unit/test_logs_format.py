"""Log lines: readable on a terminal, JSON lines anywhere else (issue 14)."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
from collections.abc import Iterator

import pytest

from relay_shared.logs import configure_logging


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_pipe_or_file_gets_one_json_object_per_line() -> None:
    stream = io.StringIO()  # not a TTY, like var/logs/*.log or a log collector
    configure_logging("INFO", stream)
    logging.getLogger("agent_service.server").info("stopping", extra={"runs": 2})
    entry = json.loads(stream.getvalue().strip())
    assert entry["message"] == "stopping"
    assert entry["logger"] == "agent_service.server"
    assert entry["runs"] == 2


def test_a_terminal_gets_readable_lines() -> None:
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as terminal:
            assert terminal.isatty()
            configure_logging("INFO", terminal)
            logging.getLogger("ws_edge.server").warning("draining", extra={"sockets": 3})
            terminal.flush()
            line = os.read(leader, 4096).decode()
    finally:
        os.close(leader)
        os.close(follower)
    assert not line.lstrip().startswith("{")
    assert "WARNING" in line
    assert "ws_edge.server  draining" in line
    assert "sockets=3" in line


def test_pretty_can_be_asked_for_and_refused_explicitly() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream, pretty=True)
    logging.getLogger("x").info("hello")
    assert "INFO    x  hello" in stream.getvalue()
    stream = io.StringIO()
    configure_logging("INFO", stream, pretty=False)
    logging.getLogger("x").info("hello")
    assert json.loads(stream.getvalue())["message"] == "hello"
