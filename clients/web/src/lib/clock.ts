/** Time and timers, injected so the service can be driven by fake clocks in tests. */
export interface Clock {
  /** Milliseconds since the Unix epoch. */
  now(): number;
  setTimeout(callback: () => void, delayMs: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** The browser's (or Node's) own clock. Reads the globals at call time, so fake timers apply. */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (callback, delayMs) => globalThis.setTimeout(callback, delayMs),
  clearTimeout: (handle) => globalThis.clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/** Whether the browser believes it is online, and when that changes. */
export interface NetworkMonitor {
  isOnline(): boolean;
  /** Calls `listener` on every change; returns the unsubscribe. */
  subscribe(listener: (online: boolean) => void): () => void;
}

/** `navigator.onLine` with the window's `online` / `offline` events; always online elsewhere. */
export function browserNetwork(): NetworkMonitor {
  const hasWindow = typeof window !== "undefined" && typeof navigator !== "undefined";
  return {
    isOnline: () => (hasWindow ? navigator.onLine !== false : true),
    subscribe(listener) {
      if (!hasWindow) return () => {};
      const online = (): void => listener(true);
      const offline = (): void => listener(false);
      window.addEventListener("online", online);
      window.addEventListener("offline", offline);
      return () => {
        window.removeEventListener("online", online);
        window.removeEventListener("offline", offline);
      };
    },
  };
}

/** The longest delay `setTimeout` takes without overflowing. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Named one-shot timers on a clock: setting a name again replaces its timer,
 * so each concern (retry, ping, pong, ...) has at most one pending at a time.
 */
export class Timers {
  private readonly handles = new Map<string, unknown>();

  constructor(private readonly clock: Clock) {}

  set(name: string, delayMs: number, callback: () => void): void {
    this.clear(name);
    const handle = this.clock.setTimeout(() => {
      this.handles.delete(name);
      callback();
    }, Math.min(Math.max(0, delayMs), MAX_TIMER_MS));
    this.handles.set(name, handle);
  }

  clear(...names: string[]): void {
    for (const name of names) {
      if (!this.handles.has(name)) continue;
      this.clock.clearTimeout(this.handles.get(name));
      this.handles.delete(name);
    }
  }

  clearAll(): void {
    this.clear(...this.handles.keys());
  }

  has(name: string): boolean {
    return this.handles.has(name);
  }
}
