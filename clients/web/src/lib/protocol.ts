/**
 * Frames of the `agent-relay.v1` WebSocket protocol (docs/protocol.md). Event
 * frames are the JSON mapping of proto/agent_relay/v1/agent.proto's messages,
 * field names in snake_case.
 */

export type BusyPolicy = "queue" | "reject" | "interrupt";

// ---------------------------------------------------------------- client frames

export type ClientFrame =
  | { type: "auth"; id: string; token: string }
  | {
      type: "join";
      id: string;
      session_id: string;
      after_seq: number;
      deltas?: "stream" | "final";
      tool_output?: "stream" | "final";
    }
  | { type: "leave"; id: string; session_id: string }
  | {
      type: "chat:message";
      id: string;
      session_id: string;
      message_id: string;
      text: string;
      busy_policy?: BusyPolicy;
      traceparent?: string;
    }
  | { type: "chat:cancel"; id: string; session_id: string; run_id?: string }
  | { type: "tool:cancel"; id: string; session_id: string; call_id: string }
  | { type: "ping"; id: string; ts: number };

// ---------------------------------------------------------------- server frames

export interface WelcomeFrame {
  type: "welcome";
  protocol: string;
  heartbeat_ms?: number;
  auth_timeout_ms?: number;
  max_frame_bytes?: number;
  batch_ms?: number;
}

export interface AckFrame {
  type: "ack";
  ref: string;
  user_id?: string;
  expires_at?: number;
  session_id?: string;
  head_seq?: number;
  message_id?: string;
  seq?: number;
  run_id?: string;
  queued?: boolean;
  duplicate?: boolean;
  cancelled?: boolean;
}

export interface ErrorFrame {
  type: "error";
  ref?: string;
  code: string;
  message?: string;
  retryable?: boolean;
  retry_after_ms?: number;
}

export interface PongFrame {
  type: "pong";
  ref?: string;
  ts?: number;
}

interface EventBase {
  session_id: string;
  seq: number;
  run_id?: string;
  time_unix_ms?: number;
}

export interface AcceptedEvent extends EventBase {
  type: "chat:accepted";
  message_id: string;
  text: string;
  queued?: boolean;
}

export interface RunStartedEvent extends EventBase {
  type: "chat:run_started";
  message_id?: string;
  assistant_message_id?: string;
  model?: string;
}

export interface ResponseEvent extends EventBase {
  type: "chat:response";
  /** The first seq the batched text covers; `seq` is the last. */
  from_seq?: number;
  text: string;
  step?: number;
}

export type ToolStatus = "started" | "progress" | "output" | "completed" | "failed" | "cancelled";

export interface ToolExecutionEvent extends EventBase {
  type: "chat:tool_execution";
  call_id: string;
  tool_name: string;
  status: ToolStatus;
  arguments_json?: string;
  fraction?: number;
  note?: string;
  text?: string;
  stream?: string;
  result?: string;
  duration_ms?: number;
  code?: string;
  message?: string;
  reason?: string;
}

export interface RunErrorEvent extends EventBase {
  type: "chat:run_error";
  code: string;
  message?: string;
  retryable?: boolean;
  retry_after_ms?: number;
}

export type FinishReason = "stop" | "cancelled" | "error" | "interrupted" | "max_steps";

export interface CompleteEvent extends EventBase {
  type: "chat:complete";
  finish_reason: FinishReason | string;
  usage?: { input_tokens?: number; output_tokens?: number };
  assistant_message_id?: string;
  text?: string;
  duration_ms?: number;
}

export interface GapEvent {
  type: "chat:gap";
  session_id: string;
  after_seq: number;
  first_seq: number;
}

/** Events that are part of a session's log and carry a `seq`. */
export type SessionEvent =
  | AcceptedEvent
  | RunStartedEvent
  | ResponseEvent
  | ToolExecutionEvent
  | RunErrorEvent
  | CompleteEvent;

/** The edge's word on the agent service behind a joined session (docs/protocol.md). */
export interface UpstreamFrame {
  type: "upstream";
  session_id: string;
  state: "available" | "unavailable";
}

export type ServerFrame = WelcomeFrame | AckFrame | ErrorFrame | PongFrame | SessionEvent | GapEvent | UpstreamFrame;

const EVENT_TYPES: ReadonlySet<string> = new Set([
  "chat:accepted",
  "chat:run_started",
  "chat:response",
  "chat:tool_execution",
  "chat:run_error",
  "chat:complete",
]);

const FRAME_TYPES: ReadonlySet<string> = new Set([
  ...EVENT_TYPES,
  "welcome",
  "ack",
  "error",
  "pong",
  "chat:gap",
  "upstream",
]);

/**
 * Parse one text frame. Returns `undefined` for anything that is not a JSON
 * object with a known `type`, or an event without a usable `seq`: the caller
 * reports it and goes on, it never throws out of the socket loop.
 */
export function parseServerFrame(data: string): ServerFrame | undefined {
  let value: unknown;
  try {
    value = JSON.parse(data);
  } catch {
    return undefined;
  }
  return validServerFrame(value);
}

/**
 * The checks of `parseServerFrame` on a value already decoded (from JSON, or
 * mapped from a binary frame by src/lib/codec.ts).
 */
export function validServerFrame(value: unknown): ServerFrame | undefined {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined;
  const frame = value as { type?: unknown; seq?: unknown; session_id?: unknown };
  if (typeof frame.type !== "string" || !FRAME_TYPES.has(frame.type)) return undefined;
  if (EVENT_TYPES.has(frame.type)) {
    if (typeof frame.session_id !== "string") return undefined;
    frame.seq = Number(frame.seq);
    if (!Number.isSafeInteger(frame.seq) || (frame.seq as number) < 1) return undefined;
  }
  return value as ServerFrame;
}

export function isSessionEvent(frame: ServerFrame): frame is SessionEvent {
  return EVENT_TYPES.has(frame.type);
}

// ---------------------------------------------------------------- HTTP API

export interface CreatedSession {
  session_id: string;
  token: string;
  /** Seconds since the Unix epoch. */
  expires_at: number;
}

export interface RefreshedToken {
  token: string;
  /** Seconds since the Unix epoch. */
  expires_at: number;
}

/** One durable message, as `GET /api/sessions/{id}/messages` returns it. */
export interface HistoryMessage {
  message_id: string;
  role: string | number;
  text?: string;
  tool_calls?: { call_id: string; tool_name: string; arguments_json?: string }[];
  call_id?: string;
  run_id?: string;
  status?: string | number;
  created_unix_ms?: number | string;
  /** For a tool message: how long the call took (0 or absent: unknown). */
  duration_ms?: number;
}

export interface History {
  messages: HistoryMessage[];
  as_of_seq: number;
  /** The run going on when history was read (empty or absent: none). */
  active_run_id?: string;
}
