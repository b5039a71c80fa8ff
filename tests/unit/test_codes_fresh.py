"""The protocol's codes have one source (proto/agent_relay/v1/codes.json), and every copy
generated from it is fresh and means the same at the edge and in both clients."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from google.rpc import status_pb2

from agent_relay_client import codes_gen as client_codes
from agent_relay_client import errors as client_errors
from agent_relay_client.proto_convert import error_from_status
from ws_edge import codes_gen as edge_codes
from ws_edge.errors import CloseCode, ErrorCode, error_from_grpc, should_reconnect

REPO = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "generate_codes", REPO / "proto" / "generate_codes.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_tables_are_not_stale() -> None:
    stale = [
        str(rel)
        for rel, text in _generator().render().items()
        if (REPO / rel).read_text(encoding="utf-8") != text
    ]
    assert not stale, f"stale generated files (run `make proto`): {stale}"


def test_the_edge_and_the_python_client_carry_the_same_tables() -> None:
    assert (REPO / "ws_edge/codes_gen.py").read_bytes() == (
        REPO / "clients/python/agent_relay_client/codes_gen.py"
    ).read_bytes()
    assert {c.value for c in ErrorCode} == set(client_codes.ERROR_CODES)


@pytest.mark.parametrize("status", list(grpc.StatusCode), ids=lambda s: s.name)
def test_a_grpc_status_maps_to_the_same_code_through_the_edge_and_the_grpc_client(
    status: grpc.StatusCode,
) -> None:
    if status is grpc.StatusCode.OK:
        return
    at_edge = error_from_grpc(status, "why")
    in_client = error_from_status(status_pb2.Status(code=status.value[0], message="why"))
    assert at_edge.code == in_client.code
    assert at_edge.retryable == in_client.retryable


def test_the_rows_the_issue_found_wrong() -> None:
    # OUT_OF_RANGE was invalid_field at the edge and out_of_range in the gRPC client.
    assert error_from_grpc(grpc.StatusCode.OUT_OF_RANGE, "").code == "out_of_range"
    out = error_from_status(status_pb2.Status(code=grpc.StatusCode.OUT_OF_RANGE.value[0]))
    assert isinstance(out, client_errors.OutOfRange) and not out.retryable
    # ALREADY_EXISTS was a retryable `internal` at the edge.
    exists = error_from_grpc(grpc.StatusCode.ALREADY_EXISTS, "")
    assert exists.code == "already_exists" and not exists.retryable
    # busy was retryable at the edge (and so retried by the TypeScript client).
    busy = error_from_grpc(grpc.StatusCode.FAILED_PRECONDITION, "")
    assert busy.code == "busy" and not busy.retryable
    assert not client_errors.error_from_code("busy", retryable=True).retryable


@pytest.mark.parametrize(
    ("code", "reconnect"),
    [(1003, False), (1007, False), (1010, False), (4321, True), (4777, False), (3001, True)],
)
def test_the_edge_classifies_close_codes_by_the_clients_rule(code: int, reconnect: bool) -> None:
    assert should_reconnect(code) is reconnect
    assert (client_codes.close_action(code) != "stop") is reconnect


def test_the_edges_upstream_backoff_is_the_clients_with_a_lower_cap() -> None:
    from ws_edge.config import EdgeSettings

    settings = EdgeSettings()
    assert settings.upstream_backoff_base_s * 1000 == edge_codes.BACKOFF_BASE_MS
    # one link per replica, no herd: the edge waits at most 2 s, not the clients' cap
    assert settings.upstream_backoff_max_s == 2.0 < edge_codes.BACKOFF_CAP_MS / 1000
    assert CloseCode.SERVICE_RESTART == 1012
