"""Run the edge: bind (port 0 picks a free port), announce the address, drain on SIGTERM.

The first stdout line is `ws_edge listening on http://HOST:PORT` (https with
TLS), so a parent process or a test knows where to connect.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Sequence

from aiohttp import web

from relay_shared import event_loop
from relay_shared.gc_tuning import tune_gc
from relay_shared.logs import configure_logging
from relay_shared.telemetry import Telemetry, setup_telemetry
from ws_edge.app import create_app
from ws_edge.config import EdgeSettings, load


def server_ssl_context(settings: EdgeSettings) -> ssl.SSLContext | None:
    """TLS for https:// and wss:// when a certificate and key are configured."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


async def serve(settings: EdgeSettings, telemetry: Telemetry | None = None) -> None:
    """Serve until SIGTERM/SIGINT; then stop accepting, close sockets with 1012, exit."""
    app = create_app(settings=settings, telemetry=telemetry)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=settings.shutdown_timeout_s
    )
    await runner.setup()
    context = server_ssl_context(settings)
    assert runner.server is not None
    # Not web.TCPSite: it cannot bound the TLS handshake, and a client that opens a
    # connection and never says hello would otherwise hold it for asyncio's 60 s.
    server = await asyncio.get_running_loop().create_server(
        runner.server,
        settings.listen_host,
        settings.listen_port,
        ssl=context,
        ssl_handshake_timeout=settings.tls_handshake_timeout_s if context is not None else None,
        backlog=1024,
        reuse_address=True,
    )
    tune_gc(settings.gc_gen0_threshold)
    host, port = server.sockets[0].getsockname()[:2]
    scheme = "https" if context is not None else "http"
    print(f"ws_edge listening on {scheme}://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        logging.getLogger(__name__).info("draining")
        server.close()  # stop accepting; the runner then closes the sockets with 1012
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ws_edge` / `agent-relay edge`."""
    settings = load(argv)
    configure_logging(settings.log_level)
    telemetry = setup_telemetry("ws_edge")
    try:
        event_loop.run(serve(settings, telemetry), settings.event_loop)
    finally:
        telemetry.shutdown()  # flushes the spans still waiting for export
    return 0
