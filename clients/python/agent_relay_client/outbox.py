"""User messages not yet acknowledged by the service. Pure apart from an optional JSON file.

Each message has a client-chosen `message_id`; the service accepts an id once
per session, so sending an entry again after a lost ack cannot start a second
run. The rule that makes replay exactly-once per connection: an entry is sent
at most once on one connection (it is then "in flight"); a disconnect puts
every in-flight entry back to pending, and the next connection sends it once
more. An ack removes it; an error either schedules a retry or drops it.

With a `path`, the outbox is written to that JSON file after every change
(write to a temporary file, then rename: a crash never leaves half a file), and
read back at start, so messages survive a restart of the client.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent_relay_client import codes_gen
from agent_relay_client.errors import ProtocolError

_FORMAT_VERSION = 1
# Reply codes worth sending again later (the spec's retryable set, codes.json); every other
# error, `busy` included, drops the message and reports it.
RETRY_CODES = codes_gen.RETRYABLE_ERROR_CODES


@dataclass(slots=True)
class OutboxEntry:
    """One user message waiting for its ack."""

    session_id: str
    message_id: str
    text: str
    busy_policy: str = ""  # "", "queue", "reject" or "interrupt"
    trace_context: dict[str, str] = field(default_factory=dict)
    created_unix_ms: int = 0
    attempts: int = 0  # times it was sent
    not_before_ms: float = 0.0  # monotonic ms before which it is not sent again (rate limits)
    in_flight: bool = False  # sent on the current connection, reply pending (not persisted)


ErrorOutcome = Literal["retry", "reauth", "dropped", "unknown"]
# Times an entry refused as `unauthenticated` waits for new credentials before it is dropped.
MAX_REAUTH_ATTEMPTS = 5


class Outbox:
    """The ordered list of unacknowledged messages. Calls are synchronous; no I/O except `path`."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._entries: dict[str, OutboxEntry] = {}  # message_id -> entry, in insertion order
        self.recovered_file: Path | None = None  # where an unreadable outbox file was moved
        if path is not None and path.exists():
            self._load(path)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._entries

    def entries(self) -> list[OutboxEntry]:
        """Every entry, oldest first."""
        return list(self._entries.values())

    def add(self, entry: OutboxEntry) -> None:
        """Queue a new message. Its id must not be queued already."""
        if not entry.message_id:
            raise ValueError("an outbox entry needs a message_id")
        if entry.message_id in self._entries:
            raise ValueError(f"message {entry.message_id} is already in the outbox")
        if not entry.created_unix_ms:
            entry.created_unix_ms = int(time.time() * 1000)
        entry.in_flight = False
        self._entries[entry.message_id] = entry
        self._save()

    def take_due(self, joined_sessions: Iterable[str], now_ms: float) -> list[OutboxEntry]:
        """The entries to send now, oldest first, marked in flight.

        Only entries of sessions joined on this connection (the edge refuses a
        message for a session not joined), not in flight, and past any retry wait.
        """
        joined = set(joined_sessions)
        due = []
        for entry in self._entries.values():
            if entry.in_flight or entry.session_id not in joined or entry.not_before_ms > now_ms:
                continue
            entry.in_flight = True
            entry.attempts += 1
            due.append(entry)
        if due:
            self._save()  # attempts changed
        return due

    def next_due_ms(self, joined_sessions: Iterable[str]) -> float | None:
        """The earliest retry time among waiting entries of joined sessions, if any wait."""
        joined = set(joined_sessions)
        times = [
            e.not_before_ms
            for e in self._entries.values()
            if not e.in_flight and e.session_id in joined
        ]
        return min(times) if times else None

    def receive_ack(self, message_id: str) -> OutboxEntry | None:
        """The service accepted the message: it leaves the outbox. None if it was not there."""
        entry = self._entries.pop(message_id, None)
        if entry is not None:
            self._save()
        return entry

    def receive_error(
        self, message_id: str, code: str, retry_after_ms: int, now_ms: float
    ) -> ErrorOutcome:
        """The service refused the message. Retryable codes wait and retry; `unauthenticated`
        waits too while the driver renews the credentials ("reauth", at most
        MAX_REAUTH_ATTEMPTS sends); every other code drops it."""
        entry = self._entries.get(message_id)
        if entry is None:
            return "unknown"
        if code == "unauthenticated" and entry.attempts < MAX_REAUTH_ATTEMPTS:
            entry.in_flight = False
            entry.not_before_ms = now_ms + max(retry_after_ms, codes_gen.MIN_MESSAGE_RETRY_MS)
            self._save()
            return "reauth"
        if code in RETRY_CODES:
            entry.in_flight = False
            entry.not_before_ms = now_ms + max(retry_after_ms, codes_gen.MIN_MESSAGE_RETRY_MS)
            self._save()
            return "retry"
        del self._entries[message_id]
        self._save()
        return "dropped"

    def receive_disconnected(self) -> None:
        """The connection dropped: replies in flight are lost, so every entry is pending again."""
        for entry in self._entries.values():
            entry.in_flight = False

    # ----- persistence ---------------------------------------------------------------------

    def _save(self) -> None:
        if self.path is None:
            return
        records = []
        for entry in self._entries.values():
            record = asdict(entry)
            del record["in_flight"], record["not_before_ms"]  # both mean nothing after a restart
            records.append(record)
        data = json.dumps({"version": _FORMAT_VERSION, "entries": records}, ensure_ascii=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, self.path)

    def _load(self, path: Path) -> None:
        try:
            entries = _parse(path.read_text(encoding="utf-8"))
        except (ValueError, ProtocolError):
            # Keep the unreadable file beside, never delete what the user typed.
            aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
            os.replace(path, aside)
            self.recovered_file = aside
            return
        for entry in entries:
            self._entries[entry.message_id] = entry


def _parse(text: str) -> list[OutboxEntry]:
    data: Any = json.loads(text)
    if not isinstance(data, dict) or data.get("version") != _FORMAT_VERSION:
        raise ProtocolError("outbox file: not a version 1 outbox")
    raw = data.get("entries")
    if not isinstance(raw, list):
        raise ProtocolError("outbox file: 'entries' is not a list")
    entries = []
    for record in raw:
        if not isinstance(record, dict):
            raise ProtocolError("outbox file: an entry is not an object")
        try:
            entry = OutboxEntry(**record)
        except TypeError as exc:
            raise ProtocolError(f"outbox file: bad entry: {exc}") from exc
        if not (isinstance(entry.session_id, str) and isinstance(entry.message_id, str)):
            raise ProtocolError("outbox file: session_id and message_id must be strings")
        if not isinstance(entry.text, str) or not entry.message_id:
            raise ProtocolError("outbox file: an entry lacks text or message_id")
        entries.append(entry)
    return entries
