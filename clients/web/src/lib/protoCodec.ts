/**
 * The `agent-relay.v1+proto` codec (see codec.ts): @bufbuild/protobuf and the
 * code protoc-gen-es generated into src/gen read and write `agent_relay.v1.Frame`;
 * the mapping below gives the same objects the JSON wire gives (the edge's JSON
 * mapping, ws_edge/events.py). Loaded on demand: `loadCodec("proto")`.
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";

import { FinishReason, type SessionEvent as ProtoEvent } from "../gen/agent_relay/v1/agent_pb";
import { type Frame, FrameSchema } from "../gen/agent_relay/v1/edge_pb";
import { type FrameCodec, PROTO_PROTOCOL } from "./codec";
import { type ClientFrame, validServerFrame } from "./protocol";

export const protoCodec: FrameCodec = {
  wire: "proto",
  protocol: PROTO_PROTOCOL,
  encode: (frame) => toBinary(FrameSchema, create(FrameSchema, protoOfClientFrame(frame))),
  decode: (data) => {
    if (typeof data === "string") return undefined;
    let frame: Frame;
    try {
      frame = fromBinary(FrameSchema, data instanceof Uint8Array ? data : new Uint8Array(data));
    } catch {
      return undefined;
    }
    const mapped = serverFrameOfProto(frame);
    return mapped === undefined ? undefined : validServerFrame(mapped);
  },
};

// ---------------------------------------------------------------- client frames -> proto

type FrameInit = Parameters<typeof create<typeof FrameSchema>>[1];

function protoOfClientFrame(frame: ClientFrame): FrameInit {
  const id = frame.id;
  switch (frame.type) {
    case "auth":
      return { id, kind: { case: "auth", value: { token: frame.token } } };
    case "join":
      return {
        id,
        kind: {
          case: "join",
          value: {
            sessionId: frame.session_id,
            afterSeq: BigInt(frame.after_seq),
            deltas: frame.deltas,
            toolOutput: frame.tool_output,
          },
        },
      };
    case "leave":
      return { id, kind: { case: "leave", value: { sessionId: frame.session_id } } };
    case "chat:message":
      return {
        id,
        kind: {
          case: "chatMessage",
          value: {
            sessionId: frame.session_id,
            messageId: frame.message_id,
            text: frame.text,
            busyPolicy: frame.busy_policy,
            traceparent: frame.traceparent,
          },
        },
      };
    case "chat:cancel":
      return { id, kind: { case: "chatCancel", value: { sessionId: frame.session_id, runId: frame.run_id ?? "" } } };
    case "tool:cancel":
      return { id, kind: { case: "toolCancel", value: { sessionId: frame.session_id, callId: frame.call_id } } };
    case "ping":
      return { id, kind: { case: "ping", value: { ts: frame.ts } } };
  }
}

// ---------------------------------------------------------------- proto -> server frames

function num(value: bigint | undefined): number | undefined {
  return value === undefined ? undefined : Number(value);
}

/** Copy the fields that are present (an optional field left out stays out, as in JSON). */
function present(fields: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(fields)) if (value !== undefined) out[key] = value;
  return out;
}

function withRef(frame: Frame, fields: Record<string, unknown>): Record<string, unknown> {
  return frame.ref === undefined ? fields : { ...fields, ref: frame.ref };
}

function serverFrameOfProto(frame: Frame): Record<string, unknown> | undefined {
  const kind = frame.kind;
  switch (kind.case) {
    case "welcome": {
      const w = kind.value;
      return {
        type: "welcome", protocol: w.protocol, heartbeat_ms: w.heartbeatMs,
        auth_timeout_ms: w.authTimeoutMs, max_frame_bytes: w.maxFrameBytes, batch_ms: w.batchMs,
      };
    }
    case "ack": {
      const a = kind.value;
      return withRef(frame, {
        type: "ack",
        ...present({
          user_id: a.userId, expires_at: num(a.expiresAt), session_id: a.sessionId, head_seq: num(a.headSeq),
          message_id: a.messageId, seq: num(a.seq), run_id: a.runId, queued: a.queued,
          duplicate: a.duplicate, cancelled: a.cancelled,
        }),
      });
    }
    case "error": {
      const e = kind.value;
      return withRef(frame, {
        type: "error", code: e.code, message: e.message, retryable: e.retryable,
        ...present({ retry_after_ms: e.retryAfterMs, session_id: e.sessionId }),
      });
    }
    case "pong":
      return withRef(frame, { type: "pong", ...present({ ts: kind.value.ts }) });
    case "upstream":
      return { type: "upstream", session_id: kind.value.sessionId, state: kind.value.state };
    case "response": {
      const r = kind.value;
      return {
        type: "chat:response", session_id: r.sessionId, seq: Number(r.seq), from_seq: Number(r.fromSeq),
        run_id: r.runId, time_unix_ms: Number(r.timeUnixMs), text: r.text, step: r.step,
      };
    }
    case "event":
      return eventOfProto(kind.value);
    default:
      return undefined; // a client frame's kind, or none: not for a client
  }
}

const FINISH_REASONS: Record<number, string> = {
  [FinishReason.UNSPECIFIED]: "unspecified",
  [FinishReason.STOP]: "stop",
  [FinishReason.CANCELLED]: "cancelled",
  [FinishReason.ERROR]: "error",
  [FinishReason.INTERRUPTED]: "interrupted",
  [FinishReason.MAX_STEPS]: "max_steps",
};

/** A session event in the JSON mapping the edge gives it (ws_edge/events.py). */
function eventOfProto(event: ProtoEvent): Record<string, unknown> | undefined {
  const head = {
    session_id: event.sessionId, seq: Number(event.seq), run_id: event.runId,
    time_unix_ms: Number(event.timeUnixMs),
  };
  const kind = event.kind;
  switch (kind.case) {
    case "messageAccepted": {
      const m = kind.value;
      return { type: "chat:accepted", ...head, message_id: m.messageId, text: m.text, queued: m.queued, duplicate: m.duplicate };
    }
    case "runStarted": {
      const r = kind.value;
      return {
        type: "chat:run_started", ...head, message_id: r.messageId,
        assistant_message_id: r.assistantMessageId, model: r.model,
      };
    }
    case "responseDelta":
      return { type: "chat:response", ...head, text: kind.value.text, step: kind.value.step };
    case "toolExecution": {
      const t = kind.value;
      const base = { type: "chat:tool_execution", ...head, call_id: t.callId, tool_name: t.toolName };
      const u = t.update;
      switch (u.case) {
        case "started":
          return { ...base, status: "started", arguments_json: u.value.argumentsJson };
        case "progress":
          return { ...base, status: "progress", fraction: u.value.fraction, note: u.value.note };
        case "output":
          return { ...base, status: "output", text: u.value.text, stream: u.value.stream };
        case "completed":
          return { ...base, status: "completed", result: u.value.result, duration_ms: u.value.durationMs };
        case "failed":
          return {
            ...base, status: "failed", code: u.value.code, message: u.value.message,
            duration_ms: u.value.durationMs,
          };
        case "cancelled":
          return { ...base, status: "cancelled", reason: u.value.reason };
        default:
          return undefined;
      }
    }
    case "runError": {
      const e = kind.value;
      return {
        type: "chat:run_error", ...head, code: e.code, message: e.message, retryable: e.retryable,
        retry_after_ms: e.retryAfterMs,
      };
    }
    case "runCompleted": {
      const c = kind.value;
      return {
        type: "chat:complete", ...head,
        finish_reason: FINISH_REASONS[c.finishReason] ?? String(c.finishReason),
        usage: { input_tokens: c.usage?.inputTokens ?? 0, output_tokens: c.usage?.outputTokens ?? 0 },
        assistant_message_id: c.assistantMessageId, text: c.text, duration_ms: c.durationMs,
      };
    }
    case "replayGap": {
      const g = kind.value;
      const { seq: _seq, ...envelope } = head;
      return { type: "chat:gap", ...envelope, after_seq: Number(g.afterSeq), first_seq: Number(g.firstSeq) };
    }
    default:
      return undefined;
  }
}
