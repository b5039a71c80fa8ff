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
`linger_s` later. `abort()` still drops it at once; TLS transports (which cannot
half-close) keep their plain close.
"""

from __future__ import annotations

import asyncio
import contextlib


def linger_on_close(transport: asyncio.BaseTransport | None, linger_s: float) -> None:
    """Make transport.close() a half-close followed by a close linger_s later."""
    if not isinstance(transport, asyncio.Transport) or linger_s <= 0:
        return
    if not transport.can_write_eof():
        return
    close_now = transport.close
    loop = asyncio.get_running_loop()
    scheduled: list[asyncio.TimerHandle] = []

    def close() -> None:
        if scheduled or transport.is_closing():
            return
        try:
            transport.write_eof()  # after the buffered bytes: the close frame, then FIN
        except (OSError, RuntimeError):
            close_now()
            return
        scheduled.append(loop.call_later(linger_s, close_now))

    def abort() -> None:
        for handle in scheduled:
            handle.cancel()
        with contextlib.suppress(Exception):
            abort_now()

    abort_now = transport.abort
    # Instance attributes: this one transport only; aiohttp and asyncio call them as usual.
    transport.close = close  # type: ignore[method-assign]
    transport.abort = abort  # type: ignore[method-assign]
