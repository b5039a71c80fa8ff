/**
 * Where the client keeps what must survive a page reload: the outbox, each
 * session's conversation with its last processed `seq`, tokens and the list
 * of conversations. The shape of `localStorage`, so it can be injected.
 */
export interface KeyValueStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** An in-memory storage (tests, or a browser with storage disabled). */
export class MemoryStorage implements KeyValueStorage {
  private readonly items = new Map<string, string>();
  getItem(key: string): string | null {
    return this.items.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    this.items.set(key, value);
  }
  removeItem(key: string): void {
    this.items.delete(key);
  }
  keys(): string[] {
    return [...this.items.keys()];
  }
}

/** `window.localStorage` when it is usable, otherwise a `MemoryStorage`. */
export function defaultStorage(): KeyValueStorage {
  try {
    const storage = globalThis.localStorage;
    const probe = "agent-relay:probe";
    storage.setItem(probe, "1");
    storage.removeItem(probe);
    return storage;
  } catch {
    return new MemoryStorage();
  }
}

/** Read a JSON value; a missing or corrupt entry reads as `undefined`. */
export function readJson<T>(storage: KeyValueStorage, key: string): T | undefined {
  const raw = storage.getItem(key);
  if (raw === null) return undefined;
  try {
    return JSON.parse(raw) as T;
  } catch {
    return undefined;
  }
}

/**
 * Write a JSON value. Returns false when the storage refused it (quota), so
 * the caller can fall back instead of believing it was saved.
 */
export function writeJson(storage: KeyValueStorage, key: string, value: unknown): boolean {
  try {
    storage.setItem(key, JSON.stringify(value));
    return true;
  } catch {
    return false;
  }
}

/** Storage keys, in one place so nothing else spells them. */
export const StorageKey = {
  outbox: "agent-relay:outbox",
  sessions: "agent-relay:sessions",
  token: (sessionId: string) => `agent-relay:token:${sessionId}`,
  conversation: (sessionId: string) => `agent-relay:conversation:${sessionId}`,
} as const;
