"""What tracing costs the edge per frame: off (nothing exported) beside on (exporting).

Part 1, in process, the edge's own telemetry work per frame, beside a baseline
loop that does none of it, all in the same run:

- a `chat:message` frame: count it in, open its span (child of the frame's
  `traceparent`), put the context into a SendMessage's trace_context, count the
  ack out;
- a delta frame going out: count it.

"on" exports every span with OTLP over gRPC (BatchSpanProcessor, the default
settings) to a real receiver in another process; the CPU time of the export
thread is counted (process CPU time, all threads).

Part 2, end to end (when --e2e): the real agent service and edge processes,
with tracing off and exporting in alternating rounds (twice each), the same
client sending chat:message frames and waiting for each run to complete; prints
each process's CPU time per message (from /proc) and the round trip to the ack.

    .venv/bin/python bench/telemetry_bench.py [--frames 20000] [--e2e] [--messages 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opentelemetry.sdk.trace import TracerProvider

from agent_relay.v1 import agent_pb2 as pb
from bench.common import table
from relay_shared.agent_telemetry import AgentTelemetry
from relay_shared.edge_telemetry import EdgeTelemetry
from relay_shared.telemetry import setup_telemetry

REPO = Path(__file__).resolve().parents[1]
OTEL_VARS = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL")


def start_receiver() -> tuple[subprocess.Popen[str], str]:
    """A real OTLP gRPC receiver in its own process."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.telemetry.otlp_receiver"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("otlp receiver on "):
        raise RuntimeError(f"receiver did not start: {line!r}")
    return process, line.rsplit(" ", 1)[1].strip()


def stop_receiver(process: subprocess.Popen[str]) -> int:
    """Stop the receiver; the number of spans it got."""
    out, _ = process.communicate("", timeout=30)
    return int(out.rsplit(" ", 1)[1]) if "spans received" in out else -1


def message_frame(edge: EdgeTelemetry | None, traceparent: str, raw_size: int) -> pb.SendMessage:
    """The telemetry work the edge does for one chat:message frame (or none, with None)."""
    if edge is None:
        trace_context = {"traceparent": traceparent}
        send = pb.SendMessage(
            session_id="s1", message_id="m1", text="hi", trace_context=trace_context
        )
        return send
    edge.received(raw_size)
    with edge.message(traceparent, None, session_id="s1", message_id="m1") as message:
        send = pb.SendMessage(
            session_id="s1", message_id="m1", text="hi", trace_context=message.trace_context
        )
        message.accepted("r1", False)
    edge.sent(64)
    return send


def cpu_us_per_call(
    work: Callable[[], object], n: int, then: Callable[[], object] = lambda: None
) -> float:
    """Process CPU time (all threads) per call, in microseconds, best of 3 rounds;
    `then()` (an export flush) runs inside the timed part after the n calls."""
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for _ in range(n):
            work()
        then()
        best = min(best, (time.process_time() - started) / n * 1e6)
    return best


def part_one(frames: int) -> None:
    traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    for name in OTEL_VARS:
        os.environ.pop(name, None)
    off = EdgeTelemetry(setup_telemetry("bench-edge", install_global=False))
    unexported_telemetry = setup_telemetry("bench-edge", install_global=False)
    unexported_telemetry.tracer_provider = TracerProvider()  # spans made, sent nowhere
    unexported = EdgeTelemetry(unexported_telemetry)
    receiver, endpoint = start_receiver()
    os.environ.update(
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_BSP_MAX_QUEUE_SIZE=str(frames + 1),  # a burst this size must not drop spans
    )
    on_telemetry = setup_telemetry("bench-edge", install_global=False)
    on = EdgeTelemetry(on_telemetry)
    flush = on_telemetry.tracer_provider.force_flush  # type: ignore[union-attr]
    rows = []
    try:
        base = cpu_us_per_call(lambda: message_frame(None, traceparent, 200), frames)
        cost_off = cpu_us_per_call(lambda: message_frame(off, traceparent, 200), frames)
        cost_made = cpu_us_per_call(lambda: message_frame(unexported, traceparent, 200), frames)
        cost_on = cpu_us_per_call(lambda: message_frame(on, traceparent, 200), frames, flush)
        delta_base = cpu_us_per_call(lambda: None, frames * 5)
        delta_off = cpu_us_per_call(lambda: off.sent(120), frames * 5)
        delta_on = cpu_us_per_call(lambda: on.sent(120), frames * 5)
    finally:
        on_telemetry.shutdown()
        spans = stop_receiver(receiver)
    rows.append(("chat:message, baseline (no telemetry)", f"{base:.2f}", "-"))
    rows.append(("chat:message, tracing off", f"{cost_off:.2f}", f"+{cost_off - base:.2f}"))
    rows.append(
        ("chat:message, spans made, not exported", f"{cost_made:.2f}", f"+{cost_made - base:.2f}")
    )
    rows.append(("chat:message, tracing on, exporting", f"{cost_on:.2f}", f"+{cost_on - base:.2f}"))
    rows.append(("delta frame out, baseline", f"{delta_base:.3f}", "-"))
    rows.append(
        ("delta frame out, tracing off", f"{delta_off:.3f}", f"+{delta_off - delta_base:.3f}")
    )
    rows.append(("delta frame out, tracing on", f"{delta_on:.3f}", f"+{delta_on - delta_base:.3f}"))
    table(
        f"Edge telemetry work per frame, in process ({frames} frames x 3 rounds, best round; "
        f"the receiver got {spans} spans)",
        ("frame", "CPU us per frame", "over baseline"),
        rows,
    )


class _Outcome:
    status, code = "completed", ""


async def _tool_result() -> _Outcome:
    return _Outcome()


async def agent_run(agent: AgentTelemetry | None, traceparent: str) -> None:
    """The telemetry work the agent does for a run of two model calls and one tool call."""
    if agent is None:
        for _ in range(2):
            pass
        await _tool_result()
        return
    context = {"traceparent": traceparent}
    with agent.run(context, run_id="r1", session_id="s1", message_id="m1") as run:
        for step in range(2):
            with agent.model_call(provider="demo", model="demo", step=step) as call:
                call.saw_output()
                call.finished("stop", 20, 8)
        await agent.tool_call(tool_name="calculator", call_id="c1", run=_tool_result())
        run.ended("stop")


def async_cpu_us_per_run(
    agent: AgentTelemetry | None, traceparent: str, n: int, then: Callable[[], object]
) -> float:
    """Process CPU time per agent_run(), best of 3 rounds, in one event loop."""

    async def rounds() -> float:
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            for _ in range(n):
                await agent_run(agent, traceparent)
            then()
            best = min(best, (time.process_time() - started) / n * 1e6)
        return best

    return asyncio.run(rounds())


def part_one_agent(runs: int) -> None:
    """The agent's per-run telemetry work: off (metrics only) and on (exporting)."""
    traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    for name in OTEL_VARS:
        os.environ.pop(name, None)
    off = AgentTelemetry(setup_telemetry("bench-agent", install_global=False))
    receiver, endpoint = start_receiver()
    os.environ.update(
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_BSP_MAX_QUEUE_SIZE=str(runs * 4 + 1),
    )
    on_telemetry = setup_telemetry("bench-agent", install_global=False)
    on = AgentTelemetry(on_telemetry)
    flush = on_telemetry.tracer_provider.force_flush  # type: ignore[union-attr]
    try:
        base = async_cpu_us_per_run(None, traceparent, runs, lambda: None)
        cost_off = async_cpu_us_per_run(off, traceparent, runs, lambda: None)
        cost_on = async_cpu_us_per_run(on, traceparent, runs, flush)
    finally:
        on_telemetry.shutdown()
        for name in (*OTEL_VARS, "OTEL_BSP_MAX_QUEUE_SIZE"):
            os.environ.pop(name, None)
        spans = stop_receiver(receiver)
    table(
        f"Agent telemetry work per run (a run, two model calls, one tool call: 4 spans), "
        f"in process ({runs} runs x 3 rounds, best round; the receiver got {spans} spans)",
        ("run", "CPU us per run", "over baseline"),
        [
            ("baseline (no telemetry)", f"{base:.1f}", "-"),
            ("tracing off (metrics only)", f"{cost_off:.1f}", f"+{cost_off - base:.1f}"),
            ("tracing on, exporting", f"{cost_on:.1f}", f"+{cost_on - base:.1f}"),
        ],
    )


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(edge: Any, messages: int) -> tuple[list[float], int]:
    """One socket sends `messages` chat:message frames, each after the last run completed;
    returns the round trips to the ack and the frames received."""
    from tests.support.edge import EdgeClient, create_session

    session = create_session(edge)
    client = await EdgeClient.connect(edge.ws_url, token=session["token"])
    sid = session["session_id"]
    await client.join(sid)
    round_trips, frames = [], 0
    for index in range(messages):
        traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
        started = time.perf_counter()
        ack = await client.say(sid, f"bench {index}", traceparent=traceparent)
        round_trips.append(time.perf_counter() - started)
        await client.until_complete(sid, ack["run_id"])
        frames += len(client.frames)
        client.frames.clear()  # keep memory flat; every frame so far has been seen
    await client.close()
    return round_trips, frames


def part_two(messages: int) -> None:
    """The two real processes, tracing off and then on (exporting), same client."""

    from bench.common import percentile
    from tests.support.edge import start_edge
    from tests.support.service import start_agent_service

    rows = []
    # alternated, twice each: the machine is shared, so the spread between rounds shows the noise
    for mode in ("off", "on, exporting", "off", "on, exporting"):
        for name in OTEL_VARS:
            os.environ.pop(name, None)
        receiver = None
        if mode != "off":
            receiver, endpoint = start_receiver()
            os.environ.update(OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
        with tempfile.TemporaryDirectory() as folder:
            service = start_agent_service(
                Path(folder),
                "--demo-tokens-per-s", "0", "--demo-reply-words", "8",
                "--metrics-listen", "",
            )  # fmt: skip
            unlimited = ("1000000",) * 4
            limits = ("--conn-frames-per-s", "--conn-frames-burst", "--user-frames-per-s",
                      "--user-frames-burst")  # fmt: skip
            edge = start_edge(
                service.address, *(a for pair in zip(limits, unlimited, strict=True) for a in pair)
            )
            try:
                asyncio.run(drive(edge, min(20, messages)))  # warm up
                edge_cpu, agent_cpu = cpu_s(edge.process.pid), cpu_s(service.process.pid)
                round_trips, frames = asyncio.run(drive(edge, messages))
                edge_cpu = cpu_s(edge.process.pid) - edge_cpu
                agent_cpu = cpu_s(service.process.pid) - agent_cpu
            finally:
                edge.stop()
                service.stop()
        spans = stop_receiver(receiver) if receiver is not None else 0
        rows.append(
            (
                mode,
                f"{edge_cpu / messages * 1e6:.0f}",
                f"{edge_cpu / (frames + messages) * 1e6:.1f}",
                f"{agent_cpu / messages * 1e6:.0f}",
                f"{percentile(round_trips, 0.5) * 1e3:.2f} / "
                f"{percentile(round_trips, 0.99) * 1e3:.2f}",
                str(spans),
            )
        )
    for name in OTEL_VARS:
        os.environ.pop(name, None)
    table(
        f"Both real processes: {messages} chat:message frames, one at a time, each run "
        "completed before the next (demo model, 8 words); rounds alternate off / on",
        (
            "tracing",
            "edge CPU us per message",
            "edge CPU us per frame (in+out)",
            "agent CPU us per run",
            "ack round trip p50 / p99 ms",
            "spans received",
        ),
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--e2e", action="store_true", help="also run the two real processes")
    parser.add_argument("--messages", type=int, default=300)
    args = parser.parse_args()
    part_one(max(100, min(args.frames, 200_000)))
    part_one_agent(max(100, min(args.frames // 4, 50_000)))
    if args.e2e:
        part_two(max(10, min(args.messages, 5_000)))


if __name__ == "__main__":
    main()
