/**
 * Close codes and error codes of the `agent-relay.v1` WebSocket protocol
 * (docs/protocol.md), grouped by what the client does about them.
 *
 * Two families:
 *   - a reply error (`{"type": "error", "code": ...}`) keeps the socket open;
 *     `retryable` codes may succeed when the same frame is sent again later;
 *   - a close code ends the socket; its range says whether to reconnect.
 */

/** The subprotocol the client offers in the handshake. */
export const PROTOCOL = "agent-relay.v1";

/** What to do after the socket closed with a given code. */
export type CloseAction =
  /** Reconnect after an exponential backoff with full jitter. */
  | "backoff"
  /** Reconnect at once, spread by a short jitter (the edge is draining). */
  | "soon"
  /** Do not reconnect: the same attempt would fail the same way. */
  | "stop";

export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  ABNORMAL: 1006,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  SERVICE_RESTART: 1012,
  TRY_AGAIN_LATER: 1013,
  IDLE_TIMEOUT: 4000,
  HEARTBEAT_TIMEOUT: 4001,
  TOKEN_INVALID: 4501,
  AUTH_TIMEOUT: 4503,
  TOO_MANY_CONNECTIONS: 4509,
} as const;

/** Codes the client itself uses when it drops a socket it judged dead or stale. */
export const ClientCloseCode = {
  /** The handshake, auth and join did not finish within the connection timeout. */
  CONNECT_TIMEOUT: 4000,
  /** No frame arrived within the heartbeat deadline. */
  HEARTBEAT_TIMEOUT: 4001,
  /** The client is switching session or the caller asked to disconnect. */
  CLIENT_DISCONNECT: 1000,
} as const;

/** Codes after which reconnecting with the same credentials fails again. */
const STOP_CODES: ReadonlySet<number> = new Set([
  CloseCode.NORMAL,
  CloseCode.PROTOCOL_ERROR,
  CloseCode.POLICY_VIOLATION,
  CloseCode.MESSAGE_TOO_BIG,
]);

/**
 * Decide whether to reconnect after a close with `code`.
 *
 * 1012 (the edge is draining) reconnects at once; 4500-4999 and the policy
 * codes stop; everything else, unknown codes included, backs off and retries,
 * because giving up on an unknown code would strand the user.
 */
export function closeAction(code: number): CloseAction {
  if (STOP_CODES.has(code)) return "stop";
  if (code >= 4500 && code <= 4999) return "stop";
  if (code === CloseCode.SERVICE_RESTART) return "soon";
  return "backoff";
}

/** Reply error codes: the socket stays open. */
export const ErrorCode = {
  BAD_FRAME: "bad_frame",
  INVALID_FIELD: "invalid_field",
  FRAME_TOO_LARGE: "frame_too_large",
  UNAUTHENTICATED: "unauthenticated",
  FORBIDDEN: "forbidden",
  NOT_JOINED: "not_joined",
  NOT_FOUND: "not_found",
  BUSY: "busy",
  RATE_LIMITED: "rate_limited",
  UPSTREAM_UNAVAILABLE: "upstream_unavailable",
  INTERNAL: "internal",
} as const;

export type ErrorCodeName = (typeof ErrorCode)[keyof typeof ErrorCode];

/** Reply errors after which sending the same frame later may succeed. */
const RETRYABLE_ERRORS: ReadonlySet<string> = new Set([
  ErrorCode.BUSY,
  ErrorCode.RATE_LIMITED,
  ErrorCode.UPSTREAM_UNAVAILABLE,
  ErrorCode.INTERNAL,
]);

/**
 * Whether a reply error with `code` may succeed when retried. The server's
 * own `retryable` flag wins when present; this table covers its absence.
 */
export function isRetryableError(code: string, serverSays?: boolean): boolean {
  if (typeof serverSays === "boolean") return serverSays;
  return RETRYABLE_ERRORS.has(code);
}

/** Errors the service raises itself (not sent by the server). */
export const ClientErrorCode = {
  /** The caller disconnected while the request was pending. */
  DISCONNECTED: "disconnected",
  /** The socket was lost before the request's reply arrived. */
  CONNECTION_LOST: "connection_lost",
  /** The server closed with a code that forbids reconnecting. */
  CLOSED: "closed",
  /** The token is missing, expired or could not be refreshed. */
  TOKEN: "token",
  /** Reloading history after a gap failed. */
  HISTORY: "history",
  /** A server frame could not be understood. */
  PROTOCOL: "protocol",
  /** No session is connected. */
  NO_SESSION: "no_session",
} as const;
