"""mTLS client identities: a certificate's name maps to a caller through --mtls-identities.

A real agent service with TLS that requires client certificates (a test CA made
with openssl), real grpc.aio clients with certificates of their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from agent_service.auth import mint_token
from tests.integration.edge.test_edge_tls import make_ca, make_cert
from tests.support.edge import EdgeClient, create_session, start_edge
from tests.support.service import ServiceProcess, start_agent_service
from ws_edge.upstream import bearer_token

SECRET = "grpc-mtls-test-secret-0123456789abcdef-0123"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder)
    certs = {"ca": ca, "server": make_cert(folder, "server", ca, server=True)}
    for name in ("edge", "alice", "stranger"):
        certs[name] = make_cert(folder, name, ca, server=False)
    return certs


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, pki: dict[str, tuple[Path, Path]]
) -> Iterator[ServiceProcess]:
    key, cert = pki["server"]
    proc = start_agent_service(
        tmp_path_factory.mktemp("mtls"),
        "--metrics-listen",
        "",
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-client-ca-file",
        str(pki["ca"][1]),
        "--mtls-identities",
        "edge=read chat admin,alice=read chat",
        "--auth-jwt-secret",
        SECRET,
    )
    yield proc
    proc.stop()


def connect(
    service: ServiceProcess, pki: dict[str, tuple[Path, Path]], name: str, bearer: str = ""
) -> grpc.aio.Channel:
    key, cert = pki[name]
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki["ca"][1].read_bytes(),
        private_key=key.read_bytes(),
        certificate_chain=cert.read_bytes(),
    )
    return grpc.aio.secure_channel(
        service.address, credentials, interceptors=bearer_token(bearer) if bearer else None
    )


async def test_a_mapped_certificate_is_its_identity_with_its_scopes(
    service: ServiceProcess, pki: dict[str, tuple[Path, Path]]
) -> None:
    async with connect(service, pki, "edge") as ch:
        edge = agent_pb2_grpc.AgentServiceStub(ch)
        bobs = (await edge.CreateSession(pb.CreateSessionRequest(user_id="bob"))).session_id
    async with connect(service, pki, "alice") as ch:
        alice = agent_pb2_grpc.AgentServiceStub(ch)
        mine = await alice.CreateSession(pb.CreateSessionRequest())
        assert mine.user_id == "alice"  # the certificate's name is its user
        listed = [
            s.session_id for s in (await alice.ListSessions(pb.ListSessionsRequest())).sessions
        ]
        assert listed == [mine.session_id]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await alice.GetSession(pb.GetSessionRequest(session_id=bobs))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await alice.CreateSession(pb.CreateSessionRequest(user_id="bob"))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_an_unmapped_certificate_is_unauthenticated(
    service: ServiceProcess, pki: dict[str, tuple[Path, Path]]
) -> None:
    async with connect(service, pki, "stranger") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await agent_pb2_grpc.AgentServiceStub(ch).ListTools(pb.ListToolsRequest())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "stranger" in (caught.value.details() or "")
    status = rpc_status.from_call(caught.value)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info) and info.reason == "UNKNOWN_IDENTITY"


async def test_a_bearer_token_on_an_mtls_connection_is_the_credential(
    service: ServiceProcess, pki: dict[str, tuple[Path, Path]]
) -> None:
    bob = mint_token(SECRET, subject="bob", scopes="read chat", ttl_s=60, now=time.time())
    async with connect(service, pki, "stranger", bob) as ch:
        session = await agent_pb2_grpc.AgentServiceStub(ch).CreateSession(pb.CreateSessionRequest())
    assert session.user_id == "bob"
    async with connect(service, pki, "edge", "forged.token.here") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await agent_pb2_grpc.AgentServiceStub(ch).ListTools(pb.ListToolsRequest())
    # a bad token is refused even with a good certificate: no silent fallback
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_client_without_a_certificate_cannot_connect(
    service: ServiceProcess, pki: dict[str, tuple[Path, Path]]
) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=pki["ca"][1].read_bytes())
    async with grpc.aio.secure_channel(service.address, credentials) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await agent_pb2_grpc.AgentServiceStub(ch).ListTools(pb.ListToolsRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_edge_can_authenticate_with_its_client_certificate(
    service: ServiceProcess, pki: dict[str, tuple[Path, Path]]
) -> None:
    key, cert = pki["edge"]
    edge = start_edge(
        service.address,
        "--upstream-tls-ca-file",
        str(pki["ca"][1]),
        "--upstream-tls-cert-file",
        str(cert),
        "--upstream-tls-key-file",
        str(key),
    )
    try:
        created = await asyncio.to_thread(create_session, edge)  # for a new anonymous user
        client = await EdgeClient.connect(edge.ws_url, token=created["token"])
        try:
            assert (await client.join(created["session_id"]))["type"] == "ack"
            assert (await client.say(created["session_id"], "hello"))["type"] == "ack"
            await client.until_complete(created["session_id"])
        finally:
            await client.close()
    finally:
        edge.stop()
