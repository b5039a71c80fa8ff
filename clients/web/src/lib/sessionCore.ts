/**
 * What a chat client must do on any transport: follow sessions, resume, replay
 * the outbox. Pure and synchronous: the same core, with the same inputs and
 * outputs, as the Python client's `agent_relay_client/session_core.py` (the
 * scenario files in clients/spec/ run against both). The core is told what
 * happened (`receive*`) and answers with commands to carry out, in order:
 *
 * - `join(sessionId, afterSeq)`: follow a session from after a seq;
 * - `leave(sessionId)`: stop following it (sent before a rejoin after a gap);
 * - `send(entry)`: send one outbox entry (a user message);
 * - `load_history(sessionId)`: fetch the session's history, then `receiveHistory`.
 *
 * The rules it keeps:
 * - every followed session is joined again after a reconnect at its last
 *   processed seq, so nothing is missed or repeated (`seq <= lastSeq`: dropped);
 * - an outbox entry is sent once per connection, only after its session's join
 *   is acked; the ack, or its replayed `chat:accepted`, removes it;
 * - a refused message: a retryable code (codes.ts) waits `retry_after_ms` and
 *   goes again; `not_joined` joins again first; any other code (`busy`
 *   included) rejects it for good;
 * - a hole in the log (`chat:gap`, or a seq that skips ahead) drops events
 *   until history is reloaded, then leaves and joins after its `as_of_seq`;
 * - a refused join: `out_of_range` reloads history; a retryable code joins
 *   again later; any other unfollows the session.
 */
import { POLICY, isRetryableError } from "./codes";
import {
  type Conversation,
  addLocalMessage,
  conversationFromHistory,
  emptyConversation,
  receiveEvent,
  setMessageState,
} from "./conversation";
import { type ErrorOutcome, Outbox, type OutboxEntry } from "./outbox";
import type { BusyPolicy, GapEvent, History, SessionEvent } from "./protocol";
import { MemoryStorage } from "./storage";

export type Command =
  | { kind: "join"; sessionId: string; afterSeq: number }
  | { kind: "leave"; sessionId: string }
  | { kind: "send"; entry: OutboxEntry }
  | { kind: "load_history"; sessionId: string };

/** What `receiveEvent` did with one event (the Python client's `Outcome`). */
export type EventOutcome =
  /** New, in order: the conversation changed. */
  | "applied"
  /** Its seq was processed already: ignored. */
  | "duplicate"
  /** A hole: history is being reloaded. */
  | "gap"
  /** Arrived while history is being reloaded (or for a session not followed): ignored. */
  | "dropped";

export interface SessionCoreOptions {
  outbox?: Outbox;
}

export class SessionCore {
  readonly outbox: Outbox;
  readonly conversations = new Map<string, Conversation>();
  connected = false;
  /** Sessions whose join was acked on this connection. */
  private readonly joined = new Set<string>();
  /** Join sent, reply pending. */
  private readonly joining = new Set<string>();
  /** History requested after a gap: events are dropped until it arrives. */
  private readonly loading = new Set<string>();
  /** Refused joins to try again, and when (ms). */
  private readonly joinDue = new Map<string, number>();

  constructor(options: SessionCoreOptions = {}) {
    this.outbox = options.outbox ?? new Outbox(new MemoryStorage());
  }

  // ----- what the user does

  /** Start following a session (a no-op when followed already). */
  follow(sessionId: string): Command[] {
    this.conversation(sessionId);
    if (this.connected && !this.joined.has(sessionId) && !this.joining.has(sessionId)) {
      return [this.join(sessionId)];
    }
    return [];
  }

  /** Follow a session starting from a stored conversation (a reload restores its `lastSeq`). */
  adopt(conversation: Conversation): Command[] {
    this.conversations.set(conversation.sessionId, conversation);
    return this.follow(conversation.sessionId);
  }

  /** Stop following a session and forget its conversation (its outbox entries stay stored). */
  unfollow(sessionId: string): void {
    this.conversations.delete(sessionId);
    this.joined.delete(sessionId);
    this.joining.delete(sessionId);
    this.loading.delete(sessionId);
    this.joinDue.delete(sessionId);
  }

  /** Queue a user message (following its session if needed); send it now if joined. */
  sendMessage(
    sessionId: string,
    text: string,
    options: { messageId: string; busyPolicy?: BusyPolicy; nowMs: number; createdMs?: number },
  ): { entry: OutboxEntry; commands: Command[]; stored: boolean } {
    if (!text) throw new Error("a message needs text");
    const commands = this.follow(sessionId);
    const entry: OutboxEntry = {
      sessionId, messageId: options.messageId, text, createdMs: options.createdMs ?? options.nowMs,
      ...(options.busyPolicy ? { busyPolicy: options.busyPolicy } : {}),
    };
    const stored = this.outbox.add(entry);
    this.update(sessionId, (c) =>
      setMessageState(
        addLocalMessage(c, { id: entry.messageId, text, state: "queued", createdMs: entry.createdMs }),
        entry.messageId, "queued",
      ),
    );
    return { entry, commands: [...commands, ...this.takeDue(options.nowMs)], stored };
  }

  // ----- what the connection does

  /** A connection is up (authenticated): join every followed session where it was. */
  receiveConnected(): Command[] {
    this.connected = true;
    this.joined.clear();
    this.joining.clear();
    this.joinDue.clear();
    return [...this.conversations.keys()].filter((sid) => !this.loading.has(sid)).map((sid) => this.join(sid));
  }

  /** The connection dropped: joins and in-flight sends are void. */
  receiveDisconnected(): void {
    this.connected = false;
    this.joined.clear();
    this.joining.clear();
    this.loading.clear();
    this.joinDue.clear();
    for (const e of this.outbox.entries()) {
      if (this.outbox.isInFlight(e.messageId)) this.update(e.sessionId, (c) => setMessageState(c, e.messageId, "queued"));
    }
    this.outbox.receiveDisconnected();
  }

  /** A join was acked: its session's waiting messages go out now. */
  receiveJoined(sessionId: string, nowMs: number): Command[] {
    this.joining.delete(sessionId);
    if (!this.connected || !this.conversations.has(sessionId)) return [];
    this.joined.add(sessionId);
    return this.takeDue(nowMs);
  }

  /** A join was refused: reload history (`out_of_range`), retry later (retryable), or unfollow. */
  receiveJoinFailed(sessionId: string, code: string, retryAfterMs = 0, nowMs = 0): Command[] {
    this.joining.delete(sessionId);
    if (!this.conversations.has(sessionId)) return [];
    if (code === "out_of_range") {
      this.loading.add(sessionId);
      return [{ kind: "load_history", sessionId }];
    }
    if (isRetryableError(code)) {
      this.joinDue.set(sessionId, nowMs + Math.max(retryAfterMs, POLICY.minMessageRetryMs));
      return [];
    }
    this.conversations.delete(sessionId);
    return [];
  }

  /** One event from the transport. A hole asks for history. */
  receiveEvent(event: SessionEvent | GapEvent): { outcome: EventOutcome; commands: Command[] } {
    const sessionId = event.session_id;
    const c = this.conversations.get(sessionId);
    if (!c) return { outcome: "dropped", commands: [] };
    if (event.type !== "chat:gap" && this.loading.has(sessionId)) return { outcome: "dropped", commands: [] };
    const received = event.type === "chat:gap" ? { outcome: "gap" as const, conversation: c } : receiveEvent(c, event);
    if (received.outcome === "gap") {
      if (this.loading.has(sessionId)) return { outcome: "gap", commands: [] };
      this.loading.add(sessionId);
      return { outcome: "gap", commands: [{ kind: "load_history", sessionId }] };
    }
    if (received.outcome === "duplicate") return { outcome: "duplicate", commands: [] };
    this.conversations.set(sessionId, received.conversation);
    if (event.type === "chat:accepted") this.outbox.receiveAck(event.message_id);
    return { outcome: "applied", commands: [] };
  }

  /**
   * History arrived (after a gap, or to open a session with its past): replace
   * the conversation, keep typed messages still waiting, (re)join after `as_of_seq`.
   */
  receiveHistory(sessionId: string, history: History): Command[] {
    const old = this.conversation(sessionId);
    let c = conversationFromHistory(sessionId, history);
    for (const m of old.messages) {
      if (m.role === "user" && (m.state === "queued" || m.state === "sending")) c = addLocalMessage(c, m);
    }
    this.conversations.set(sessionId, c);
    this.loading.delete(sessionId);
    if (!this.connected) return [];
    if (this.joined.has(sessionId) || this.joining.has(sessionId)) {
      this.joined.delete(sessionId);
      return [{ kind: "leave", sessionId }, this.join(sessionId)];
    }
    return [this.join(sessionId)];
  }

  /** The server accepted a message (now or before): it leaves the outbox. */
  receiveSent(messageId: string): OutboxEntry | undefined {
    const entry = this.outbox.receiveAck(messageId);
    const sessionId = entry?.sessionId ?? this.sessionOf(messageId);
    if (sessionId) this.update(sessionId, (c) => setMessageState(c, messageId, "sent"));
    return entry;
  }

  /** The server refused a message: retry later, or drop it and mark it rejected ("failed"). */
  receiveSendFailed(messageId: string, code: string, message: string, retryAfterMs: number, nowMs: number): ErrorOutcome {
    const entry = this.outbox.entries().find((e) => e.messageId === messageId);
    const outcome = this.outbox.receiveError(messageId, code, retryAfterMs, nowMs);
    if (entry && (outcome === "retry" || outcome === "reauth")) this.update(entry.sessionId, (c) => setMessageState(c, messageId, "queued"));
    if (entry && outcome === "dropped") {
      this.update(entry.sessionId, (c) => setMessageState(c, messageId, "failed", message || code));
    }
    return outcome;
  }

  /** A message was refused because its session is not joined here: join again; it follows. */
  receiveNotJoined(messageId: string): Command[] {
    const entry = this.outbox.entries().find((e) => e.messageId === messageId);
    if (!entry) return [];
    this.outbox.release(messageId);
    this.joined.delete(entry.sessionId);
    if (!this.connected || this.joining.has(entry.sessionId) || !this.conversations.has(entry.sessionId)) return [];
    return [this.join(entry.sessionId)];
  }

  /** Joins refused for a while, then outbox entries of joined sessions, due now. */
  takeDue(nowMs: number): Command[] {
    if (!this.connected) return [];
    const commands: Command[] = [];
    for (const [sid, due] of [...this.joinDue]) {
      if (due > nowMs) continue;
      this.joinDue.delete(sid);
      if (this.conversations.has(sid)) commands.push(this.join(sid));
    }
    for (const entry of this.outbox.takeDue(this.joined, nowMs)) {
      this.update(entry.sessionId, (c) => setMessageState(c, entry.messageId, "sending"));
      commands.push({ kind: "send", entry });
    }
    return commands;
  }

  /** When the next refused join or waiting outbox entry may go (undefined: nothing waits). */
  nextDueMs(): number | undefined {
    if (!this.connected) return undefined;
    const times = [...this.joinDue.values()];
    const entryDue = this.outbox.nextDueMs(this.joined);
    if (entryDue !== undefined) times.push(entryDue);
    return times.length ? Math.min(...times) : undefined;
  }

  /** True once the session's join was acked on this connection. */
  isJoined(sessionId: string): boolean {
    return this.joined.has(sessionId);
  }

  /** True while history is being reloaded after a hole. */
  isLoading(sessionId: string): boolean {
    return this.loading.has(sessionId);
  }

  // ----- helpers

  /** The session's conversation, made on first use with the messages the stored outbox holds. */
  private conversation(sessionId: string): Conversation {
    let c = this.conversations.get(sessionId);
    if (!c) {
      c = emptyConversation(sessionId);
      for (const e of this.outbox.pending(sessionId)) {
        c = addLocalMessage(c, { id: e.messageId, text: e.text, state: "queued", createdMs: e.createdMs });
      }
      this.conversations.set(sessionId, c);
    }
    return c;
  }

  private update(sessionId: string, change: (c: Conversation) => Conversation): void {
    const c = this.conversations.get(sessionId);
    if (c) this.conversations.set(sessionId, change(c));
  }

  private sessionOf(messageId: string): string | undefined {
    for (const [sid, c] of this.conversations) {
      if (c.messages.some((m) => m.role === "user" && m.id === messageId)) return sid;
    }
    return undefined;
  }

  private join(sessionId: string): Command {
    this.joining.add(sessionId);
    return { kind: "join", sessionId, afterSeq: this.conversations.get(sessionId)?.lastSeq ?? 0 };
  }
}
