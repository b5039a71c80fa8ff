"""A loopback TCP proxy that a test can cut (an outage of what is behind it) and restore."""

from __future__ import annotations

import asyncio


class PausableProxy:
    """A TCP proxy on loopback in front of Redis or PostgreSQL that can cut every
    connection and refuse new ones (an outage), then let them through again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.open = True
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @classmethod
    async def start(cls, url: str) -> PausableProxy:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        proxy = cls(port)
        proxy._server = await asyncio.start_server(proxy._serve, "127.0.0.1", 0)
        proxy.port = proxy._server.sockets[0].getsockname()[1]
        return proxy

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        self.open = False
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def restore(self) -> None:
        self.open = True

    async def close(self) -> None:
        await self.cut()
        if self._server is not None:
            self._server.close()
