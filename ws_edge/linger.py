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
from typing import Any


def linger_on_close(transport: asyncio.BaseTransport | None, linger_s: float) -> None:
    """Make transport.close() a half-close followed by a close linger_s later."""
    if not isinstance(transport, asyncio.Transport) or linger_s <= 0:
        return
    if not transport.can_write_eof():
        return
    # The transport becomes an instance of a subclass whose close and abort linger: the
    # class holds linger_s, so an open socket carries nothing more. Instance attributes
    # (bound methods, or a helper object) turned the transport's compact attribute values
    # into a whole dict: about 1 KB per open socket (PERFORMANCE.md: memory per idle
    # socket). A transport of a C type (uvloop's) cannot change class: it keeps its close.
    with contextlib.suppress(TypeError):
        transport.__class__ = _lingering_class(type(transport), linger_s)


# (transport class, linger_s) -> its lingering subclass; one or two per process.
_CLASSES: dict[tuple[type[asyncio.Transport], float], type[asyncio.Transport]] = {}


def _lingering_class(base: type[asyncio.Transport], linger_s: float) -> type[asyncio.Transport]:
    """The lingering subclass of one transport class, for one linger time."""
    cls = _CLASSES.get((base, linger_s))
    if cls is None:
        cls = _CLASSES[base, linger_s] = _make_lingering_class(base, linger_s)
    return cls


def _make_lingering_class(
    base: type[asyncio.Transport], linger_s: float
) -> type[asyncio.Transport]:
    class Lingering(base):  # type: ignore[valid-type,misc]
        __slots__ = ()  # the base's layout, so an instance can switch to this class

        def close(self) -> None:
            _close(self, base, linger_s)

        def abort(self) -> None:
            _abort(self, base)

    Lingering.__name__ = Lingering.__qualname__ = f"Lingering{base.__name__}"
    return Lingering


# Set on a transport when its linger starts (a closed socket's memory matters no more).
_SCHEDULED = "_agent_relay_linger"


def _close(transport: Any, base: type[asyncio.Transport], linger_s: float) -> None:
    scheduled: asyncio.TimerHandle | None = getattr(transport, _SCHEDULED, None)
    if scheduled is not None:
        # A close while lingering comes from asyncio's reader at the peer's FIN (or from
        # the app again). At the FIN the linger is over: left as it is, the reader would
        # find EOF again at every turn of the loop until the timer fired, a busy loop of
        # linger_s per closed socket.
        if _peer_finished(transport):
            scheduled.cancel()
            base.close(transport)
        return
    if transport.is_closing():
        return
    try:
        transport.write_eof()  # after the buffered bytes: the close frame, then FIN
    except (OSError, RuntimeError):
        base.close(transport)
        return
    handle = asyncio.get_running_loop().call_later(linger_s, base.close, transport)
    setattr(transport, _SCHEDULED, handle)


def _abort(transport: Any, base: type[asyncio.Transport]) -> None:
    scheduled: asyncio.TimerHandle | None = getattr(transport, _SCHEDULED, None)
    if scheduled is not None:
        scheduled.cancel()
    with contextlib.suppress(Exception):
        base.abort(transport)


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
