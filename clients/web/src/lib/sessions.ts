import type { RelayApi } from "./api";
import { type KeyValueStorage, StorageKey, readJson, writeJson } from "./storage";

/** A session token and when it expires (seconds since the Unix epoch, as the edge sends it). */
export interface StoredToken {
  token: string;
  expiresAt: number;
}

/** Where the service finds and keeps each session's token. */
export interface TokenStore {
  get(sessionId: string): StoredToken | undefined;
  set(sessionId: string, token: StoredToken): void;
}

/** One conversation in the list of earlier ones. */
export interface SessionSummary {
  sessionId: string;
  title: string;
  createdMs: number;
}

/**
 * The conversations this browser knows, newest first, with their tokens. The
 * edge has no "list my sessions" route, so the list lives beside the tokens.
 */
export class SessionDirectory implements TokenStore {
  constructor(
    private readonly storage: KeyValueStorage,
    private readonly api: RelayApi,
    private readonly now: () => number = () => Date.now(),
  ) {}

  list(): SessionSummary[] {
    const stored = readJson<SessionSummary[]>(this.storage, StorageKey.sessions);
    return Array.isArray(stored) ? stored.filter((s) => typeof s?.sessionId === "string") : [];
  }

  get(sessionId: string): StoredToken | undefined {
    const token = readJson<StoredToken>(this.storage, StorageKey.token(sessionId));
    return typeof token?.token === "string" ? token : undefined;
  }

  set(sessionId: string, token: StoredToken): void {
    writeJson(this.storage, StorageKey.token(sessionId), token);
  }

  /**
   * Create a session at the edge. The newest unexpired token goes along as the
   * bearer, so every conversation of this browser belongs to the same user.
   */
  async create(title = ""): Promise<SessionSummary> {
    const bearer = this.anyLiveToken();
    const created = await this.api.createSession({ ...(title ? { title } : {}), ...(bearer ? { bearer } : {}) });
    this.set(created.session_id, { token: created.token, expiresAt: Number(created.expires_at) });
    const summary: SessionSummary = { sessionId: created.session_id, title, createdMs: this.now() };
    writeJson(this.storage, StorageKey.sessions, [summary, ...this.list()]);
    return summary;
  }

  /** Name a conversation (the app uses its first message). */
  setTitle(sessionId: string, title: string): void {
    const list = this.list().map((s) => (s.sessionId === sessionId ? { ...s, title } : s));
    writeJson(this.storage, StorageKey.sessions, list);
  }

  private anyLiveToken(): string | undefined {
    const nowS = this.now() / 1000;
    for (const s of this.list()) {
      const token = this.get(s.sessionId);
      if (token && token.expiresAt > nowS + 30) return token.token;
    }
    return undefined;
  }
}
