"""Run CPU-bound tool work in worker processes, off the event loop and killable.

A tool whose work is pure computation (the calculator) must neither block the
service's event loop nor outlive its timeout, and a thread can do neither: it
shares the GIL and cannot be stopped. `ProcessWorkers.run(fn, *args)` sends the
call to an idle worker process and awaits the reply without blocking the loop;
when the caller is cancelled (the tool's timeout, a cancel) the worker is killed
at once and replaced on demand. `fn` and its arguments must be picklable (a
module-level function); a ToolError it raises arrives as a ToolError, any other
exception as a ToolError with code `internal`.

Each worker is a fresh `python -I` that imports what it runs by name (with the
service's sys.path), so no fork of the threaded gRPC server happens, and the
service's main module is never run again (multiprocessing's spawn and forkserver
would re-import it). Calls and replies are pickled over two pipes. At most
`max_workers` calls run at once; more wait their turn (within their own timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from agent_service.tools.base import ToolError

log = logging.getLogger(__name__)

T = TypeVar("T")

# The worker's whole start: the service's import path, then serve() on the two pipes.
WORKER_BOOT = (
    "import json, sys\n"
    "sys.path[:] = json.loads(sys.argv[1])\n"
    "from agent_service.tools.workers import serve\n"
    "serve(int(sys.argv[2]), int(sys.argv[3]))\n"
)


class ProcessWorkers:
    """A small pool of worker processes. Use from one event loop."""

    def __init__(self, max_workers: int) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._slots = asyncio.Semaphore(max_workers)
        self._idle: list[_Worker] = []

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a worker process. Raises what fn raised, as a ToolError."""
        async with self._slots:
            worker = self._idle.pop() if self._idle else await self._start()
            try:
                reply = await worker.call(fn, args)
            except (EOFError, OSError):
                worker.kill()
                raise ToolError("the worker process died", "internal") from None
            except BaseException:
                worker.kill()  # cancelled mid-call: it may be computing still
                raise
            self._idle.append(worker)
        result: T = _unwrap(reply)
        return result

    def close(self) -> None:
        """Kill every idle worker (busy ones are killed as their calls end)."""
        while self._idle:
            self._idle.pop().kill()

    async def _start(self) -> _Worker:
        calls_r, calls_w = os.pipe()
        replies_r, replies_w = os.pipe()
        try:
            argv = [sys.executable, "-I", "-c", WORKER_BOOT, json.dumps(sys.path)]
            process = await asyncio.to_thread(
                subprocess.Popen,
                [*argv, str(calls_r), str(replies_w)],
                stdin=subprocess.DEVNULL,
                pass_fds=(calls_r, replies_w),
            )
        except BaseException:
            os.close(calls_w)
            os.close(replies_r)
            raise
        finally:
            os.close(calls_r)
            os.close(replies_w)
        return _Worker(
            process, Connection(calls_w, readable=False), Connection(replies_r, writable=False)
        )


class _Worker:
    """One worker process and our end of its pipe."""

    def __init__(
        self, process: subprocess.Popen[bytes], calls: Connection, replies: Connection
    ) -> None:
        self.process = process
        self.calls = calls
        self.replies = replies

    async def call(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, ...]:
        self.calls.send((fn, args))  # small: a function's name and its arguments
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()
        fd = self.replies.fileno()

        def wake() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await readable
        finally:
            loop.remove_reader(fd)
        reply: tuple[Any, ...] = self.replies.recv()  # EOFError when the worker died
        return reply

    def kill(self) -> None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(timeout=1.0)  # SIGKILL: reaped at once
        self.calls.close()
        self.replies.close()


def _unwrap(reply: tuple[Any, ...]) -> Any:
    kind = reply[0]
    if kind == "ok":
        return reply[1]
    if kind == "tool_error":
        raise ToolError(reply[1], reply[2])
    raise ToolError(reply[1], "internal")


def serve(calls_fd: int, replies_fd: int) -> None:
    """The worker's loop: one call at a time until the calls pipe closes."""
    calls, replies = Connection(calls_fd, writable=False), Connection(replies_fd, readable=False)
    while True:
        try:
            fn, args = calls.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[Any, ...] = ("ok", fn(*args))
        except ToolError as exc:
            reply = ("tool_error", exc.message, exc.code)
        except Exception as exc:  # reported to the caller, not fatal to the worker
            reply = ("error", f"{type(exc).__name__}: {exc}")
        replies.send(reply)
