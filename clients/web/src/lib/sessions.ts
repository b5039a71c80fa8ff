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

  /**
   * The token to join `sessionId` with: its own while it lives; otherwise the
   * longest-lived stored token that also names it. (Each new session's token
   * names the sessions of the token it was created with, so the newest token
   * reopens older conversations whose own tokens expired.)
   */
  get(sessionId: string): StoredToken | undefined {
    const own = this.read(sessionId);
    const soon = this.now() / 1000 + 30;
    if (own && own.expiresAt > soon) return own;
    let best: StoredToken | undefined;
    for (const s of this.list()) {
      const token = s.sessionId === sessionId ? undefined : this.read(s.sessionId);
      if (!token || token.expiresAt <= Math.max(soon, best?.expiresAt ?? 0)) continue;
      if (tokenSessions(token.token).includes(sessionId)) best = token;
    }
    return best ?? own;
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

  private read(sessionId: string): StoredToken | undefined {
    const token = readJson<StoredToken>(this.storage, StorageKey.token(sessionId));
    return typeof token?.token === "string" ? token : undefined;
  }

  private anyLiveToken(): string | undefined {
    const nowS = this.now() / 1000;
    for (const s of this.list()) {
      const token = this.read(s.sessionId);
      if (token && token.expiresAt > nowS + 30) return token.token;
    }
    return undefined;
  }
}

/** The `sessions` claim of a JWT, read without verifying it (the edge verifies). */
export function tokenSessions(token: string): string[] {
  try {
    const payload = token.split(".")[1] ?? "";
    const json = atob(payload.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(payload.length / 4) * 4, "="));
    const claims = JSON.parse(json) as { sessions?: unknown };
    return Array.isArray(claims.sessions) ? claims.sessions.filter((x): x is string => typeof x === "string") : [];
  } catch {
    return [];
  }
}
