"""Property-based fuzzing of the gRPC API: random requests never crash the service.

Hypothesis builds requests of every unary RPC, Chat command sequences and ExecuteTool
starts from the protobuf descriptors (random strings, extreme integers, unknown enum
values, known and unknown session ids), under random credentials (admin, a plain
user, none, garbage). Every call must end OK or with a documented status code, and
meanwhile an honest client keeps chatting on its own stream: every run it starts
completes, with gap-free seq. Raw bytes that are no message end INVALID_ARGUMENT.

Examples per property: AGENT_RELAY_FUZZ_EXAMPLES (default 25, so `make test` stays
short; a soak run sets more).
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from agent_service.auth import mint_token
from tests.support.service import ServiceProcess, start_agent_service
from tests.support.timing import scaled

SECRET = "grpc-fuzz-test-secret-0123456789abcdef-0123"
EXAMPLES = int(os.environ.get("AGENT_RELAY_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("AGENT_RELAY_FUZZ_RANDOM") != "1",  # CI: the same cases each run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# What docs/protocol.md and the servicer promise for a refused request. Never UNKNOWN,
# INTERNAL or UNAVAILABLE: those would be a crash or a hang.
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
DOCUMENTED_INTS = {code.value[0] for code in DOCUMENTED}
FAST = ("--demo-tokens-per-s", "400", "--demo-reply-words", "8", "--metrics-listen", "")
CASES: dict[str, int] = {}  # cases run per property, for the summary the last test prints
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}


def token(sub: str, scopes: str) -> str:
    return mint_token(SECRET, subject=sub, scopes=scopes, ttl_s=3600, now=time.time())


@dataclass
class World:
    """The service under fuzz, sessions that exist, and the credentials to pick from."""

    service: ServiceProcess
    sessions: list[str]
    credentials: list[list[tuple[str, str]]] = field(default_factory=list)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    proc = start_agent_service(tmp_path_factory.mktemp("fuzz"), *FAST, "--auth-jwt-secret", SECRET)
    admin = [("authorization", f"Bearer {token('edge', 'read chat tools admin')}")]
    alice = [("authorization", f"Bearer {token('alice', 'read chat tools')}")]
    with grpc.insecure_channel(proc.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        sessions = [
            stub.CreateSession(pb.CreateSessionRequest(user_id=user), metadata=admin).session_id
            for user in ("alice", "bob")
        ]
    credentials = [admin, alice, [], [("authorization", "Bearer not.a.token")]]
    yield World(proc, sessions, credentials)
    proc.stop()


def message_strategy(descriptor: Descriptor, ids: list[str], depth: int = 0) -> Any:
    """Random messages of `descriptor`'s type; strings are often ids that exist."""
    fields: dict[str, Any] = {}
    oneofs = {f.name: [c.name for c in f.fields] for f in descriptor.oneofs}
    in_oneof = {name for names in oneofs.values() for name in names}
    for f in descriptor.fields:
        value = field_strategy(f, ids, depth)
        if value is not None and f.name not in in_oneof:
            fields[f.name] = st.one_of(st.none(), value)
    branches = [
        st.none(),
        *(
            st.tuples(st.just(f.name), field_strategy(f, ids, depth))
            for f in descriptor.fields
            if f.name in in_oneof
        ),
    ]

    def build(values: dict[str, Any], branch: tuple[str, Any] | None) -> Message:
        message = message_factory.GetMessageClass(descriptor)()
        chosen = dict(values)
        if branch is not None:
            chosen[branch[0]] = branch[1]
        for name, value in chosen.items():
            if value is None:
                continue
            target = getattr(message, name)
            if isinstance(value, Message):
                target.CopyFrom(value)
            elif isinstance(value, dict):
                target.update(value)
            else:
                setattr(message, name, value)
        return message

    return st.builds(build, st.fixed_dictionaries(fields), st.one_of(*branches))


def field_strategy(f: FieldDescriptor, ids: list[str], depth: int) -> Any:
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        return st.dictionaries(st.text(max_size=40), st.text(max_size=40), max_size=12)
    if f.is_repeated:
        return None
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        if depth > 2 or f.message_type.file is not pb.DESCRIPTOR:
            return None
        return message_strategy(f.message_type, ids, depth + 1)
    if f.type == FieldDescriptor.TYPE_STRING:
        return st.one_of(
            st.sampled_from(ids),
            st.text(max_size=80),
            st.text(alphabet="0123456789", min_size=18, max_size=40),  # huge page tokens
            st.sampled_from(["", "s_", "calculator", "python", "\x00", "0", "-1", "9" * 30]),
        )
    if f.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if f.type == FieldDescriptor.TYPE_ENUM:
        return st.integers(min_value=-5, max_value=len(f.enum_type.values) + 3)
    if f.type in INT_RANGES:
        low, high = INT_RANGES[f.type]
        edges = sorted({0, 1, low, high, max(low, -1)})
        return st.one_of(st.integers(low, high), st.sampled_from(edges))
    if f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True)
    return None


def requests_of(name: str, ids: list[str]) -> Any:
    return message_strategy(pb.DESCRIPTOR.message_types_by_name[name], ids)


# ---- the honest client ------------------------------------------------------------------------


class HonestClient(threading.Thread):
    """Chats on its own session and stream the whole time; notes what went wrong."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.metadata = [("authorization", f"Bearer {token('honest', 'read chat')}")]
        self.stop_event = threading.Event()
        self.completed_runs = 0
        self.problems: list[str] = []
        self.seqs: list[int] = []

    def run(self) -> None:
        requests: queue.Queue[pb.ChatRequest | None] = queue.Queue()

        def outgoing() -> Iterator[pb.ChatRequest]:
            while (request := requests.get()) is not None:
                yield request

        with grpc.insecure_channel(self.address) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            session = stub.CreateSession(pb.CreateSessionRequest(), metadata=self.metadata)
            call = stub.Chat(outgoing(), metadata=self.metadata)
            requests.put(
                pb.ChatRequest(request_id="j", join=pb.JoinSession(session_id=session.session_id))
            )
            try:
                self._converse(call, requests, session.session_id)
            except grpc.RpcError as exc:
                self.problems.append(f"stream failed: {exc}")
            finally:
                requests.put(None)
                call.cancel()

    def _converse(
        self, call: Any, requests: queue.Queue[pb.ChatRequest | None], session_id: str
    ) -> None:
        def send() -> None:
            requests.put(
                pb.ChatRequest(
                    request_id=uuid.uuid4().hex,
                    send=pb.SendMessage(
                        session_id=session_id, message_id=uuid.uuid4().hex, text="what is 6 * 7?"
                    ),
                )
            )

        send()
        for response in call:
            for reply in response.replies:
                if reply.status.code != 0:
                    self.problems.append(f"command refused: {reply.status.message}")
            for event in response.events:
                self.seqs.append(event.seq)
                if event.HasField("run_completed"):
                    if event.run_completed.finish_reason != pb.FINISH_REASON_STOP:
                        self.problems.append(f"run ended {event.run_completed.finish_reason}")
                    self.completed_runs += 1
                    if self.stop_event.is_set():
                        return
                    send()


@pytest.fixture(scope="module")
def honest(world: World) -> Iterator[HonestClient]:
    client = HonestClient(world.service.address)
    client.start()
    yield client
    client.stop_event.set()
    client.join(scaled(20))


def check(code: grpc.StatusCode, details: str | None) -> None:
    assert code in DOCUMENTED, f"{code}: {details}"


# ---- unary RPCs -------------------------------------------------------------------------------

UNARY = {
    "Cancel": "CancelRequest",
    "CreateSession": "CreateSessionRequest",
    "GetSession": "GetSessionRequest",
    "ListSessions": "ListSessionsRequest",
    "ListMessages": "ListMessagesRequest",
    "ListTools": "ListToolsRequest",
}


@pytest.mark.parametrize("method", sorted(UNARY))
def test_random_unary_requests_get_documented_statuses(
    world: World, honest: HonestClient, method: str
) -> None:
    with grpc.insecure_channel(world.service.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)

        @FUZZ
        @given(
            request=requests_of(UNARY[method], world.sessions),
            metadata=st.sampled_from(world.credentials),
        )
        def case(request: Message, metadata: list[tuple[str, str]]) -> None:
            CASES[method] = CASES.get(method, 0) + 1
            try:
                getattr(stub, method)(request, metadata=metadata, timeout=scaled(10))
            except grpc.RpcError as exc:
                check(exc.code(), exc.details())

        case()


# ---- streams ----------------------------------------------------------------------------------


def test_random_chat_commands_get_documented_replies(world: World, honest: HonestClient) -> None:
    with grpc.insecure_channel(world.service.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)

        @FUZZ
        @given(
            commands=st.lists(requests_of("ChatRequest", world.sessions), max_size=8),
            metadata=st.sampled_from(world.credentials),
        )
        def case(commands: list[pb.ChatRequest], metadata: list[tuple[str, str]]) -> None:
            CASES["Chat"] = CASES.get("Chat", 0) + 1
            for i, command in enumerate(commands):
                command.request_id = f"c{i}"
                if command.WhichOneof("command") == "join":
                    command.join.live_only = True  # do not wait for a random replay's end
            call = stub.Chat(iter(commands), metadata=metadata, timeout=scaled(30))
            try:
                for response in call:
                    for reply in response.replies:
                        assert reply.status.code in DOCUMENTED_INTS, reply.status
            except grpc.RpcError as exc:
                check(exc.code(), exc.details())

        case()


def test_random_tool_starts_get_documented_outcomes(world: World, honest: HonestClient) -> None:
    with grpc.insecure_channel(world.service.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)

        @FUZZ
        @given(
            requests=st.lists(requests_of("ExecuteToolRequest", world.sessions), max_size=3),
            tool=st.sampled_from(["calculator", "search_files", "read_file", "nope", ""]),
            metadata=st.sampled_from(world.credentials),
        )
        def case(requests: list[Any], tool: str, metadata: list[tuple[str, str]]) -> None:
            CASES["ExecuteTool"] = CASES.get("ExecuteTool", 0) + 1
            if requests and requests[0].WhichOneof("command") == "start":
                requests[0].start.tool_name = tool  # python and long_task stay out: slow
            call = stub.ExecuteTool(iter(requests), metadata=metadata, timeout=scaled(30))
            try:
                for _ in call:
                    pass
            except grpc.RpcError as exc:
                check(exc.code(), exc.details())

        case()


@pytest.mark.parametrize("method", ["Chat", "ExecuteTool"])
@pytest.mark.parametrize("authenticated", [True, False], ids=["with-auth", "loopback-open"])
def test_bytes_that_are_no_request_end_the_stream_invalid_argument(
    world: World, honest: HonestClient, service: ServiceProcess, method: str, authenticated: bool
) -> None:
    """Issue 12 item 8: such a Chat stream used to end with OK and no error."""
    address = world.service.address if authenticated else service.address
    metadata = world.credentials[0] if authenticated else []
    with grpc.insecure_channel(address) as channel:
        raw = channel.stream_stream(f"/agent_relay.v1.AgentService/{method}")
        call = raw(iter([b"\xff\xff\xff\xff not a protobuf"]), metadata=metadata)
        with pytest.raises(grpc.RpcError) as caught:
            list(call)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid message" in (caught.value.details() or "")


def test_the_honest_client_chatted_throughout(world: World, honest: HonestClient) -> None:
    """Last in the module: the honest stream outlived every fuzz case and still chats."""
    before = honest.completed_runs
    deadline = time.monotonic() + scaled(20)
    while honest.completed_runs < before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert honest.problems == []
    assert honest.is_alive()
    assert honest.completed_runs >= before + 2
    assert honest.seqs == list(range(1, len(honest.seqs) + 1))  # no gap, no repeat
    assert world.service.process.poll() is None
    assert "Traceback" not in world.service.text()
    print(
        f"\ngRPC fuzz: {sum(CASES.values())} cases ({CASES}); the honest client completed "
        f"{honest.completed_runs} runs, {len(honest.seqs)} events, gap-free"
    )
    assert set(CASES) == {*UNARY, "Chat", "ExecuteTool"}
