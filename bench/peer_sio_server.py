"""Peer: python-socketio on aiohttp, the same commands as peer_ws_server as events.

- `echo` (with ack): returns its data.
- `push {n}`: n `delta` events to the caller, then `done`.
- `pace {n, rate}`: n `delta` events at rate per second, each with `time_unix_ms`.
- `sub {group}` / `fan {group, n}`: room membership and n `delta` events to the room.

Prints `peer_sio listening on PORT`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import socketio
from aiohttp import web

sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)
DELTA = {"type": "chat:response", "session_id": "s", "seq": 1, "run_id": "r", "text": "word "}


@sio.event
async def echo(sid: str, data: Any) -> Any:
    return data


@sio.event
async def push(sid: str, data: dict[str, Any]) -> None:
    for _ in range(int(data["n"])):
        await sio.emit("delta", DELTA, to=sid)
    await sio.emit("done", {}, to=sid)


async def _pace(sid: str, count: int, rate: float) -> None:
    start = time.monotonic()
    for seq in range(1, count + 1):
        delay = start + seq / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await sio.emit("delta", {**DELTA, "seq": seq, "time_unix_ms": time.time() * 1000}, to=sid)
    await sio.emit("done", {}, to=sid)


@sio.event
async def pace(sid: str, data: dict[str, Any]) -> None:
    sio.start_background_task(_pace, sid, int(data["n"]), float(data["rate"]))


@sio.event
async def sub(sid: str, data: dict[str, Any]) -> None:
    await sio.enter_room(sid, str(data["group"]))


@sio.event
async def fan(sid: str, data: dict[str, Any]) -> None:
    room = str(data["group"])
    for seq in range(1, int(data["n"]) + 1):
        await sio.emit(
            "delta", {**DELTA, "seq": seq, "time_unix_ms": time.time() * 1000}, room=room
        )
    await sio.emit("done", {}, room=room)


async def main() -> None:
    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    print("peer_sio listening on", runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
