"""The peers bench's judging (bench/peers_report.py): medians, spreads and target ratios."""

from __future__ import annotations

import argparse

from bench.peers_report import agg, fmt, report, targets


def args() -> argparse.Namespace:
    return argparse.Namespace(
        paced_n=[100], paced_rate=50.0, paced_s=4.0, late_ms=50.0, full_sessions=100,
        fanout_sockets=100, burst_sessions=100, rounds=3,
    )  # fmt: skip


def test_agg_is_median_min_max_and_skips_missing_values() -> None:
    runs = [{"x": 3.0}, {"x": 1.0}, {"x": float("nan")}, {"y": 1.0}, {"x": 10.0}]
    assert agg(runs, "x") == (3.0, 1.0, 10.0)
    assert fmt(agg([], "x")[0]) == "-"


def test_targets_are_ratios_to_the_peers_of_the_same_run() -> None:
    results = {
        "rtt": {
            "relay fresh": [{"p50_ms": 2.0, "cpu_ms_service": 0.8}],
            "relay history": [{"p50_ms": 2.6, "cpu_ms_service": 0.9, "history_messages": 1000}],
            "aiohttp ws": [{"p50_ms": 0.1}],
            "grpc bidi": [{"p50_ms": 0.2}],
        },
        "full": {
            "relay": [{"deltas_per_s": 70_000.0}],
            "aiohttp ws": [{"deltas_per_s": 60_000.0}],
            "socketio": [{"deltas_per_s": 12_000.0}],
        },
        "paced-100": {"relay": [{"p99_ms": 20.0, "dropped": 3.0, "expected": 20000}]},
    }
    judged = {t["target"]: t["met"] for t in targets(results, args())}
    # 2.0 ms <= 7 x 0.3 ms = 2.1 ms
    assert judged["message -> first delta p50 <= 7 x (raw WS p50 + raw gRPC bidi p50)"] is True
    assert judged["service CPU per message <= 1 ms"] is True
    # 2.6 > 1.2 x 2.0
    assert judged["first delta p50 with history <= 1.2 x fresh"] is False
    assert judged["full speed deltas/s >= raw aiohttp push"] is True
    # 70,000 < 6 x 12,000
    assert judged["full speed deltas/s >= 6 x python-socketio"] is False
    # fast enough, but deltas were dropped
    assert judged["N = 100 x 50 words/s: delta p99 < 50 ms, nothing dropped"] is False
    rows = report(results, args())
    assert any("1,000+ messages of history" in row[0] for row in rows)


def test_the_scale_out_backends_get_rows_and_targets_of_their_own() -> None:
    results = {
        "rtt": {
            "relay fresh": [{"p50_ms": 2.0, "cpu_ms_service": 0.8}],
            "relay history": [{"p50_ms": 2.1, "cpu_ms_service": 0.8, "history_messages": 1000}],
            "relay redis fresh": [{"p50_ms": 4.0, "cpu_ms_service": 2.5}],
            "relay redis history": [
                {"p50_ms": 4.1, "cpu_ms_service": 2.6, "history_messages": 1000}
            ],
            "aiohttp ws": [{"p50_ms": 0.1}],
            "grpc bidi": [{"p50_ms": 0.2}],
        },
        "burst": {"relay": [{"p99_ms": 40.0}], "relay redis": [{"p99_ms": 200.0}]},
    }
    judged = {t["target"]: t["met"] for t in targets(results, args())}
    assert judged["service CPU per message <= 1 ms"] is True
    assert judged["service CPU per message <= 1 ms, PostgreSQL + Redis"] is False
    assert judged["first delta p99 <= 50 ms, 100 sessions at once"] is True
    assert judged["first delta p99 <= 50 ms, 100 sessions at once, PostgreSQL + Redis"] is False
    rows = {row[0]: row[1] for row in report(results, args())}
    assert rows["CPU ms per message, fresh, PostgreSQL + Redis"] == "service 2.50, edge -"
    assert rows["100 sessions started at once, PostgreSQL + Redis: first delta p50 / p99 ms"] == (
        "- / 200"
    )
    # without them (the backends did not answer), no row names them
    del results["rtt"]["relay redis fresh"], results["burst"]["relay redis"]
    assert not [row for row in report(results, args()) if "Redis" in row[0]]
