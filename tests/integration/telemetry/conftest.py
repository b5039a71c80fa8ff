"""Fixtures: a real OTLP receiver (the collector's trace service over gRPC) per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.telemetry.otlp_receiver import OtlpGrpcReceiver


@pytest.fixture
def receiver_grpc() -> Iterator[OtlpGrpcReceiver]:
    receiver = OtlpGrpcReceiver()
    yield receiver
    receiver.stop()
