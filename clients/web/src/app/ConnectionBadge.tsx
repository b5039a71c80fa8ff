import { useEffect, useState } from "react";
import type { ConnectionInfo } from "../lib/service";

/** Re-render every `ms` while `active`, for countdowns. */
function useNow(active: boolean, ms = 250): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (!active) return;
    const timer = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(timer);
  }, [active, ms]);
  return now;
}

/**
 * The state in words, and a countdown kept apart from it: the words live in a
 * status region (announced when they change), the ticking seconds do not.
 */
function describe(connection: ConnectionInfo, now: number): { words: string; countdown?: string } {
  switch (connection.state) {
    case "idle":
      return { words: "Not connected" };
    case "connecting":
      return { words: connection.attempt > 0 ? `Reconnecting (attempt ${connection.attempt + 1})…` : "Connecting…" };
    case "connected":
      // The socket is up, but the edge says the agent service behind it is not.
      return { words: connection.upstream === "unavailable" ? "Agent service unavailable" : "Connected" };
    case "reconnecting":
      if (!connection.online) return { words: "Offline: waiting for the network" };
      if (connection.retryAt !== undefined) {
        const seconds = Math.max(0, Math.ceil((connection.retryAt - now) / 1000));
        return { words: "Reconnecting", countdown: ` in ${seconds}s` };
      }
      return { words: "Reconnecting…" };
    case "disconnected":
      return { words: connection.reason ? `Disconnected: ${connection.reason}` : "Disconnected" };
  }
}

/** The connection state in words, with the reconnect countdown and a way to retry now. */
export function ConnectionBadge({
  connection,
  onRetryNow,
}: {
  connection: ConnectionInfo;
  onRetryNow: () => void;
}) {
  const counting = connection.state === "reconnecting" && connection.retryAt !== undefined;
  const now = useNow(counting);
  const text = describe(connection, now);
  const canRetry = (connection.state === "reconnecting" && connection.online) || connection.state === "disconnected";
  return (
    <div
      className="badge"
      data-state={connection.state === "connected" && connection.upstream === "unavailable" ? "degraded" : connection.state}
      data-testid="connection-badge"
    >
      <span className="badge-dot" aria-hidden="true" />
      <span className="badge-text">
        <span role="status" aria-live="polite">
          {text.words}
        </span>
        {text.countdown && <span aria-hidden="true">{text.countdown}</span>}
      </span>
      {canRetry && (
        <button type="button" className="link-button" onClick={onRetryNow}>
          {connection.state === "disconnected" ? "Reconnect" : "Retry now"}
        </button>
      )}
    </div>
  );
}
