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
 * Does no I/O besides the injected storage; the service decides when to send.
 */
export class Outbox {
  /** What was last read or written: used when the storage refuses a write. */
  private memory: OutboxEntry[] = [];

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
