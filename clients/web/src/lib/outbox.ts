import { POLICY, isRetryableError } from "./codes";
import type { BusyPolicy } from "./protocol";
import { type KeyValueStorage, StorageKey, readJson, writeJson } from "./storage";

/** A user message the server has not yet accepted. */
export interface OutboxEntry {
  sessionId: string;
  /** The client-chosen id that makes every resend idempotent. */
  messageId: string;
  text: string;
  busyPolicy?: BusyPolicy;
  createdMs: number;
}

/**
 * Messages waiting for the server's acceptance, persisted on every change so
 * a page reload loses none. An entry leaves the outbox only when the server
 * accepted its id (an ack, or its `chat:accepted` event) or refused it for
 * good; until then it is resent on every (re)connection. The server accepts
 * each id once per session, so resending never doubles a message.
 *
 * Every change reads the stored list first and writes it back, so two tabs
 * sharing one storage merge their entries instead of overwriting each other's.
 * Does no I/O besides the injected storage.
 *
 * The rule that makes replay exactly-once per connection (the same as the
 * Python client's outbox.py): `takeDue` hands out an entry at most once per
 * connection (it is then in flight); `receiveDisconnected` puts every in-flight
 * entry back to pending; an ack removes it; an error either schedules a retry
 * (a retryable code, after `retry_after_ms`, at least `POLICY.minMessageRetryMs`)
 * or drops it (any other code, `busy` included). In-flight marks, attempts and
 * retry times are per page and not persisted: they mean nothing after a reload.
 */
export type ErrorOutcome = "retry" | "reauth" | "dropped" | "unknown";

/** Times an entry refused as `unauthenticated` waits for new credentials before it is dropped. */
export const MAX_REAUTH_ATTEMPTS = 5;

export class Outbox {
  /** What was last read or written: used when the storage refuses a write. */
  private memory: OutboxEntry[] = [];
  /** Message ids sent on the current connection, reply pending. */
  private readonly inFlight = new Set<string>();
  /** Message id -> the time (ms) before which it is not sent again. */
  private readonly notBefore = new Map<string, number>();
  /** Message id -> times it was handed out by `takeDue`. */
  private readonly attempts = new Map<string, number>();

  constructor(private readonly storage: KeyValueStorage) {
    this.memory = this.load();
  }

  /**
   * Add an entry and persist. Returns false when storage refused the write:
   * the entry is still kept in memory and sent, but would not survive a reload.
   */
  add(entry: OutboxEntry): boolean {
    const entries = this.load();
    if (entries.some((e) => same(e, entry.sessionId, entry.messageId))) return true;
    return this.save([...entries, entry]);
  }

  /** Remove an entry (accepted, or refused for good) and persist. */
  remove(sessionId: string, messageId: string): OutboxEntry | undefined {
    const entries = this.load();
    const entry = entries.find((e) => same(e, sessionId, messageId));
    if (entry) this.save(entries.filter((e) => e !== entry));
    return entry;
  }

  has(sessionId: string, messageId: string): boolean {
    return this.load().some((e) => same(e, sessionId, messageId));
  }

  /** A session's entries, oldest first: the order they must be sent in. */
  pending(sessionId: string): OutboxEntry[] {
    return this.load().filter((e) => e.sessionId === sessionId);
  }

  /** Every entry, oldest first. */
  entries(): OutboxEntry[] {
    return this.load().slice();
  }

  /** How many times `takeDue` handed out this message. */
  attemptsOf(messageId: string): number {
    return this.attempts.get(messageId) ?? 0;
  }

  isInFlight(messageId: string): boolean {
    return this.inFlight.has(messageId);
  }

  /**
   * The entries to send now, oldest first, marked in flight: only entries of
   * sessions joined on this connection, not in flight, and past any retry wait.
   */
  takeDue(joined: ReadonlySet<string>, nowMs: number): OutboxEntry[] {
    const due: OutboxEntry[] = [];
    for (const e of this.load()) {
      if (this.inFlight.has(e.messageId) || !joined.has(e.sessionId)) continue;
      if ((this.notBefore.get(e.messageId) ?? 0) > nowMs) continue;
      this.inFlight.add(e.messageId);
      this.attempts.set(e.messageId, this.attemptsOf(e.messageId) + 1);
      due.push(e);
    }
    return due;
  }

  /** The earliest retry time among waiting entries of joined sessions, if any wait. */
  nextDueMs(joined: ReadonlySet<string>): number | undefined {
    const times = this.load()
      .filter((e) => !this.inFlight.has(e.messageId) && joined.has(e.sessionId))
      .map((e) => this.notBefore.get(e.messageId) ?? 0);
    return times.length ? Math.min(...times) : undefined;
  }

  /** The server accepted the message: it leaves the outbox. Undefined if it was not there. */
  receiveAck(messageId: string): OutboxEntry | undefined {
    const entry = this.load().find((e) => e.messageId === messageId);
    this.forget(messageId);
    return entry ? this.remove(entry.sessionId, messageId) : undefined;
  }

  /**
   * The server refused the message: retryable codes wait and retry; `unauthenticated` waits
   * too while the driver renews the token ("reauth", at most MAX_REAUTH_ATTEMPTS sends);
   * every other code drops it.
   */
  receiveError(messageId: string, code: string, retryAfterMs: number, nowMs: number): ErrorOutcome {
    const entry = this.load().find((e) => e.messageId === messageId);
    if (!entry) return "unknown";
    this.inFlight.delete(messageId);
    if (code === "unauthenticated" && this.attemptsOf(messageId) < MAX_REAUTH_ATTEMPTS) {
      // The token lapsed, not the message's fault: it waits while the driver renews it.
      this.notBefore.set(messageId, nowMs + Math.max(retryAfterMs, POLICY.minMessageRetryMs));
      return "reauth";
    }
    if (isRetryableError(code)) {
      this.notBefore.set(messageId, nowMs + Math.max(retryAfterMs, POLICY.minMessageRetryMs));
      return "retry";
    }
    this.forget(messageId);
    this.remove(entry.sessionId, messageId);
    return "dropped";
  }

  /** An in-flight entry goes back to pending without waiting (for example `not_joined`). */
  release(messageId: string): void {
    this.inFlight.delete(messageId);
  }

  /** The connection dropped: replies in flight are lost, so every entry is pending again. */
  receiveDisconnected(): void {
    this.inFlight.clear();
  }

  private forget(messageId: string): void {
    this.inFlight.delete(messageId);
    this.notBefore.delete(messageId);
    this.attempts.delete(messageId);
  }

  private load(): OutboxEntry[] {
    const stored = readJson<unknown>(this.storage, StorageKey.outbox);
    if (Array.isArray(stored)) this.memory = stored.filter(isEntry);
    return this.memory;
  }

  private save(entries: OutboxEntry[]): boolean {
    this.memory = entries;
    return writeJson(this.storage, StorageKey.outbox, entries);
  }
}

function same(e: OutboxEntry, sessionId: string, messageId: string): boolean {
  return e.sessionId === sessionId && e.messageId === messageId;
}

function isEntry(value: unknown): value is OutboxEntry {
  const e = value as Partial<OutboxEntry> | null;
  return (
    typeof e === "object" && e !== null &&
    typeof e.sessionId === "string" && typeof e.messageId === "string" && typeof e.text === "string"
  );
}
