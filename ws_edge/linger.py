"""A lingering close for a socket's TCP connection, so the peer reads the close frame.

When the edge closes a socket while the peer is still sending (a flood, a fuzzer,
or just frames in flight), closing the TCP connection at once leaves the peer's
bytes unread: the kernel answers them with a reset, and a reset makes the peer's
kernel drop what it had not read yet, the edge's close frame included. The peer
then sees 1006 (reconnect) instead of, say, 1008 (do not). aiohttp closes the
transport right after sending the close frame when the close starts while the
socket's reader is waiting, so this cannot be left to the closing handshake.

`linger_on_close(transport, linger_s)` makes the transport's `close()` half-close
instead: the buffered frames and a FIN go out, the peer's bytes are still read
(and discarded by the closed WebSocket), and the connection is closed
`linger_s` later, or as soon as the peer's FIN arrives (it sends no more). `abort()`
still drops it at once; TLS transports (which cannot half-close) keep their plain close.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket


def linger_on_close(transport: asyncio.BaseTransport | None, linger_s: float) -> None:
    """Make transport.close() a half-close followed by a close linger_s later."""
    if not isinstance(transport, asyncio.Transport) or linger_s <= 0:
        return
    if not transport.can_write_eof():
        return
    lingering = _Lingering(transport, linger_s)
    # Instance attributes: this one transport only; aiohttp and asyncio call them as usual.
    transport.close = lingering.close  # type: ignore[method-assign]
    transport.abort = lingering.abort  # type: ignore[method-assign]


class _Lingering:
    """The replacement close and abort of one transport. A slotted object rather than two
    closures: every open socket holds one (a third of the memory, PERFORMANCE.md)."""

    __slots__ = ("_linger_s", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport, linger_s: float) -> None:
        self._transport = transport
        self._linger_s = linger_s
        self._scheduled: asyncio.TimerHandle | None = None

    def _close_now(self) -> None:
        type(self._transport).close(self._transport)  # the class's own close, not ours

    def close(self) -> None:
        transport = self._transport
        if self._scheduled is not None:
            # A close while lingering comes from asyncio's reader at the peer's FIN (or from
            # the app again). At the FIN the linger is over: left as it is, the reader would
            # find EOF again at every turn of the loop until the timer fired, a busy loop of
            # linger_s per closed socket.
            if _peer_finished(transport):
                self._scheduled.cancel()
                self._close_now()
            return
        if transport.is_closing():
            return
        try:
            transport.write_eof()  # after the buffered bytes: the close frame, then FIN
        except (OSError, RuntimeError):
            self._close_now()
            return
        self._scheduled = asyncio.get_running_loop().call_later(self._linger_s, self._close_now)

    def abort(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
        with contextlib.suppress(Exception):
            type(self._transport).abort(self._transport)


def _peer_finished(transport: asyncio.Transport) -> bool:
    """True once the peer has sent its FIN and nothing is left to read (or the socket
    failed): a peek at the socket, on a duplicate of its descriptor."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return True
    try:
        with sock.dup() as probe:
            waiting: bytes = probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        return not waiting
    except BlockingIOError:
        return False  # still open, nothing waiting
    except OSError:
        return True
