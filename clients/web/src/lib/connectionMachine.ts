/**
 * The client's connection state machine. Does no I/O: the same core, with the
 * same inputs and outputs, as the Python client's
 * `agent_relay_client/connection.py` (the scenario files in clients/spec/ run
 * against both).
 *
 *     idle --start--> connecting --connected--> connected
 *                        |                          |
 *                        | closed                   | closed (action: reconnect)
 *                        v                          v
 *                   reconnecting <-----------------+
 *                        |  retry due: attempt --connected--> connected
 *                        | stop(), a close whose action is "stop", or maxAttempts spent
 *                        v
 *                   disconnected --start--> connecting
 *
 * The rules:
 * - the attempt counter resets when a connection is authenticated (the auth
 *   ack), not merely opened;
 * - after a close the code's action decides (codes.ts, generated from
 *   codes.json): stop; reconnect at once (1012, within the restart jitter);
 *   renew the token (4501; a second 4501 before a success stops); or reconnect
 *   after full-jitter backoff, never sooner than a `retry_after_ms` the edge
 *   asked for;
 * - a link silent for `POLICY.deadAfterIntervals` ping intervals is dead
 *   (`linkDead`): close it with 4001 and feed that close here.
 */
import { type BackoffOptions, DEFAULT_BACKOFF, backoff } from "./backoff";
import { POLICY, closeAction } from "./codes";

export type MachineState = "idle" | "connecting" | "connected" | "reconnecting" | "disconnected";

export type Decision =
  /** Open a new connection after `delayMs` (attempt number `attempt`, from 0). */
  | { kind: "reconnect"; delayMs: number; attempt: number }
  /** Renew the token, then open a new connection at once. */
  | { kind: "refresh_token"; attempt: number }
  /** The connection is over; `code` and `reason` say why. */
  | { kind: "give_up"; code: number; reason: string };

export interface ConnectionMachineOptions {
  backoff?: BackoffOptions;
  /** After a 1012, reconnect within [0, this). Default from the spec. */
  restartJitterMs?: number;
  /** Uniform in [0, 1). */
  random: () => number;
  /** Consecutive failed attempts before giving up; undefined: never. */
  maxAttempts?: number;
}

/** Whether a link whose last frame arrived at `lastFrameMs` is dead at `nowMs`. */
export function linkDead(lastFrameMs: number, nowMs: number, intervalMs: number): boolean {
  return nowMs - lastFrameMs > POLICY.deadAfterIntervals * intervalMs;
}

/**
 * Decides connection states and reconnect delays from what happened to the socket.
 *
 * Calling rule: `receiveStart()` once to begin; then for every attempt exactly
 * one of `receiveConnected()` or `receiveClosed()`; after a "reconnect" or
 * "refresh_token" decision, `receiveAttempt()` when the next attempt begins.
 */
export class ConnectionMachine {
  state: MachineState = "idle";
  /** Failed attempts since the last successful connection. */
  attempt = 0;
  /** Every change, oldest first. */
  readonly transitions: [MachineState, MachineState][] = [];
  private refreshed = false;
  private readonly backoffOptions: BackoffOptions;
  private readonly restartJitterMs: number;

  constructor(private readonly options: ConnectionMachineOptions) {
    this.backoffOptions = options.backoff ?? DEFAULT_BACKOFF;
    this.restartJitterMs = options.restartJitterMs ?? POLICY.restartJitterMs;
  }

  /** The user wants a connection: the first attempt begins now. */
  receiveStart(): void {
    if (this.state !== "idle" && this.state !== "disconnected") throw new Error(`cannot start from ${this.state}`);
    this.attempt = 0;
    this.refreshed = false;
    this.move("connecting");
  }

  /** The attempt succeeded: the socket is open and authenticated. */
  receiveConnected(): void {
    if (this.state !== "connecting" && this.state !== "reconnecting") throw new Error(`connected while ${this.state}`);
    this.attempt = 0;
    this.refreshed = false;
    this.move("connected");
  }

  /** A reconnect wait ended and the next attempt begins (the state stays reconnecting). */
  receiveAttempt(): void {
    if (this.state !== "reconnecting") throw new Error(`attempt while ${this.state}`);
  }

  /** The socket closed or the attempt failed (1006 when there was no close frame). */
  receiveClosed(code: number, reason = "", retryAfterMs = 0): Decision {
    if (this.state === "idle" || this.state === "disconnected") return { kind: "give_up", code, reason };
    let action = closeAction(code);
    if (action === "refresh_token" && this.refreshed) action = "stop"; // the renewed token failed too
    if (action === "stop") {
      this.move("disconnected");
      return { kind: "give_up", code, reason };
    }
    if (this.options.maxAttempts !== undefined && this.attempt >= this.options.maxAttempts) {
      this.move("disconnected");
      return { kind: "give_up", code, reason: `gave up after ${this.attempt} attempts: ${reason}` };
    }
    let decision: Decision;
    if (action === "refresh_token") {
      this.refreshed = true;
      decision = { kind: "refresh_token", attempt: this.attempt };
    } else {
      const delay =
        action === "reconnect_now"
          ? this.options.random() * this.restartJitterMs
          : backoff(this.attempt, this.backoffOptions, this.options.random);
      decision = { kind: "reconnect", delayMs: Math.max(delay, retryAfterMs), attempt: this.attempt };
    }
    this.attempt += 1;
    this.move("reconnecting");
    return decision;
  }

  /** The user closed the client: no more attempts. */
  receiveStop(): void {
    this.move("disconnected");
  }

  private move(next: MachineState): void {
    if (next === this.state) return;
    this.transitions.push([this.state, next]);
    this.state = next;
  }
}
