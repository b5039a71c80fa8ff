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
