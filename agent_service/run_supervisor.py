"""Run tasks: who runs, how they stop, and the replies they are writing.

The RunSupervisor owns every run's task. It runs a run's work (the agent loop,
handed in: this module knows nothing of models or tools), cancels runs with a
reason, runs a continuation when a run ends (the hub starts the next queued run
there), and at shutdown waits for runs, then interrupts the rest.

While a run streams a reply, its text so far is in a ReplyInProgress that only
the run writes; everyone else reads it through `live_replies()`.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from agent_service.tools.executor import ToolCallRunner

log = logging.getLogger(__name__)


class ReplyInProgress:
    """The assistant message a run is streaming. Written by its run only.

    Each piece keeps the seq of the delta event that carried it, so a reader can
    take the text as of a log position: history that says `as_of_seq` N holds
    exactly the deltas through N, and a resume after N repeats none. The pieces and
    their seqs are two lists the run appends to (`begin` hands them out): at full
    speed this runs for every word, and a call and a tuple per piece was 5 % of the
    service's samples."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.message_id = ""
        self._pieces: list[str] = []
        self._seqs: list[int] = []  # each piece's delta seq: they never decrease

    def begin(self, message_id: str) -> tuple[list[str], list[int]]:
        """A new model step starts writing `message_id`: the lists its writer appends
        each piece and then its delta's seq to, in step (nothing reads between the two)."""
        self.message_id, self._pieces, self._seqs = message_id, [], []
        return self._pieces, self._seqs

    def end(self) -> None:
        """The step's message is stored: nothing is in progress."""
        self.message_id, self._pieces, self._seqs = "", [], []

    def text_through(self, seq: int) -> str:
        """The text of the deltas with seq <= `seq`."""
        return "".join(self._pieces[: bisect.bisect_right(self._seqs, seq)])


@dataclass(frozen=True, slots=True)
class LiveReply:
    """A read-only view of a reply being streamed."""

    run_id: str
    message_id: str
    text: str


@dataclass(eq=False)
class RunHandle:
    """A run of this process, queued or active."""

    run_id: str
    session_id: str
    user_message_id: str
    trace_context: dict[str, str] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None  # "cancelled" or "interrupted" once asked to stop
    tools: dict[str, ToolCallRunner] = field(default_factory=dict)  # calls in flight
    ended: bool = False  # its body has returned
    stored_running: bool = False  # stored as running at its acceptance (it started at once)
    reply: ReplyInProgress = field(init=False)

    def __post_init__(self) -> None:
        self.reply = ReplyInProgress(self.run_id)

    def cancel(self, reason: str) -> bool:
        """Ask the run to stop with `reason`. False when it already was asked or not started."""
        if self.cancel_reason is not None or self.task is None or self.ended:
            return False
        self.cancel_reason = reason
        self.task.cancel()
        return True


class RunSupervisor:
    """Every run task of this process."""

    def __init__(self) -> None:
        self._active: dict[str, RunHandle] = {}

    def start(
        self,
        run: RunHandle,
        work: Callable[[], Awaitable[None]],
        then: Callable[[RunHandle], Awaitable[None]],
    ) -> None:
        """Start `run`'s task doing `work()` (which must not raise); `then(run)` runs after."""

        async def lifetime() -> None:
            try:
                await work()
            except Exception:
                log.exception("run %s failed outside its own handling", run.run_id)
            finally:
                run.ended = True
                self._active.pop(run.run_id, None)
                await then(run)

        self._active[run.run_id] = run
        run.task = asyncio.create_task(lifetime(), name=f"run {run.run_id}")

    def live_replies(self, session_id: str, through_seq: int) -> list[LiveReply]:
        """Replies being streamed in a session, as of its log position `through_seq`."""
        return [
            LiveReply(r.run_id, r.reply.message_id, r.reply.text_through(through_seq))
            for r in self._active.values()
            if r.session_id == session_id and r.reply.message_id
        ]

    @property
    def active(self) -> list[RunHandle]:
        return list(self._active.values())

    async def shutdown(self, grace_s: float) -> None:
        """Let runs finish for grace_s, then interrupt the rest and wait for their ends."""
        tasks = {r.task for r in self._active.values() if r.task is not None}
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        for run in list(self._active.values()):
            if run.task in pending:
                run.cancel("interrupted")
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=max(grace_s, 5.0))
            if stuck:
                log.error("%d runs did not end after being interrupted", len(stuck))
