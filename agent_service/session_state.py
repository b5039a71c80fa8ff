"""A session's decisions, pure: which messages are accepted, which runs start, end or wait.

SessionState does no I/O and knows no asyncio. It is fed what happened (a
message arrived, a run ended, a cancel was asked for) and returns the effects
to carry out, in order; the hub carries them out (persist, append, start or
cancel a run). It holds the run queue (runs.RunQueue), the runs it knows and
the message ids accepted lately (older ones are looked up in the store by the
caller and passed in as `stored`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from agent_relay.v1 import agent_pb2 as pb
from agent_service.runs import BusyPolicy, RunQueue

# client message ids remembered per session for idempotent retries without a
# store read; older ones are found in the store.
ACCEPTED_CACHE = 1_000


@dataclass(frozen=True, slots=True)
class PersistAcceptance:
    """Store the user message (status `queued` or `complete`) and its run, atomically."""

    message_id: str
    text: str
    run_id: str
    queued: bool
    title: str


@dataclass(frozen=True, slots=True)
class AppendEvent:
    """Append the event to the session's log (it gets its seq there)."""

    event: pb.SessionEvent


@dataclass(frozen=True, slots=True)
class StartRun:
    run_id: str


@dataclass(frozen=True, slots=True)
class CancelRun:
    """Stop a started run; it ends itself with a completion saying `reason`."""

    run_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class EndUnstarted:
    """A queued run will never start: store that (and its message's status), then append
    its completion."""

    run_id: str
    user_message_id: str
    reason: str  # "cancelled" or "interrupted"


Effect = PersistAcceptance | AppendEvent | StartRun | CancelRun | EndUnstarted


@dataclass(frozen=True, slots=True)
class Accepted:
    """A new message was accepted: carry out `effects`, in order."""

    effects: list[Effect]


@dataclass(frozen=True, slots=True)
class Duplicate:
    """The id was accepted before: `accepted` is the first acceptance, marked duplicate."""

    accepted: pb.MessageAccepted


@dataclass(frozen=True, slots=True)
class Busy:
    """Refused: a run is active and the policy is `reject`. Nothing was stored."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """SessionState.snapshot()."""

    title: str
    active: str | None
    waiting: tuple[str, ...]
    user_message_of: dict[str, str]


FINISH = {"cancelled": pb.FINISH_REASON_CANCELLED, "interrupted": pb.FINISH_REASON_INTERRUPTED}


def completion_of_unstarted(run_id: str, reason: str) -> pb.SessionEvent:
    """The completion event of a queued run that never started."""
    return pb.SessionEvent(
        run_id=run_id, run_completed=pb.RunCompleted(finish_reason=FINISH[reason])
    )


class SessionState:
    """The decisions of one session. Every method is synchronous and does no I/O."""

    def __init__(self, title: str = "") -> None:
        self.title = title
        self.queue = RunQueue()
        self.user_message_of: dict[str, str] = {}  # run id -> its user message id, while known
        self._accepted: OrderedDict[str, pb.MessageAccepted] = OrderedDict()

    @property
    def busy(self) -> bool:
        return self.queue.busy

    def known_acceptance(self, message_id: str) -> pb.MessageAccepted | None:
        """The acceptance of a recent id, without the store (None when not remembered)."""
        return self._accepted.get(message_id)

    def receive_message(
        self,
        message_id: str,
        text: str,
        run_id: str,
        policy: BusyPolicy,
        stored: pb.MessageAccepted | None = None,
    ) -> Accepted | Duplicate | Busy:
        """A user message arrived. `stored`: its acceptance found in the store, if any."""
        earlier = self._accepted.get(message_id) or stored
        if earlier is not None:
            duplicate = pb.MessageAccepted()
            duplicate.CopyFrom(earlier)
            duplicate.duplicate = True
            return Duplicate(duplicate)
        decision = self.queue.receive_message(run_id, policy)
        if decision.rejected:
            return Busy()
        self.user_message_of[run_id] = message_id
        if not self.title:
            self.title = _title_from(text)
        accepted = pb.MessageAccepted(
            message_id=message_id, text=text, run_id=run_id, queued=decision.queued
        )
        effects: list[Effect] = [
            PersistAcceptance(message_id, text, run_id, decision.queued, self.title),
            AppendEvent(pb.SessionEvent(run_id=run_id, message_accepted=accepted)),
        ]
        effects += [self._end_unstarted(dropped, "cancelled") for dropped in decision.dropped]
        if decision.cancel_active:
            effects.append(CancelRun(decision.cancel_active, "cancelled"))
        if decision.start_now:
            effects.append(StartRun(run_id))
        return Accepted(effects)

    def receive_appended(self, accepted: pb.MessageAccepted, seq: int) -> pb.MessageAccepted:
        """The acceptance event got `seq`: remember it for retries, and return it."""
        remembered = pb.MessageAccepted()
        remembered.CopyFrom(accepted)
        remembered.seq = seq
        self._accepted[remembered.message_id] = remembered
        if len(self._accepted) > ACCEPTED_CACHE:
            self._accepted.popitem(last=False)
        return remembered

    def receive_resumed(self, run_id: str, message_id: str) -> list[Effect]:
        """A run accepted by an owner that is gone, never started: it joins the queue
        (already accepted and stored: nothing to persist or append) and starts when
        its turn comes."""
        decision = self.queue.receive_message(run_id, BusyPolicy.QUEUE)
        self.user_message_of[run_id] = message_id
        return [StartRun(run_id)] if decision.start_now else []

    def snapshot(self) -> Snapshot:
        """What `receive_message` may change, to undo it when its acceptance could not be
        stored."""
        return Snapshot(
            self.title,
            self.queue.active,
            self.queue.waiting,
            dict(self.user_message_of),
        )

    def restore(self, snapshot: Snapshot) -> None:
        """Go back to `snapshot` (taken before a message whose acceptance failed)."""
        self.title = snapshot.title
        self.queue = RunQueue()
        self.queue.active = snapshot.active
        for run_id in snapshot.waiting:
            self.queue.receive_message(run_id, BusyPolicy.QUEUE)
        self.queue.active = snapshot.active
        self.user_message_of = dict(snapshot.user_message_of)

    def receive_run_ended(self, run_id: str, *, accepting: bool) -> list[Effect]:
        """A started run ended: start the next one, or end it unstarted when the service
        no longer accepts work."""
        self.user_message_of.pop(run_id, None)
        next_id = self.queue.receive_run_ended(run_id)
        if next_id is None:
            return []
        if accepting:
            return [StartRun(next_id)]
        ended: list[Effect] = []
        while next_id is not None:  # each becomes active in turn, and ends unstarted
            ended.append(
                EndUnstarted(next_id, self.user_message_of.pop(next_id, ""), "interrupted")
            )
            next_id = self.queue.receive_run_ended(next_id)
        return ended

    def receive_cancel(self, run_id: str) -> list[Effect]:
        """Cancel `run_id` (empty: the active run). No effects when nothing is going."""
        target = run_id or self.queue.active or ""
        if target in self.queue.waiting:
            return [self._end_unstarted(target, "cancelled")]
        if target and target == self.queue.active:
            return [CancelRun(target, "cancelled")]
        return []

    def receive_shutdown(self) -> list[Effect]:
        """The service stops: every queued run ends unstarted."""
        return [self._end_unstarted(run_id, "interrupted") for run_id in self.queue.waiting]

    def _end_unstarted(self, run_id: str, reason: str) -> EndUnstarted:
        self.queue.remove_waiting(run_id)
        return EndUnstarted(run_id, self.user_message_of.pop(run_id, ""), reason)


def _title_from(text: str) -> str:
    title = " ".join(text.split())
    return title[:77] + "..." if len(title) > 80 else title
