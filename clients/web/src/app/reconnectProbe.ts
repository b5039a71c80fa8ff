/**
 * Reconnect promptly after a long outage. The service's backoff grows to tens
 * of seconds, so a system back after 45 s could wait half a minute more. While
 * the service waits on its timer, this probes the edge's `/readyz` (cheap, not
 * a socket) at a capped interval, and when the tab becomes visible again; once
 * the edge and its agent service answer, it asks the service to reconnect now.
 * (The browser's `online` event already makes the service try at once.)
 */
import { useEffect } from "react";
import type { ConnectionInfo } from "../lib/service";

/** First probe after this long, doubling up to `PROBE_MAX_MS`. */
export const PROBE_FIRST_MS = 1_000;
export const PROBE_MAX_MS = 4_000;

/** The probe's delays: doubling from the first, capped. Pure, for tests. */
export function probeDelayMs(probesSoFar: number): number {
  return Math.min(PROBE_MAX_MS, PROBE_FIRST_MS * 2 ** Math.min(probesSoFar, 10));
}

/** Whether the edge and its agent service answer (`/readyz` 200). */
export async function edgeReady(fetcher: typeof fetch = (...a) => globalThis.fetch(...a)): Promise<boolean> {
  try {
    const response = await fetcher("readyz", { cache: "no-store" });
    return response.ok;
  } catch {
    return false;
  }
}

/** While `connection` waits to reconnect, probe and call `reconnectNow` once the edge is ready. */
export function useReconnectProbe(
  connection: ConnectionInfo,
  reconnectNow: () => void,
  ready: () => Promise<boolean> = edgeReady,
): void {
  const waiting = connection.state === "reconnecting" && connection.online;
  useEffect(() => {
    if (!waiting) return;
    let stopped = false;
    let probes = 0;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const probe = async (): Promise<void> => {
      clearTimeout(timer);
      if (stopped) return;
      if (await ready()) {
        if (!stopped) reconnectNow();
        return;
      }
      if (!stopped) timer = setTimeout(() => void probe(), probeDelayMs(probes++));
    };
    const onVisible = (): void => {
      if (document.visibilityState === "visible") void probe();
    };
    timer = setTimeout(() => void probe(), probeDelayMs(probes++));
    document.addEventListener("visibilitychange", onVisible);
    return () => {
      stopped = true;
      clearTimeout(timer);
      document.removeEventListener("visibilitychange", onVisible);
    };
  }, [waiting, connection.attempt, reconnectNow, ready]);
}
