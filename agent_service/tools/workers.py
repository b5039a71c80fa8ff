"""Run CPU-bound tool work in worker processes, off the event loop and killable.

A tool whose work is pure computation (the calculator) must neither block the
service's event loop nor outlive its timeout, and a thread can do neither: it
shares the GIL and cannot be stopped. `ProcessWorkers.run(fn, *args)` sends the
call to an idle worker process and awaits the reply without blocking the loop;
when the caller is cancelled (the tool's timeout, a cancel) the worker is killed
at once and replaced on demand. `fn` and its arguments must be picklable (a
module-level function); a ToolError it raises arrives as a ToolError, any other
exception as a ToolError with code `internal`.

Workers come from a `forkserver` (a clean process forks them): forking the
threaded gRPC server itself is unsafe. At most `max_workers` calls run at once;
more wait their turn (still within their own timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from agent_service.tools.base import ToolError

log = logging.getLogger(__name__)

T = TypeVar("T")


class ProcessWorkers:
    """A small pool of worker processes. Use from one event loop."""

    def __init__(self, max_workers: int) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._context = multiprocessing.get_context("forkserver")
        self._slots = asyncio.Semaphore(max_workers)
        self._idle: list[_Worker] = []

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a worker process. Raises what fn raised, as a ToolError."""
        async with self._slots:
            worker = self._idle.pop() if self._idle else await self._start()
            try:
                reply = await worker.call(fn, args)
            except EOFError:
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
        ours, theirs = self._context.Pipe()
        process = self._context.Process(target=_serve, args=(theirs,), daemon=True)
        await asyncio.to_thread(process.start)  # the first start launches the forkserver
        theirs.close()
        return _Worker(process, ours)


class _Worker:
    """One worker process and our end of its pipe."""

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn

    @property
    def pid(self) -> int | None:
        return self.process.pid

    async def call(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, ...]:
        self.conn.send((fn, args))
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()
        fd = self.conn.fileno()

        def wake() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await readable
        finally:
            loop.remove_reader(fd)
        reply: tuple[Any, ...] = self.conn.recv()  # EOFError when the worker died
        return reply

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
            self.process.join(timeout=1.0)  # SIGKILL: reaped at once
        self.conn.close()


def _unwrap(reply: tuple[Any, ...]) -> Any:
    kind = reply[0]
    if kind == "ok":
        return reply[1]
    if kind == "tool_error":
        raise ToolError(reply[1], reply[2])
    raise ToolError(reply[1], "internal")


def _serve(conn: Connection) -> None:
    """The worker's loop: one call at a time until the pipe closes."""
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[Any, ...] = ("ok", fn(*args))
        except ToolError as exc:
            reply = ("tool_error", exc.message, exc.code)
        except Exception as exc:  # reported to the caller, not fatal to the worker
            reply = ("error", f"{type(exc).__name__}: {exc}")
        conn.send(reply)
