"""Stock gRPC tools against the real agent service: grpcurl list, describe, health (issue 14)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_relay.v1 import agent_pb2
from tests.support.service import ServiceProcess, start_agent_service
from tests.support.timing import scaled

METHODS = [m.name for m in agent_pb2.DESCRIPTOR.services_by_name["AgentService"].methods]


def grpcurl_binary() -> str:
    beside_python = Path(sys.executable).with_name("grpcurl")
    found = str(beside_python) if beside_python.exists() else shutil.which("grpcurl")
    if found is None:
        pytest.fail("grpcurl is not installed: it comes with the dev extras")
    return found


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    proc = start_agent_service(tmp_path_factory.mktemp("grpcurl"), "--metrics-listen", "")
    yield proc
    proc.stop()


def grpcurl(service: ServiceProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [grpcurl_binary(), "-plaintext", service.address, *args],
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )


def test_list_shows_the_service_health_and_reflection(service: ServiceProcess) -> None:
    listed = grpcurl(service, "list")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == {
        "agent_relay.v1.AgentService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    methods = grpcurl(service, "list", "agent_relay.v1.AgentService")
    assert sorted(methods.stdout.split()) == sorted(
        f"agent_relay.v1.AgentService.{m}" for m in METHODS
    )


@pytest.mark.parametrize("method", METHODS)
def test_describe_works_for_every_method(service: ServiceProcess, method: str) -> None:
    described = grpcurl(service, "describe", f"agent_relay.v1.AgentService.{method}")
    assert described.returncode == 0, described.stderr  # was "Symbol not found"
    assert f"agent_relay.v1.AgentService.{method} is a method:" in described.stdout
    assert f"rpc {method} (" in described.stdout


def test_describe_of_a_method_that_does_not_exist_still_fails(service: ServiceProcess) -> None:
    described = grpcurl(service, "describe", "agent_relay.v1.AgentService.NoSuchMethod")
    assert described.returncode != 0
    assert "Symbol not found" in described.stderr


def test_health_check_and_list(service: ServiceProcess) -> None:
    check = grpcurl(service, "grpc.health.v1.Health/Check")
    assert json.loads(check.stdout) == {"status": "SERVING"}
    listed = grpcurl(service, "grpc.health.v1.Health/List")
    assert listed.returncode == 0, listed.stderr  # was Unimplemented
    assert json.loads(listed.stdout) == {
        "statuses": {
            "": {"status": "SERVING"},
            "agent_relay.v1.AgentService": {"status": "SERVING"},
        }
    }
    assert "Traceback" not in service.text()
    assert '"level": "ERROR"' not in service.text()


def test_a_second_service_on_the_same_port_exits_with_one_line(
    service: ServiceProcess, tmp_path: Path
) -> None:
    """grpc's default SO_REUSEPORT let a second service share 50051 with the first."""
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent_service",
            "--listen",
            service.address,
            "--store-url",
            f"sqlite:///{tmp_path / 'second.sqlite3'}",
            "--metrics-listen",
            "",
        ],
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert second.returncode == 1
    assert "agent_service listening" not in second.stdout
    assert f"agent_service: cannot listen on {service.address}" in second.stderr
    assert "Traceback" not in second.stderr
