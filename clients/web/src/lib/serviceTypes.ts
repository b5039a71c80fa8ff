/**
 * The public types of `WebSocketService` (service.ts re-exports them): what its
 * snapshot shows, what its promises resolve with, how it is configured.
 */
import type { RelayApi } from "./api";
import type { BackoffOptions } from "./backoff";
import type { Clock, NetworkMonitor } from "./clock";
import type { Conversation } from "./conversation";
import type { TokenStore } from "./sessions";
import type { KeyValueStorage } from "./storage";
import type { TransportFactory } from "./transport";
import type { FrameCodec } from "./codec";

export type ConnectionState = "idle" | "connecting" | "connected" | "reconnecting" | "disconnected";

export interface ConnectionInfo {
  state: ConnectionState;
  sessionId?: string;
  /** Failed attempts since the last successful auth (the connection machine's counter). */
  attempt: number;
  /** When reconnecting on a timer: the next attempt's time (ms since the epoch). */
  retryAt?: number;
  /** What the browser says about the network; while false, no attempt is made. */
  online: boolean;
  /** The close code that led here, when a socket closed. */
  closeCode?: number;
  /** Why, in words. */
  reason?: string;
  /**
   * The agent service behind the edge, as the edge last reported it: set on a
   * join (`available`), an `upstream` frame, or an `upstream_unavailable` error.
   */
  upstream?: "available" | "unavailable";
}

/** A failure reported through `onError` and as a promise rejection. */
export class ServiceError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly retryable = false,
    readonly retryAfterMs?: number,
  ) {
    super(message);
    this.name = "ServiceError";
  }
}

/** What `sendMessage` resolves with once the server accepted the message. */
export interface SendResult {
  messageId: string;
  runId?: string;
  seq?: number;
  /** The message waits behind an active run. */
  queued: boolean;
  /** The id had been accepted before (a resend after a lost ack). */
  duplicate: boolean;
}

export interface ServiceSnapshot {
  connection: ConnectionInfo;
  /** The connected session's conversation, or undefined before `connect`. */
  conversation: Conversation | undefined;
}

export interface WebSocketServiceOptions {
  /** The edge's WebSocket URL, e.g. `ws://host:port/ws`. */
  url: string;
  api: RelayApi;
  tokens: TokenStore;
  /** Default: `localStorage`-shaped in-memory storage. Pass `localStorage` in browsers. */
  storage?: KeyValueStorage;
  transport?: TransportFactory;
  /**
   * The wire format's codec: `jsonCodec` (`agent-relay.v1`, text frames; the
   * default, measured faster to decode in Chromium, docs/protocol.md) or the
   * protobuf one (`agent-relay.v1+proto`, binary frames) from
   * `await loadCodec("proto")`.
   */
  codec?: FrameCodec;
  clock?: Clock;
  network?: NetworkMonitor;
  /** Uniform in [0, 1): jitter. */
  random?: () => number;
  /** Unique ids for messages (UUIDs by default). */
  newId?: () => string;
  backoff?: BackoffOptions;
  /** From opening the socket to the join's ack; past it the attempt counts as failed. Default 10 s. */
  connectTimeoutMs?: number;
  /**
   * Heartbeat ping period; default the edge's `heartbeat_ms` from `welcome`, else 15 s. A link
   * that carried no frame for 2 periods is dead (`linkDead`, the Python client's rule).
   */
  pingIntervalMs?: number;
  /** @deprecated Ignored: the dead-link rule is 2 ping periods of silence, in both clients. */
  pongTimeoutMs?: number;
  /** After a 1012 (edge draining), reconnect within [0, this). Default 1 s. */
  restartJitterMs?: number;
  /** Refresh the token this long before it expires. Default 60 s. */
  tokenRefreshMarginMs?: number;
  /** Conversation snapshots are written at most this often. Default 250 ms. */
  persistDelayMs?: number;
  /** Attach a W3C `traceparent` to each message. Default true. */
  traceMessages?: boolean;
}
