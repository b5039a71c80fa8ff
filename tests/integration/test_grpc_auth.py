"""gRPC callers authenticate, and see only the users and sessions their token allows.

A real agent service on 127.0.0.1 with --auth-jwt-secret, real grpc.aio clients
with tokens minted as `agent-relay token` mints them.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from agent_relay_client import errors as client_errors
from agent_relay_client.grpc import AgentClient
from agent_service.auth import mint_token
from tests.support.chat import ChatClient
from tests.support.process import REPO
from tests.support.service import ServiceProcess, start_agent_service
from tests.support.timing import scaled
from ws_edge.upstream import bearer_token

SECRET = "grpc-auth-test-secret-0123456789abcdef-0123"
FAST = ("--demo-tokens-per-s", "0", "--demo-reply-words", "5", "--metrics-listen", "")


def token(
    sub: str, scopes: str, *, ttl_s: int = 600, now: float | None = None, **kw: object
) -> str:
    now = time.time() if now is None else now
    return mint_token(SECRET, subject=sub, scopes=scopes, ttl_s=ttl_s, now=now, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    proc = start_agent_service(tmp_path_factory.mktemp("auth"), *FAST, "--auth-jwt-secret", SECRET)
    yield proc
    proc.stop()


def channel(service: ServiceProcess, bearer: str | None) -> grpc.aio.Channel:
    interceptors = bearer_token(bearer) if bearer else None
    return grpc.aio.insecure_channel(service.address, interceptors=interceptors)


@pytest.fixture
async def admin(service: ServiceProcess) -> AsyncIterator[agent_pb2_grpc.AgentServiceStub]:
    async with channel(service, token("edge", "read chat admin")) as ch:
        yield agent_pb2_grpc.AgentServiceStub(ch)


@pytest.fixture
async def alice(service: ServiceProcess) -> AsyncIterator[agent_pb2_grpc.AgentServiceStub]:
    async with channel(service, token("alice", "read chat")) as ch:
        yield agent_pb2_grpc.AgentServiceStub(ch)


def refusal(exc: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """The status code, the ErrorInfo reason and metadata in the rich status details."""
    status = rpc_status.from_call(exc)
    assert status is not None, "no google.rpc.Status in the trailers"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return exc.code(), info.reason, dict(info.metadata)


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


# ---- authentication ----


async def test_health_needs_no_credential(service: ServiceProcess) -> None:
    async with channel(service, None) as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_call_without_a_token_is_unauthenticated(service: ServiceProcess) -> None:
    async with channel(service, None) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        exc = await refused(stub.ListSessions(pb.ListSessionsRequest()))
        code, reason, _ = refusal(exc)
        assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_MISSING")
        assert "Bearer" in (exc.details() or "") and "agent-relay token" in (exc.details() or "")
        # a stream is refused the same way, before any command is read
        call = stub.Chat()
        assert await call.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (
            lambda: mint_token(
                "forged" * 8, subject="x", scopes="admin", ttl_s=60, now=time.time()
            ),
            "TOKEN_SIGNATURE",
        ),
        (lambda: token("alice", "read", now=time.time() - 3600, ttl_s=60), "TOKEN_EXPIRED"),
        (lambda: "garbage.not.jwt", "TOKEN_MALFORMED"),
    ],
    ids=["forged", "expired", "malformed"],
)
async def test_forged_expired_and_malformed_tokens_are_unauthenticated(
    service: ServiceProcess, bad: object, reason: str
) -> None:
    async with channel(service, bad()) as ch:  # type: ignore[operator]
        exc = await refused(agent_pb2_grpc.AgentServiceStub(ch).ListTools(pb.ListToolsRequest()))
    assert refusal(exc)[:2] == (grpc.StatusCode.UNAUTHENTICATED, reason)


async def test_a_missing_scope_is_permission_denied_naming_it(service: ServiceProcess) -> None:
    async with channel(service, token("reader", "read")) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        assert (await stub.ListTools(pb.ListToolsRequest())).tools  # read is enough here
        exc = await refused(stub.CreateSession(pb.CreateSessionRequest()))
        code, reason, meta = refusal(exc)
        assert (code, reason, meta["required_scope"]) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "MISSING_SCOPE",
            "chat",
        )


async def test_execute_tool_needs_the_tools_scope(service: ServiceProcess) -> None:
    start = pb.ExecuteToolRequest(
        start=pb.StartTool(tool_name="calculator", arguments_json='{"expression": "6*7"}')
    )
    refused = asyncio.Event()

    async def after_the_refusal():
        # The service refuses on the call's metadata, before it reads a request. A write
        # that grpc.aio makes after the refusal arrived replaces the service's status with
        # INTERNAL "Failed execute_batch" (grpc/grpc#36066), so nothing is written until then.
        await asyncio.wait_for(refused.wait(), 30)
        yield start

    async with channel(service, token("alice", "read chat admin")) as ch:
        call = agent_pb2_grpc.AgentServiceStub(ch).ExecuteTool(after_the_refusal())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        refused.set()
    assert refusal(caught.value)[1:] == (
        "MISSING_SCOPE",
        {"required_scope": "tools", "granted_scopes": "admin chat read"},
    )
    async with channel(service, token("runner", "tools")) as ch:
        outcomes = [
            r.execution.WhichOneof("update")
            async for r in agent_pb2_grpc.AgentServiceStub(ch).ExecuteTool(iter([start]))
        ]
    assert outcomes[-1] == "completed"


async def test_the_python_client_sends_its_token(service: ServiceProcess) -> None:
    async with AgentClient(service.address, token=token("carol", "read chat")) as agent:
        session = await agent.create_session(title="mine")
        assert session.user_id == "carol"  # no user named: the token's own
        assert [s.session_id for s in await agent.list_sessions()] == [session.session_id]
    async with AgentClient(service.address) as anonymous:
        with pytest.raises(client_errors.Unauthenticated):
            await anonymous.list_tools()


# ---- users and sessions ----


async def test_list_sessions_shows_a_non_admin_only_its_own_user(
    admin: agent_pb2_grpc.AgentServiceStub, alice: agent_pb2_grpc.AgentServiceStub
) -> None:
    mine = (await admin.CreateSession(pb.CreateSessionRequest(user_id="alice"))).session_id
    theirs = (await admin.CreateSession(pb.CreateSessionRequest(user_id="bob"))).session_id
    listed = {
        s.session_id: s.user_id
        for s in (await alice.ListSessions(pb.ListSessionsRequest())).sessions
    }
    assert mine in listed and theirs not in listed
    assert set(listed.values()) == {"alice"}
    everyone = {
        s.session_id
        for s in (await admin.ListSessions(pb.ListSessionsRequest(page_size=500))).sessions
    }
    assert {mine, theirs} <= everyone
    exc = await refused(alice.ListSessions(pb.ListSessionsRequest(user_id="bob")))
    assert refusal(exc)[:2] == (grpc.StatusCode.PERMISSION_DENIED, "USER_NOT_ALLOWED")


async def test_another_users_session_is_not_found_for_get_and_history(
    admin: agent_pb2_grpc.AgentServiceStub, alice: agent_pb2_grpc.AgentServiceStub
) -> None:
    theirs = (await admin.CreateSession(pb.CreateSessionRequest(user_id="bob"))).session_id
    for call in (
        alice.GetSession(pb.GetSessionRequest(session_id=theirs)),
        alice.ListMessages(pb.ListMessagesRequest(session_id=theirs)),
        alice.Cancel(pb.CancelRequest(session_id=theirs, run_id="r_1")),
    ):
        exc = await refused(call)
        assert exc.code() == grpc.StatusCode.NOT_FOUND
        assert exc.details() == f"no session {theirs!r}"  # as for one that does not exist
    missing = await refused(alice.GetSession(pb.GetSessionRequest(session_id="s_nope")))
    assert missing.details() == "no session 's_nope'"


async def test_creating_a_session_for_another_user_needs_admin(
    admin: agent_pb2_grpc.AgentServiceStub, alice: agent_pb2_grpc.AgentServiceStub
) -> None:
    exc = await refused(alice.CreateSession(pb.CreateSessionRequest(user_id="bob")))
    assert refusal(exc)[:2] == (grpc.StatusCode.PERMISSION_DENIED, "USER_NOT_ALLOWED")
    assert (await alice.CreateSession(pb.CreateSessionRequest())).user_id == "alice"
    assert (await admin.CreateSession(pb.CreateSessionRequest(user_id="bob"))).user_id == "bob"


async def test_chat_join_send_and_cancel_on_another_users_session_are_refused(
    admin: agent_pb2_grpc.AgentServiceStub, alice: agent_pb2_grpc.AgentServiceStub
) -> None:
    theirs = (await admin.CreateSession(pb.CreateSessionRequest(user_id="bob"))).session_id
    mine = (await admin.CreateSession(pb.CreateSessionRequest(user_id="alice"))).session_id
    chat = ChatClient(alice)
    try:
        join = await chat.command(join=pb.JoinSession(session_id=theirs))
        send = await chat.command(
            send=pb.SendMessage(session_id=theirs, message_id=uuid.uuid4().hex, text="hi")
        )
        cancel = await chat.command(cancel_run=pb.CancelRun(session_id=theirs))
        for reply in (join, send, cancel):
            assert (reply.status.code, reply.status.message) == (
                code_pb2.NOT_FOUND,
                f"no session {theirs!r}",
            )
        # the same stream goes on for the caller's own session
        assert (await chat.join(mine)).status.code == code_pb2.OK
        accepted = await chat.send(mine, uuid.uuid4().hex, "what is 6 * 7?")
        assert accepted.status.code == code_pb2.OK
        await chat.wait_completed(mine, accepted.accepted.run_id)
    finally:
        await chat.close()
    assert chat.events[theirs] == []  # nothing of bob's session reached alice
    history = await admin.ListMessages(pb.ListMessagesRequest(session_id=theirs))
    assert list(history.messages) == []  # and alice's message never got in


async def test_a_read_only_token_may_follow_but_not_send(
    service: ServiceProcess, admin: agent_pb2_grpc.AgentServiceStub
) -> None:
    mine = (await admin.CreateSession(pb.CreateSessionRequest(user_id="dave"))).session_id
    async with channel(service, token("dave", "read")) as ch:
        chat = ChatClient(agent_pb2_grpc.AgentServiceStub(ch))
        try:
            assert (await chat.join(mine)).status.code == code_pb2.OK
            send = await chat.send(mine, uuid.uuid4().hex, "hello")
            assert send.status.code == code_pb2.PERMISSION_DENIED
            assert "'chat' scope" in send.status.message
        finally:
            await chat.close()


async def test_a_token_with_users_acts_for_exactly_those_users(
    service: ServiceProcess, admin: agent_pb2_grpc.AgentServiceStub
) -> None:
    for_erin = (await admin.CreateSession(pb.CreateSessionRequest(user_id="erin"))).session_id
    for_fay = (await admin.CreateSession(pb.CreateSessionRequest(user_id="fay"))).session_id
    other = (await admin.CreateSession(pb.CreateSessionRequest(user_id="gus"))).session_id
    async with channel(service, token("support-bot", "read", users=["erin", "fay"])) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        for session_id in (for_erin, for_fay):
            assert (await stub.GetSession(pb.GetSessionRequest(session_id=session_id))).session_id
        exc = await refused(stub.GetSession(pb.GetSessionRequest(session_id=other)))
        assert exc.code() == grpc.StatusCode.NOT_FOUND
        exc = await refused(stub.ListSessions(pb.ListSessionsRequest()))
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT  # which of its users: say it
        fays = await stub.ListSessions(pb.ListSessionsRequest(user_id="fay"))
        assert [s.session_id for s in fays.sessions] == [for_fay]


# ---- the token command ----


async def test_agent_relay_token_mints_what_the_service_accepts(service: ServiceProcess) -> None:
    minted = subprocess.run(  # noqa: ASYNC221 (a short command, before any stream is open)
        [
            sys.executable,
            "-m",
            "agent_service.cli",
            "token",
            "--sub",
            "backend-1",
            "--scope",
            "read chat",
            "--ttl",
            "3600",
        ],
        cwd=REPO,
        env={"AGENT_RELAY_AUTH_JWT_SECRET": SECRET, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=scaled(30),
        check=True,
    ).stdout.strip()
    assert minted.count(".") == 2 and "\n" not in minted
    async with channel(service, minted) as ch:
        session = await agent_pb2_grpc.AgentServiceStub(ch).CreateSession(pb.CreateSessionRequest())
    assert session.user_id == "backend-1"


def test_agent_relay_token_refuses_an_unknown_scope() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent_service.cli", "token", "--sub", "x", "--scope", "read wirte"],
        cwd=REPO,
        env={"AGENT_RELAY_AUTH_JWT_SECRET": SECRET, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert done.returncode == 2 and "unknown scope 'wirte'" in done.stderr and not done.stdout


# ---- the loopback rule ----


def test_an_unauthenticated_service_beyond_loopback_refuses_to_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent_service",
            "--listen",
            "0.0.0.0:0",
            "--store-url",
            f"sqlite:///{tmp_path}/s.db",
            "--metrics-listen",
            "",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "refusing to listen on 0.0.0.0:0 without credentials" in lines[0]
    assert "--insecure-allow-unauthenticated" in lines[0]
    assert "listening on" not in done.stdout


async def test_on_loopback_without_credentials_everything_is_allowed(tmp_path: Path) -> None:
    proc = start_agent_service(tmp_path, *FAST)
    try:
        async with grpc.aio.insecure_channel(proc.address) as ch:
            stub = agent_pb2_grpc.AgentServiceStub(ch)
            await stub.CreateSession(pb.CreateSessionRequest(user_id="anyone"))
            assert (await stub.ListSessions(pb.ListSessionsRequest())).sessions
    finally:
        proc.stop()


def test_the_terminal_commands_pass_a_grpc_token(service: ServiceProcess) -> None:
    def tools(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "agent_relay_client",
                "tools",
                "--grpc",
                service.address,
                *extra,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=scaled(30),
        )

    allowed = tools("--grpc-token", token("ops", "read"))
    assert allowed.returncode == 0 and "calculator" in allowed.stdout
    refused = tools()
    assert refused.returncode != 0 and "calculator" not in refused.stdout
