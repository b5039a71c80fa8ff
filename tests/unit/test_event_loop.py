"""The event loop both server processes run on (relay_shared/event_loop.py)."""

from __future__ import annotations

import asyncio

import pytest

from agent_service.config import load as load_service
from relay_shared.event_loop import run
from ws_edge.config import load as load_edge


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_the_service_defaults_to_uvloop_the_edge_to_asyncio_and_both_take_either() -> None:
    assert load_service([]).event_loop == "uvloop"
    assert load_edge([]).event_loop == "asyncio"
    assert load_service(["--event-loop", "asyncio"]).event_loop == "asyncio"
    assert load_edge(["--event-loop", "uvloop"]).event_loop == "uvloop"


def test_an_unknown_loop_is_refused_with_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    for load in (load_service, load_edge):
        with pytest.raises(SystemExit):
            load(["--event-loop", "trio"])
        assert "uvloop, asyncio" in capsys.readouterr().err


def test_run_uses_the_named_loop() -> None:
    assert run(_loop_module(), "uvloop").startswith("uvloop")
    assert run(_loop_module(), "asyncio").startswith("asyncio")
    refused = _loop_module()
    with pytest.raises(ValueError, match="event_loop"):
        run(refused, "trio")
    refused.close()
