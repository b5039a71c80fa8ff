"""What authenticating gRPC callers costs: the same service with and without credentials.

Two agent service processes on 127.0.0.1, measured in the same run by the same
client: one with no credentials configured (every caller allowed, the loopback
default) and one with --auth-jwt-secret, called with an HS256 bearer token. Prints
p50 / p99 of a unary call (GetSession: authentication plus the session check) and
of opening a Chat stream and joining a session, and the cost of verifying one
token in-process. Bounded: a few seconds.

    .venv/bin/python bench/auth_bench.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_relay.v1 import agent_pb2 as pb
from agent_relay.v1 import agent_pb2_grpc
from agent_service.auth import Authenticator, TokenVerifier, mint_token
from bench.common import summary_ms, table

REPO = Path(__file__).resolve().parents[1]
SECRET = "auth-bench-secret-0123456789abcdef-0123456789"


def start(extra: list[str], folder: str) -> tuple[subprocess.Popen[str], str]:
    argv = [
        sys.executable,
        "-m",
        "agent_service",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "",
        "--store-url",
        f"sqlite:///{folder}/bench-{len(extra)}.sqlite3",
        *extra,
    ]
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if "listening on" in line:
            return process, line.rsplit(" ", 1)[1].strip()
    raise RuntimeError(f"{argv} did not start")


async def measure(address: str, metadata: tuple[tuple[str, str], ...], calls: int) -> list[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        session = await stub.CreateSession(
            pb.CreateSessionRequest(user_id="bench"), metadata=metadata
        )
        request = pb.GetSessionRequest(session_id=session.session_id)
        for _ in range(100):  # warm up
            await stub.GetSession(request, metadata=metadata)
        unary: list[float] = []
        for _ in range(calls):
            started = time.perf_counter()
            await stub.GetSession(request, metadata=metadata)
            unary.append(time.perf_counter() - started)
        streams: list[float] = []
        join = pb.ChatRequest(request_id="j", join=pb.JoinSession(session_id=session.session_id))
        for _ in range(max(1, calls // 10)):
            started = time.perf_counter()
            call = stub.Chat(metadata=metadata)
            await call.write(join)
            await call.read()
            streams.append(time.perf_counter() - started)
            call.cancel()
        return [summary_ms(unary), summary_ms(streams)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    token = mint_token(SECRET, subject="bench", scopes="read chat", ttl_s=3600, now=time.time())
    with tempfile.TemporaryDirectory() as folder:
        open_proc, open_address = start([], folder)
        auth_proc, auth_address = start(["--auth-jwt-secret", SECRET], folder)
        try:
            rows = [
                ["no credentials (baseline)", *asyncio.run(measure(open_address, (), args.calls))],
                [
                    "HS256 bearer token",
                    *asyncio.run(
                        measure(auth_address, (("authorization", f"Bearer {token}"),), args.calls)
                    ),
                ],
            ]
        finally:
            for process in (open_proc, auth_proc):
                process.terminate()
                process.wait(timeout=15)
    table(
        f"gRPC authentication, {args.calls} sequential GetSession calls, p50 / p99 ms",
        ["service", "GetSession", "open Chat + join"],
        rows,
    )
    now = time.time()
    fresh = [
        mint_token(SECRET, subject=f"b{i}", scopes="read", ttl_s=3600, now=now) for i in range(2000)
    ]
    verifier = TokenVerifier(SECRET)
    started = time.perf_counter()
    for each in fresh:
        verifier.verify(each, now)
    first_us = (time.perf_counter() - started) / len(fresh) * 1e6
    authenticator = Authenticator(verifier)
    metadata = [("authorization", f"Bearer {fresh[0]}")]
    runs = 5000
    seconds = timeit.timeit(lambda: authenticator.authenticate(metadata, {}, now), number=runs)
    print(
        f"\n  one HS256 token in-process: {first_us:.1f} us the first time (signature), "
        f"{seconds / runs * 1e6:.1f} us when remembered"
    )


if __name__ == "__main__":
    main()
