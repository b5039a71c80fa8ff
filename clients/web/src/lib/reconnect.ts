/**
 * Pure decisions of the connection's lifecycle: what to do after a socket
 * closed, and when to renew a token. No timers, no I/O: the service feeds them
 * facts and carries out the answer. `ConnectionMachine` (connectionMachine.ts)
 * keeps the attempt counter and uses these; `afterClose` stays for callers that
 * only want the one decision.
 */
import { type BackoffOptions, backoff } from "./backoff";
import { closeAction } from "./codes";

export type AfterClose =
  /** Give up: the same attempt would fail the same way. */
  | { kind: "stop" }
  /** Renew the token, then reconnect at once (a 4501). */
  | { kind: "refresh_token" }
  /** The browser is offline: try again as soon as it is back, not before. */
  | { kind: "wait_for_network" }
  /** Try again after `delayMs`. */
  | { kind: "retry"; delayMs: number };

export interface AfterCloseInput {
  /** The close code (the client's own 4000/4001 for timeouts it detected). */
  code: number;
  /** Failed attempts since the last successful auth (0 on the first failure). */
  attempt: number;
  online: boolean;
  /** The longest `retry_after_ms` the server asked for on this socket (0: none). */
  retryAfterMs: number;
  backoff: BackoffOptions;
  /** After a 1012 (edge draining), reconnect within [0, this). */
  restartJitterMs: number;
  /** Uniform in [0, 1). */
  random: () => number;
}

/** Decide what to do after the socket closed (codes.ts's `closeAction`, then backoff). */
export function afterClose(input: AfterCloseInput): AfterClose {
  const action = closeAction(input.code);
  if (action === "stop") return { kind: "stop" };
  if (action === "refresh_token") return { kind: "refresh_token" };
  if (!input.online) return { kind: "wait_for_network" };
  const drawn =
    action === "reconnect_now"
      ? input.random() * input.restartJitterMs
      : backoff(input.attempt, input.backoff, input.random);
  return { kind: "retry", delayMs: Math.max(drawn, input.retryAfterMs) };
}

/**
 * How long to wait before renewing a token that expires in `remainingMs`:
 * `marginMs` before expiry, but never in the first half of the remaining life,
 * so a token shorter-lived than the margin is not renewed in a loop.
 */
export function tokenRefreshDelayMs(remainingMs: number, marginMs: number): number {
  if (!Number.isFinite(remainingMs)) return Infinity;
  return Math.max(0, remainingMs - marginMs, remainingMs / 2);
}
