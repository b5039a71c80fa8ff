import { type Conversation, addLocalMessage, emptyConversation, setMessageState } from "./conversation";
import type { OutboxEntry } from "./outbox";
import { type KeyValueStorage, StorageKey, readJson, writeJson } from "./storage";

/** Conversation snapshots keep at most this many messages (the newest). */
const PERSISTED_MESSAGES = 200;

/**
 * Each session's conversation saved with its `lastSeq` in one storage entry,
 * so a reload shows what the page showed and resumes exactly after it. A
 * refused write keeps the older snapshot, which is consistent in itself: its
 * later events are simply replayed again.
 */
export class ConversationSnapshots {
  constructor(private readonly storage: KeyValueStorage) {}

  /** The saved conversation (or an empty one), with the outbox's messages shown as queued. */
  restore(sessionId: string, outbox: OutboxEntry[]): Conversation {
    const stored = readJson<Conversation>(this.storage, StorageKey.conversation(sessionId));
    let c =
      stored && stored.sessionId === sessionId && Array.isArray(stored.messages) && Number.isFinite(stored.lastSeq)
        ? stored
        : emptyConversation(sessionId);
    for (const entry of outbox) {
      c = addLocalMessage(c, { id: entry.messageId, text: entry.text, state: "queued", createdMs: entry.createdMs });
      c = setMessageState(c, entry.messageId, "queued");
    }
    return c;
  }

  /** Save the newest messages and the tool executions they show. Returns false if storage refused. */
  save(c: Conversation): boolean {
    const messages = c.messages.slice(-PERSISTED_MESSAGES);
    const callIds = new Set(messages.flatMap((m) => m.parts.flatMap((p) => (p.kind === "tool" ? [p.callId] : []))));
    const tools = Object.fromEntries(Object.entries(c.tools).filter(([id]) => callIds.has(id)));
    return writeJson(this.storage, StorageKey.conversation(c.sessionId), { ...c, messages, tools });
  }
}
