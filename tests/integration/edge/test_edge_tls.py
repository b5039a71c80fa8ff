"""Encryption in transit: wss:// at the edge, TLS and mutual TLS on its channel to the agent."""

from __future__ import annotations

import ssl
import subprocess
import urllib.error
from pathlib import Path

import pytest

from tests.support.edge import EdgeClient, create_session, start_edge
from tests.support.service import start_agent_service


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(folder: Path) -> tuple[Path, Path]:
    key, cert = folder / "ca.key", folder / "ca.pem"
    openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(cert),
        "-days",
        "1",
        "-subj",
        "/CN=agent-relay test CA",
    )
    return key, cert


def make_cert(folder: Path, name: str, ca: tuple[Path, Path], *, server: bool) -> tuple[Path, Path]:
    """A key and a certificate for 127.0.0.1 / localhost signed by the test CA."""
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        f"/CN={name}",
    )
    ext = folder / f"{name}.ext"
    usage = "serverAuth" if server else "clientAuth"
    ext.write_text(f"subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n")
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca[1]),
        "-CAkey",
        str(ca[0]),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "1",
        "-extfile",
        str(ext),
    )
    return key, cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder)
    return {
        "ca": ca,
        "service": make_cert(folder, "service", ca, server=True),
        "edge": make_cert(folder, "edge", ca, server=True),
        "edge-client": make_cert(folder, "edge-client", ca, server=False),
    }


async def test_wss_and_mutual_tls_to_the_agent_carry_a_whole_chat(tmp_path: Path, pki):
    service_key, service_cert = pki["service"]
    agent = start_agent_service(
        tmp_path,
        "--demo-tokens-per-s",
        "200",
        "--demo-reply-words",
        "20",
        "--tls-cert-file",
        str(service_cert),
        "--tls-key-file",
        str(service_key),
        "--tls-client-ca-file",
        str(pki["ca"][1]),
    )
    client_key, client_cert = pki["edge-client"]
    edge_key, edge_cert = pki["edge"]
    edge = None
    try:
        edge = start_edge(
            agent.address,
            "--tls-cert-file",
            str(edge_cert),
            "--tls-key-file",
            str(edge_key),
            "--upstream-tls-ca-file",
            str(pki["ca"][1]),
            "--upstream-tls-cert-file",
            str(client_cert),
            "--upstream-tls-key-file",
            str(client_key),
        )
        assert edge.url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(pki["ca"][1]))
        session = create_session(edge, context=trust)
        client = await EdgeClient.connect(edge.ws_url, token=session["token"], ssl=trust)
        assert client.ws.request.path == "/ws" and edge.ws_url.startswith("wss://")
        await client.join(session["session_id"])
        ack = await client.say(session["session_id"], "over tls")
        done = await client.until_complete(session["session_id"], ack["run_id"])
        assert done["finish_reason"] == "stop"
        await client.close()
        with pytest.raises(ssl.SSLCertVerificationError):
            await EdgeClient.connect(edge.ws_url, ssl=ssl.create_default_context())
    finally:
        if edge is not None:
            edge.stop()
        agent.stop()


async def test_without_its_client_certificate_the_edge_is_refused_by_the_agent(tmp_path: Path, pki):
    service_key, service_cert = pki["service"]
    agent = start_agent_service(
        tmp_path,
        "--tls-cert-file",
        str(service_cert),
        "--tls-key-file",
        str(service_key),
        "--tls-client-ca-file",
        str(pki["ca"][1]),
    )
    edge = None
    try:
        edge = start_edge(agent.address, "--upstream-tls-ca-file", str(pki["ca"][1]))
        status = create_session_status(edge)
        assert status == 503
    finally:
        if edge is not None:
            edge.stop()
        agent.stop()


def create_session_status(edge) -> int:
    try:
        create_session(edge)
    except urllib.error.HTTPError as exc:
        return exc.code
    return 201


async def test_a_tls_handshake_that_never_finishes_is_closed_after_its_deadline(
    tmp_path: Path, pki, monkeypatch
):
    import asyncio

    from tests.support.timing import scaled

    monkeypatch.setenv("AGENT_RELAY_TLS_HANDSHAKE_TIMEOUT_S", "1")  # by env: old edges start
    agent = start_agent_service(tmp_path)
    key, cert = pki["edge"]
    edge = start_edge(agent.address, "--tls-cert-file", str(cert), "--tls-key-file", str(key))
    try:
        silent = await asyncio.open_connection("127.0.0.1", edge.port)  # never says hello
        partial = await asyncio.open_connection("127.0.0.1", edge.port)
        partial[1].write(b"\x16\x03\x01\x02\x00\x01")  # the first bytes of a ClientHello
        for reader, writer in (silent, partial):
            assert await asyncio.wait_for(reader.read(), scaled(15)) == b""
            writer.close()
        # An honest wss:// client still gets in.
        context = ssl.create_default_context(cafile=str(pki["ca"][1]))
        session = create_session(edge, context=context)
        client = await EdgeClient.connect(edge.ws_url, token=session["token"], ssl=context)
        assert (await client.request({"type": "ping"}))["type"] == "pong"
        await client.close()
    finally:
        edge.stop()
        agent.stop()
