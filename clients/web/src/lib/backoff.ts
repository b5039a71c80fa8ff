import { POLICY } from "./codes";

/** Settings of the reconnect backoff. */
export interface BackoffOptions {
  /** Ceiling of the first retry's delay, in milliseconds. */
  baseMs: number;
  /** No delay ceiling grows past this, in milliseconds. */
  maxMs: number;
}

/** The protocol's policy (proto/agent_relay/v1/codes.json): the same in the Python client and the edge. */
export const DEFAULT_BACKOFF: BackoffOptions = { baseMs: POLICY.backoffBaseMs, maxMs: POLICY.backoffCapMs };

/**
 * Full-jitter exponential backoff: a delay drawn uniformly from
 * `[0, min(maxMs, baseMs * 2**attempt))` (not rounded, like the Python client's).
 *
 * `attempt` counts failed attempts since the last success, from 0. `random`
 * returns a number in [0, 1) (injected so tests are deterministic). Full jitter
 * spreads a crowd of clients that lost the same edge over the whole window, so
 * they do not all come back at the same instant.
 */
export function backoff(
  attempt: number,
  options: BackoffOptions = DEFAULT_BACKOFF,
  random: () => number = Math.random,
): number {
  return random() * backoffCeiling(attempt, options);
}

/** The ceiling `backoff(attempt)` draws below: for showing and testing bounds. */
export function backoffCeiling(attempt: number, options: BackoffOptions = DEFAULT_BACKOFF): number {
  const exponent = Math.max(0, Math.min(attempt, 30));
  return Math.min(options.maxMs, options.baseMs * 2 ** exponent);
}
