/**
 * The list of conversations: this browser's (beside their tokens, in
 * `SessionDirectory`'s storage) merged with the server's (`GET /api/sessions`
 * for the user of the newest token), minus those removed here. Renames and
 * removals are local: the edge has no route to rename or delete a session, so
 * a removed conversation stays on the server and is only hidden in this browser.
 *
 * The merge is pure (`mergeSessions`); `ConversationList` does the storage and
 * the fetch, and `subscribe` tells of changes made in other tabs.
 */
import type { SessionDirectory, SessionSummary } from "../lib/sessions";
import { type KeyValueStorage, StorageKey, readJson, writeJson } from "../lib/storage";

/** The conversations removed from this browser's list (so the server's list does not bring them back). */
export const HIDDEN_KEY = "agent-relay:hidden-sessions";

/** One session as `GET /api/sessions` returns it (the proto's Session). */
export interface ServerSession {
  session_id: string;
  title?: string;
  created_unix_ms?: number | string;
}

/**
 * This browser's list with the server's sessions it lacks added, newest first.
 * A local title wins (it may be a rename); a local entry without one takes the
 * server's. Hidden sessions are left out.
 */
export function mergeSessions(
  local: SessionSummary[],
  server: ServerSession[],
  hidden: ReadonlySet<string>,
): SessionSummary[] {
  const byId = new Map<string, SessionSummary>();
  for (const s of local) if (!hidden.has(s.sessionId)) byId.set(s.sessionId, s);
  for (const s of server) {
    if (hidden.has(s.session_id)) continue;
    const known = byId.get(s.session_id);
    const createdMs = Number(s.created_unix_ms ?? 0) || 0;
    if (!known) byId.set(s.session_id, { sessionId: s.session_id, title: s.title ?? "", createdMs });
    else if (!known.title && s.title) byId.set(s.session_id, { ...known, title: s.title });
  }
  return [...byId.values()].sort((a, b) => b.createdMs - a.createdMs);
}

export class ConversationList {
  constructor(
    private readonly storage: KeyValueStorage,
    private readonly directory: SessionDirectory,
    private readonly fetcher: typeof fetch = (...args) => globalThis.fetch(...args),
  ) {}

  list(): SessionSummary[] {
    const hidden = this.hidden();
    return this.directory.list().filter((s) => !hidden.has(s.sessionId));
  }

  rename(sessionId: string, title: string): void {
    this.directory.setTitle(sessionId, title.trim().slice(0, 200));
  }

  /** Hide a conversation here and forget its saved copy (its token stays: it may open others). */
  remove(sessionId: string): void {
    const hidden = this.hidden();
    hidden.add(sessionId);
    writeJson(this.storage, HIDDEN_KEY, [...hidden]);
    writeJson(
      this.storage,
      StorageKey.sessions,
      this.directory.list().filter((s) => s.sessionId !== sessionId),
    );
    this.storage.removeItem(StorageKey.conversation(sessionId));
  }

  /**
   * Add the server's sessions of this user to the list. Without a live token
   * (a first visit) there is nothing to ask; a failure leaves the list as it is.
   */
  async syncFromServer(): Promise<boolean> {
    const token = this.newestToken();
    if (!token) return false;
    let body: { sessions?: ServerSession[] };
    try {
      const response = await this.fetcher("api/sessions", { headers: { authorization: `Bearer ${token}` } });
      if (!response.ok) return false;
      body = (await response.json()) as { sessions?: ServerSession[] };
    } catch {
      return false;
    }
    const merged = mergeSessions(this.directory.list(), body.sessions ?? [], this.hidden());
    writeJson(this.storage, StorageKey.sessions, merged);
    return true;
  }

  /** Call `onChange` when another tab changes the list (the `storage` event fires only there). */
  subscribe(onChange: () => void): () => void {
    const listener = (event: StorageEvent): void => {
      if (event.key === null || event.key === StorageKey.sessions || event.key === HIDDEN_KEY) onChange();
    };
    window.addEventListener("storage", listener);
    return () => window.removeEventListener("storage", listener);
  }

  private hidden(): Set<string> {
    const stored = readJson<unknown>(this.storage, HIDDEN_KEY);
    return new Set(Array.isArray(stored) ? stored.filter((x): x is string => typeof x === "string") : []);
  }

  private newestToken(): string | undefined {
    let best: { token: string; expiresAt: number } | undefined;
    const nowS = Date.now() / 1000;
    for (const s of this.directory.list()) {
      const token = this.directory.get(s.sessionId);
      if (token && token.expiresAt > nowS && token.expiresAt > (best?.expiresAt ?? 0)) best = token;
    }
    return best?.token;
  }
}
