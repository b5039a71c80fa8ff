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
