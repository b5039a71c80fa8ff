"""What encoding one server frame costs the edge on each wire, in-process (no sockets).

Every frame of clients/spec/wire/frames.json's set (tests/support/wire_frames.py, the edge's
own encoders) is encoded afresh (its per-wire cache cleared), `--repeat` times over `--rounds`
rounds; the table gives microseconds per frame, min and median of the rounds. A room encodes a
frame once per wire in use, so this is the edge's cost per frame sent, whatever the fan-out.

    .venv/bin/python bench/wire_encode_bench.py [--rounds 7] [--repeat 2000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.wire_frames import server_frames
from ws_edge.wire import OutFrame, Wire

EVENTS = ("accepted", "run started", "one delta", "tool started", "tool progress")
EVENTS += ("tool output", "tool completed", "complete", "run error")


def per_frame_us(frames: list[OutFrame], wire: Wire, repeat: int) -> float:
    def run() -> None:
        for frame in frames:
            frame._json = frame._proto = None
            frame.data(wire)

    return timeit.timeit(run, number=repeat) / repeat / len(frames) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    named = server_frames()
    groups = {
        "chat:response batch": [f for n, f in named if n.startswith("delta batch")],
        "other session event": [f for n, f in named if n in EVENTS],
    }
    print("us per frame encoded, min / median of the rounds (JSON and proto interleaved)")
    for label, frames in groups.items():
        times: dict[Wire, list[float]] = {Wire.JSON: [], Wire.PROTO: []}
        for _ in range(args.rounds):
            for wire in times:
                times[wire].append(per_frame_us(frames, wire, args.repeat))
        cells = [f"{min(t):.2f} / {statistics.median(t):.2f}" for t in times.values()]
        print(f"  {label:20} JSON {cells[0]:>13}   proto {cells[1]:>13}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
