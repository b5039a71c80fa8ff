"""The edge's lingering close (ws_edge/linger.py) on real TCP sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio

from ws_edge.linger import linger_on_close

LONG_LINGER_S = 3600.0  # longer than any test waits: only the peer's FIN can end it


class _Server(asyncio.Protocol):
    """Records what the transport reports; discards what it reads."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.connected = asyncio.Event()
        self.lost = asyncio.Event()
        self.eofs = 0
        self.received = b""
        self.got_data = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        linger_on_close(transport, LONG_LINGER_S)
        self.connected.set()

    def data_received(self, data: bytes) -> None:
        self.received += data
        self.got_data.set()

    def eof_received(self) -> bool:
        self.eofs += 1
        return False  # as aiohttp's handler: the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


async def _pair() -> tuple[_Server, asyncio.StreamReader, asyncio.StreamWriter, asyncio.Server]:
    protocol = _Server()
    server = await asyncio.get_running_loop().create_server(lambda: protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.wait_for(protocol.connected.wait(), 10)
    return protocol, reader, writer, server


async def test_a_lingering_socket_closes_at_the_peers_fin_and_reads_eof_once() -> None:
    protocol, reader, writer, server = await _pair()
    try:
        assert protocol.transport is not None
        protocol.transport.write(b"bye")
        protocol.transport.close()  # the edge closes: half-close, then linger
        assert await asyncio.wait_for(reader.read(), 10) == b"bye"  # its bytes and FIN came
        assert not protocol.lost.is_set()  # still lingering: the peer may still send
        writer.write(b"late")
        await writer.drain()
        writer.write_eof()  # the peer is done
        # Before the fix the socket stayed open (read at EOF on every loop turn) for the
        # whole linger; this wait is a hang guard far shorter than LONG_LINGER_S.
        await asyncio.wait_for(protocol.lost.wait(), 20)
        assert protocol.received == b"late"
        assert protocol.eofs == 1
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


async def test_a_second_close_before_the_fin_keeps_lingering() -> None:
    protocol, reader, writer, server = await _pair()
    try:
        assert protocol.transport is not None
        protocol.transport.close()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        protocol.transport.close()  # again, the peer still open: the linger goes on
        writer.write(b"still sending")
        await writer.drain()
        await asyncio.wait_for(protocol.got_data.wait(), 20)
        assert protocol.received == b"still sending"
        assert not protocol.lost.is_set()
        writer.write_eof()
        await asyncio.wait_for(protocol.lost.wait(), 20)
        assert protocol.eofs == 1
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


async def test_an_open_lingering_socket_carries_no_state_of_its_own() -> None:
    """Until it closes, the transport holds no per-socket linger state (memory per idle
    socket): neither replacement methods nor a timer, only its lingering class."""
    protocol, reader, writer, server = await _pair()
    try:
        transport = protocol.transport
        assert transport is not None
        assert not {"close", "abort"} & set(vars(transport))
        assert not any("linger" in name for name in vars(transport))
        assert isinstance(transport, asyncio.Transport)
        transport.abort()  # abort still drops the connection at once
        assert await asyncio.wait_for(reader.read(), 10) == b""
        await asyncio.wait_for(protocol.lost.wait(), 20)
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
