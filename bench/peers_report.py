"""The peers bench's table and targets: medians and spreads of the rounds, judged as ratios."""

from __future__ import annotations

import argparse
import statistics
from typing import Any

Metrics = dict[str, float]
Results = dict[str, dict[str, list[Metrics]]]  # scenario -> system -> one Metrics per round

WS, UNARY, BIDI, SIO = "aiohttp ws", "grpc unary", "grpc bidi", "socketio"
# agent-relay's systems in the results: the durable default (one SQLite file), then the
# scale-out backends (PostgreSQL store, Redis Streams log, one replica) where measured
RELAYS = (("relay", ""), ("relay redis", ", PostgreSQL + Redis"))


def agg(runs: list[Metrics], key: str) -> tuple[float, float, float]:
    """Median, min and max of one metric over the rounds (NaN when none has it)."""
    values = [r[key] for r in runs if key in r and r[key] == r[key]]
    if not values:
        return float("nan"), float("nan"), float("nan")
    return statistics.median(values), min(values), max(values)


def fmt(value: float) -> str:
    """Three significant figures or so; whole numbers as integers."""
    if value != value:
        return "-"
    if float(value).is_integer() and abs(value) < 1e7:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3f}"


class View:
    """Read the results: `cell` is `median (min-max)`, `med` the median alone."""

    def __init__(self, results: Results) -> None:
        self.r = results

    def runs(self, scenario: str, system: str) -> list[Metrics]:
        return self.r.get(scenario, {}).get(system, [])

    def relays(self, scenario: str, suffix: str = "") -> list[tuple[str, str]]:
        """(system, label) of each agent-relay backend measured in `scenario`; `suffix`
        is the system's name after the backend's (rtt: "fresh", "history")."""
        return [
            (system, label)
            for system, label in RELAYS
            if self.runs(scenario, f"{system} {suffix}".strip())
        ]

    def med(self, scenario: str, system: str, key: str) -> float:
        return agg(self.runs(scenario, system), key)[0]

    def cell(self, scenario: str, system: str, key: str) -> str:
        runs = self.runs(scenario, system)
        median, low, high = agg(runs, key)
        if median != median:
            return "-"
        if len(runs) < 2 or low == high:
            return fmt(median)
        return f"{fmt(median)} ({fmt(low)}-{fmt(high)})"

    def lat(self, scenario: str, system: str, keys: tuple[str, ...] = ("p50_ms", "p99_ms")) -> str:
        return " / ".join(self.cell(scenario, system, k) for k in keys)


def report(results: Results, args: argparse.Namespace) -> list[list[str]]:
    """Rows of (scenario and unit, agent-relay, the peers in the same run)."""
    v = View(results)
    rows: list[list[str]] = []
    if "rtt" in results:
        peers = "; ".join(f"{p} {v.lat('rtt', p)}" for p in (WS, UNARY, BIDI, SIO))
        peer_cpu = "; ".join(
            f"{p} {v.cell('rtt', p, 'cpu_ms_server')}" for p in (WS, UNARY, BIDI, SIO)
        )
        for relay, on in v.relays("rtt", "fresh"):
            fresh, history = f"{relay} fresh", f"{relay} history"
            hist = fmt(v.med("rtt", history, "history_messages"))
            rows.append(
                [
                    f"message -> first delta, fresh session{on}: p50 / p99 ms",
                    v.lat("rtt", fresh),
                    peers if not on else "-",
                ]
            )
            rows.append(
                [
                    f"the same on a session with {hist}+ messages of history{on}",
                    v.lat("rtt", history),
                    "-",
                ]
            )
            for system, label in ((fresh, "fresh"), (history, "with history")):
                rows.append(
                    [
                        f"CPU ms per message, {label}{on}",
                        f"service {v.cell('rtt', system, 'cpu_ms_service')}, "
                        f"edge {v.cell('rtt', system, 'cpu_ms_edge')}",
                        f"server: {peer_cpu}" if system == "relay fresh" else "-",
                    ]
                )
    for n in args.paced_n:
        s = f"paced-{n}"
        for relay, on in v.relays(s):
            shown = (WS, BIDI, SIO) if not on else ()
            head = f"{n} sessions x {args.paced_rate:g} words/s ({args.paced_s:g} s){on}"
            keys = ("p50_ms", "p99_ms", "max_ms")
            rows.append(
                [
                    f"{head}: delta latency p50 / p99 / max ms",
                    v.lat(s, relay, keys),
                    "; ".join(f"{p} {v.lat(s, p, keys)}" for p in shown) or "-",
                ]
            )
            rows.append(
                [
                    f"{head}: deltas dropped of {fmt(v.med(s, relay, 'expected'))}; "
                    f"frames later than {args.late_ms:g} ms; ramp s (all sessions streaming); "
                    "messages resent after a retryable refusal",
                    f"dropped {v.cell(s, relay, 'dropped')}; "
                    f"late {v.cell(s, relay, 'late_frames')} of {v.cell(s, relay, 'frames')}; "
                    f"ramp {v.cell(s, relay, 'ramp_s')}; resent {v.cell(s, relay, 'resent')}",
                    "; ".join(
                        f"{p} dropped {v.cell(s, p, 'dropped')}, "
                        f"late {v.cell(s, p, 'late_frames')}, ramp {v.cell(s, p, 'ramp_s')}"
                        for p in shown
                    )
                    or "-",
                ]
            )
            rows.append(
                [
                    f"{head}: CPU us per delta",
                    f"service {v.cell(s, relay, 'cpu_us_per_delta_service')}, "
                    f"edge {v.cell(s, relay, 'cpu_us_per_delta_edge')}",
                    "; ".join(f"{p} {v.cell(s, p, 'cpu_us_per_delta_server')}" for p in shown)
                    or "-",
                ]
            )
    for relay, on in v.relays("full"):
        shown = (WS, SIO, BIDI) if not on else ()
        rows.append(
            [
                f"{args.full_sessions} sessions at full speed{on}: deltas/s delivered "
                "(peers: one frame or message per delta)",
                f"{v.cell('full', relay, 'deltas_per_s')} "
                f"(in {v.cell('full', relay, 'frames_per_s')} frames/s)",
                "; ".join(f"{p} {v.cell('full', p, 'deltas_per_s')}" for p in shown) or "-",
            ]
        )
        rows.append(
            [
                f"the same{on}: CPU us per delta",
                f"service {v.cell('full', relay, 'cpu_us_per_delta_service')}, "
                f"edge {v.cell('full', relay, 'cpu_us_per_delta_edge')}",
                "; ".join(f"{p} {v.cell('full', p, 'cpu_us_per_delta_server')}" for p in shown)
                or "-",
            ]
        )
    if "fanout" in results:
        rows.append(
            [
                f"one session to {args.fanout_sockets} sockets: frames/s and deltas/s received",
                f"{v.cell('fanout', 'relay', 'frames_per_s')} frames/s, "
                f"{v.cell('fanout', 'relay', 'deltas_per_s')} deltas/s",
                "; ".join(
                    f"{p} {v.cell('fanout', p, 'frames_per_s')} frames/s = deltas/s"
                    for p in (WS, SIO)
                ),
            ]
        )
    for scenario, what in (
        ("wire-full", f"{args.full_sessions} sessions at full speed"),
        ("wire-fanout", f"one session to {args.fanout_sockets} sockets"),
    ):
        if scenario not in results:
            continue
        for wire in ("json", "proto"):
            name = "agent-relay.v1+proto" if wire == "proto" else "agent-relay.v1 (JSON)"
            rows.append(
                [
                    f"{what}, {name} sockets: deltas/s; CPU us per delta",
                    f"{v.cell(scenario, wire, 'deltas_per_s')} deltas/s; edge "
                    f"{v.cell(scenario, wire, 'cpu_us_per_delta_edge')}, service "
                    f"{v.cell(scenario, wire, 'cpu_us_per_delta_service')}",
                    "JSON and proto rows: one edge, rounds interleaved",
                ]
            )
    for relay, on in v.relays("burst"):
        rows.append(
            [
                f"{args.burst_sessions} sessions started at once{on}: first delta p50 / p99 ms",
                v.lat("burst", relay),
                "; ".join(f"{p} {v.lat('burst', p)}" for p in (WS, BIDI, SIO)) if not on else "-",
            ]
        )
    if "overload" in results:
        n = fmt(v.med("overload", "relay", "sessions"))
        rows.append(
            [
                f"overload: {n} sessions send at once: first answers acked / overloaded / "
                "upstream_unavailable; untrue; s to all answered; s to all acked (resent)",
                " / ".join(
                    v.cell("overload", "relay", k)
                    for k in ("acked", "overloaded", "upstream_unavailable")
                )
                + f"; untrue {v.cell('overload', 'relay', 'untrue')}"
                + f"; {v.cell('overload', 'relay', 'answered_s')} s"
                + f"; {v.cell('overload', 'relay', 'all_acked_s')} s",
                "-",
            ]
        )
    if "idle" in results:
        total = max((m["sockets"] for m in v.runs("idle", "relay")), default=0)
        rows.append(
            [
                f"memory per idle socket, each on its own session (RSS growth / sockets, "
                f"{fmt(total)} in {len(v.runs('idle', 'relay'))} steps): KiB",
                f"edge {v.cell('idle', 'relay', 'kib_per_socket')}; service "
                f"{v.cell('idle', 'relay', 'service_kib_per_session')} per session",
                "; ".join(f"{p} {v.cell('idle', p, 'kib_per_socket')}" for p in (WS, SIO)),
            ]
        )
    return rows


def targets(results: Results, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The issue's targets, each a ratio to a peer measured in the same run, judged."""
    v = View(results)
    out: list[dict[str, Any]] = []

    def judge(name: str, measured: float, limit: float, ok: bool, note: str) -> None:
        known = measured == measured and limit == limit
        out.append(
            {
                "target": name,
                "measured": measured,
                "limit": limit,
                "met": ok if known else None,
                "note": note,
            }
        )

    for relay, on in v.relays("rtt", "fresh"):
        floor = v.med("rtt", WS, "p50_ms") + v.med("rtt", BIDI, "p50_ms")
        p50 = v.med("rtt", f"{relay} fresh", "p50_ms")
        judge(
            f"message -> first delta p50 <= 7 x (raw WS p50 + raw gRPC bidi p50){on}",
            p50, 7 * floor, p50 <= 7 * floor, f"ms, {p50 / floor:.1f} x",
        )  # fmt: skip
        cpu = v.med("rtt", f"{relay} fresh", "cpu_ms_service")
        judge(f"service CPU per message <= 1 ms{on}", cpu, 1.0, cpu <= 1.0, "ms, fresh session")
        hist = v.med("rtt", f"{relay} history", "p50_ms")
        judge(
            f"first delta p50 with history <= 1.2 x fresh{on}",
            hist, 1.2 * p50, hist <= 1.2 * p50, f"ms, {hist / p50:.2f} x",
        )  # fmt: skip
        hcpu = v.med("rtt", f"{relay} history", "cpu_ms_service")
        judge(
            f"service CPU per message with history <= 1.2 x fresh{on}",
            hcpu, 1.2 * cpu, hcpu <= 1.2 * cpu, f"ms, {hcpu / cpu:.2f} x",
        )  # fmt: skip
    for n in args.paced_n:
        s = f"paced-{n}"
        for relay, on in v.relays(s):
            p99 = v.med(s, relay, "p99_ms")
            dropped = v.med(s, relay, "dropped")
            smaller = "" if n >= 1000 else "; the target names N = 1,000"
            judge(
                f"N = {n} x {args.paced_rate:g} words/s: delta p99 < 50 ms, nothing dropped{on}",
                p99, 50.0, p99 < 50.0 and dropped == 0, f"ms, dropped {fmt(dropped)}{smaller}",
            )  # fmt: skip
    for relay, on in v.relays("full"):
        rate = v.med("full", relay, "deltas_per_s")
        raw = v.med("full", WS, "deltas_per_s")
        sio = v.med("full", SIO, "deltas_per_s")
        judge(
            f"full speed deltas/s >= raw aiohttp push{on}",
            rate, raw, rate >= raw, f"{rate / raw:.2f} x",
        )  # fmt: skip
        judge(
            f"full speed deltas/s >= 6 x python-socketio{on}",
            rate, 6 * sio, rate >= 6 * sio, f"{rate / sio:.1f} x",
        )  # fmt: skip
    for relay, on in v.relays("burst"):
        p99 = v.med("burst", relay, "p99_ms")
        judge(
            f"first delta p99 <= 50 ms, {args.burst_sessions} sessions at once{on}",
            p99, 50.0, p99 <= 50.0, "ms",
        )  # fmt: skip
    if "overload" in results:
        untrue = v.med("overload", "relay", "untrue")
        twice = v.med("overload", "relay", "not_once_in_history")
        note = f"untrue {fmt(untrue)}, not once in history {fmt(twice)}"
        judge(
            "under overload every answer true: no refused message accepted, each once in history",
            untrue + twice, 0.0, untrue + twice == 0, note,
        )  # fmt: skip
    if "idle" in results:
        kib = v.med("idle", "relay", "kib_per_socket")
        raw = v.med("idle", WS, "kib_per_socket")
        judge(
            "memory per idle socket <= 1.1 x raw aiohttp",
            kib, 1.1 * raw, kib <= 1.1 * raw, f"KiB, {kib / raw:.2f} x",
        )  # fmt: skip
    return out


def print_table(
    rows: list[list[str]],
    judged: list[dict[str, Any]],
    args: argparse.Namespace,
    info: dict[str, Any],
) -> None:
    """The table and the targets, as Markdown; `info` has the run's seconds and notes."""
    print(
        f"\nagent-relay beside its peers, measured in one run: {args.rounds} rounds, systems "
        "interleaved, median (min-max)\non a shared 2-core machine (other jobs running): the "
        "figures are noisy, compare within one run\n"
    )
    print("| scenario | agent-relay | peers, same run |")
    print("| --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\n| target | measured | limit | met |")
    print("| --- | --- | --- | --- |")
    for t in judged:
        met = {True: "met", False: "not met", None: "-"}[t["met"]]
        print(f"| {t['target']} | {fmt(t['measured'])} ({t['note']}) | {fmt(t['limit'])} | {met} |")
    if info.get("idle_interleaved") is False:
        print("\nidle: one system after the other (their sockets exceed the fd limit at once)")
    print(f"\n{info.get('seconds', 0):.0f} s in all")
