"""Peer: a bare aiohttp WebSocket server, the floor the edge stands beside.

Text commands, one per frame (anything else is echoed back unchanged):

- `push N`: N copies of one pre-encoded `chat:response`-shaped frame, then `done`.
- `pace N RATE`: N frames at RATE per second, each stamped with `time_unix_ms`
  (float milliseconds) when sent, then `done`.
- `sub G`: this socket joins fan-out group G.
- `fan G N`: N frames, each encoded once and sent to every socket of group G, then
  `done` to every socket of the group.

Prints `peer_ws listening on PORT`.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import WSMsgType, web

FRAME = (
    '{"type":"chat:response","session_id":"s","seq":1,"from_seq":1,"run_id":"r",'
    '"time_unix_ms":0,"text":"word ","step":0}'
)
groups: dict[str, list[web.WebSocketResponse]] = {}


def stamped(seq: int) -> str:
    return (
        f'{{"type":"chat:response","session_id":"s","seq":{seq},"from_seq":{seq},'
        f'"run_id":"r","time_unix_ms":{time.time() * 1000:.3f},"text":"word ","step":0}}'
    )


async def pace(sock: web.WebSocketResponse, count: int, rate: float) -> None:
    start = time.monotonic()
    for seq in range(1, count + 1):
        delay = start + seq / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await sock.send_str(stamped(seq))
    await sock.send_str("done")


async def fan(group: str, count: int) -> None:
    members = groups.get(group, [])
    for seq in range(1, count + 1):
        frame = stamped(seq)
        for member in members:
            await member.send_str(frame)
    for member in members:
        await member.send_str("done")


async def handle(request: web.Request) -> web.WebSocketResponse:
    sock = web.WebSocketResponse(compress=False, max_msg_size=0)
    await sock.prepare(request)
    tasks: set[asyncio.Task[None]] = set()
    async for msg in sock:
        if msg.type is not WSMsgType.TEXT:
            continue
        data: str = msg.data
        if data.startswith("push "):
            for _ in range(int(data[5:])):
                await sock.send_str(FRAME)
            await sock.send_str("done")
        elif data.startswith("pace "):
            _, count, rate = data.split()
            task = asyncio.create_task(pace(sock, int(count), float(rate)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif data.startswith("sub "):
            groups.setdefault(data[4:], []).append(sock)
        elif data.startswith("fan "):
            _, group, count = data.split()
            await fan(group, int(count))
        else:
            await sock.send_str(data)
    for members in groups.values():
        if sock in members:
            members.remove(sock)
    return sock


async def main() -> None:
    app = web.Application()
    app.router.add_get("/ws", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    print("peer_ws listening on", runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
