"""A real TCP proxy on 127.0.0.1 whose connections a test can cut mid-stream.

Cutting closes both sockets at once (no WebSocket close frame, no gRPC GOAWAY):
to the client it looks like a dropped network, close code 1006.
"""

from __future__ import annotations

import asyncio
import contextlib


class CuttableProxy:
    """Forwards every connection to `target` ("host:port") until `cut()`."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target_host, self.target_port = host, int(port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._frozen: set[asyncio.StreamWriter] = set()  # bytes to these are dropped
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0  # accepted so far
        self.bytes_down = 0  # bytes from the target to clients so far

    async def start(self) -> str:
        """Listen on a free port; returns "127.0.0.1:PORT"."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer, down=False)),
            asyncio.create_task(self._pipe(up_reader, writer, down=True)),
        ]
        self._tasks.update(pipes)
        await asyncio.gather(*pipes, return_exceptions=True)
        self._tasks.difference_update(pipes)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, down: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if writer in self._frozen:
                    continue  # a black hole: the peer hears nothing, nothing is closed
                if down:
                    self.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    def cut(self) -> int:
        """Drop every open connection at once; returns how many sockets were closed."""
        count = len(self._writers)
        for writer in list(self._writers):
            transport = writer.transport
            transport.abort()  # RST, no graceful close
        self._writers.clear()
        return count

    def freeze(self) -> None:
        """Silence every open connection without closing it (a dead network path)."""
        self._frozen |= self._writers

    async def close(self) -> None:
        """Stop listening and drop everything."""
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
