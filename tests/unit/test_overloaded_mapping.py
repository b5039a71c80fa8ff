"""`overloaded` end to end on paper: the service's status, the edge's error, the clients' view."""

from __future__ import annotations

from agent_relay_client import errors as client_errors
from agent_relay_client.outbox import Outbox, OutboxEntry
from agent_relay_client.proto_convert import error_from_status as client_error_from_status
from agent_service.errors import Overloaded, error_from_status
from ws_edge.errors import ErrorCode
from ws_edge.errors import error_from_status as edge_error_from_status


def test_the_services_refusal_carries_its_retry_time_to_the_edge_and_the_grpc_client() -> None:
    status = Overloaded("busy here", retry_after_ms=1234).to_status()
    edge = edge_error_from_status(status)
    assert (edge.code, edge.retry_after_ms, edge.retryable) == (ErrorCode.OVERLOADED, 1234, True)
    client = client_error_from_status(status)
    assert isinstance(client, client_errors.Overloaded)
    assert (client.code, client.retry_after_ms, client.retryable) == ("overloaded", 1234, True)


def test_a_refusal_forwarded_between_replicas_keeps_its_reason_and_retry_time() -> None:
    again = error_from_status(
        Overloaded("late", retry_after_ms=900, reason="DEADLINE_PASSED").to_status()
    )
    assert isinstance(again, Overloaded)
    assert (again.reason, again.retry_after_ms) == ("DEADLINE_PASSED", 900)


def test_the_python_outbox_sends_an_overloaded_message_again_with_its_id_after_the_wait() -> None:
    outbox = Outbox()
    outbox.add(OutboxEntry("s1", "m1", "hello"))
    assert [e.message_id for e in outbox.take_due({"s1"}, 0)] == ["m1"]
    assert outbox.receive_error("m1", "overloaded", 2500, now_ms=1000) == "retry"
    assert outbox.take_due({"s1"}, 3499) == []
    assert [e.message_id for e in outbox.take_due({"s1"}, 3500)] == ["m1"]
    # and after an unknown outcome (the edge heard nothing): the same id again
    assert outbox.receive_error("m1", "upstream_unavailable", 1000, now_ms=4000) == "retry"
    assert [e.message_id for e in outbox.take_due({"s1"}, 5000)] == ["m1"]
