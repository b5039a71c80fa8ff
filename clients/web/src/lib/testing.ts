/**
 * Test doubles for the service: a fake transport whose "server side" the test
 * drives frame by frame, a fake API and a switchable network. Used by the
 * unit tests only; not exported from the library entry.
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";

import { FinishReason, SessionEventSchema } from "../gen/agent_relay/v1/agent_pb";
import { type Frame, FrameSchema } from "../gen/agent_relay/v1/edge_pb";
import type { RelayApi } from "./api";
import { PROTO_PROTOCOL } from "./codec";
import type { NetworkMonitor } from "./clock";
import type { ClientFrame, History, ServerFrame } from "./protocol";
import type { StoredToken, TokenStore } from "./sessions";
import type { Transport, TransportCallbacks } from "./transport";

export type SentFrame = ClientFrame & Record<string, unknown>;

export class FakeSocket implements Transport {
  readonly sent: SentFrame[] = [];
  callbacks: TransportCallbacks | undefined;
  closedWith: { code: number; reason: string } | undefined;

  /** Offered `agent-relay.v1+proto`: frames go both ways as protobuf, the test still sees objects. */
  readonly binary: boolean;

  constructor(
    readonly url: string,
    readonly protocol = "agent-relay.v1",
  ) {
    this.binary = protocol === PROTO_PROTOCOL;
  }

  open(callbacks: TransportCallbacks): void {
    this.callbacks = callbacks;
  }

  send(data: string | Uint8Array): void {
    if (this.binary !== (typeof data !== "string")) throw new Error(`a ${typeof data} frame on ${this.protocol}`);
    this.sent.push(typeof data === "string" ? (JSON.parse(data) as SentFrame) : clientFrameOfProto(data));
  }

  close(code: number, reason: string): void {
    this.closedWith = { code, reason };
    this.callbacks = undefined;
  }

  // ----- the server's side

  /** The handshake succeeded: open + welcome. */
  accept(welcome: Partial<Extract<ServerFrame, { type: "welcome" }>> = {}): void {
    this.callbacks?.onOpen();
    this.push({ type: "welcome", protocol: "agent-relay.v1", heartbeat_ms: 15_000, ...welcome });
  }

  push(frame: ServerFrame | Record<string, unknown>): void {
    if (!this.binary) {
      this.callbacks?.onMessage(JSON.stringify(frame));
      return;
    }
    const bytes = protoOfServerFrame(frame as Record<string, unknown>);
    // A frame type the proto wire has no message for cannot reach a proto client at all.
    if (bytes) this.callbacks?.onMessage(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer);
  }

  /** The socket closed from the server's side (1006: dropped). */
  drop(code = 1006, reason = ""): void {
    const callbacks = this.callbacks;
    this.callbacks = undefined;
    callbacks?.onClose(code, reason);
  }

  framesOf<T extends ClientFrame["type"]>(type: T): (Extract<ClientFrame, { type: T }> & SentFrame)[] {
    return this.sent.filter((f) => f.type === type) as (Extract<ClientFrame, { type: T }> & SentFrame)[];
  }

  lastOf<T extends ClientFrame["type"]>(type: T): Extract<ClientFrame, { type: T }> & SentFrame {
    const frames = this.framesOf(type);
    const last = frames[frames.length - 1];
    if (!last) throw new Error(`no ${type} frame sent; sent: ${JSON.stringify(this.sent)}`);
    return last;
  }

  /** Accept, ack the auth and the join: the service ends up connected. */
  handshake(options: { expiresAt?: number; headSeq?: number } = {}): void {
    this.accept();
    const auth = this.lastOf("auth");
    this.push({ type: "ack", ref: auth.id, user_id: "u_1", expires_at: options.expiresAt ?? 4_000_000_000 });
    const join = this.lastOf("join");
    this.push({ type: "ack", ref: join.id, session_id: join.session_id, head_seq: options.headSeq ?? 0 });
  }

  /** Ack every chat:message not acked yet, as the server would. */
  ackMessages(seqStart = 1): void {
    let seq = seqStart;
    for (const m of this.framesOf("chat:message")) {
      this.push({ type: "ack", ref: m.id, message_id: m.message_id, seq: seq++, run_id: `r_${m.message_id}`, queued: false, duplicate: false });
    }
  }
}

export class FakeNetwork implements NetworkMonitor {
  online = true;
  private readonly listeners = new Set<(online: boolean) => void>();
  isOnline(): boolean {
    return this.online;
  }
  subscribe(listener: (online: boolean) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
  set(online: boolean): void {
    this.online = online;
    for (const l of [...this.listeners]) l(online);
  }
  get listenerCount(): number {
    return this.listeners.size;
  }
}

export class FakeApi implements RelayApi {
  history: History = { messages: [], as_of_seq: 0 };
  historyCalls = 0;
  refreshCalls: string[] = [];
  nextToken = { token: "t_fresh", expires_at: 4_000_000_000 };

  createSession(): Promise<{ session_id: string; token: string; expires_at: number }> {
    return Promise.resolve({ session_id: "s_new", token: "t_new", expires_at: 4_000_000_000 });
  }
  refreshToken(token: string): Promise<{ token: string; expires_at: number }> {
    this.refreshCalls.push(token);
    return Promise.resolve(this.nextToken);
  }
  getMessages(): Promise<History> {
    this.historyCalls += 1;
    return Promise.resolve(this.history);
  }
}

export class FakeTokens implements TokenStore {
  readonly tokens = new Map<string, StoredToken>();
  get(sessionId: string): StoredToken | undefined {
    return this.tokens.get(sessionId);
  }
  set(sessionId: string, token: StoredToken): void {
    this.tokens.set(sessionId, token);
  }
}

// ----- the edge's side of the proto wire, for FakeSocket (the edge does this in Python)

const CLIENT_TYPES: Record<string, string> = {
  auth: "auth", join: "join", leave: "leave", chatMessage: "chat:message",
  chatCancel: "chat:cancel", toolCancel: "tool:cancel", ping: "ping",
};

const snake = (key: string): string => key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
const camel = (key: string): string => key.replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase());

function plain(value: object): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(value)) {
    if (key === "$typeName" || key === "$unknown" || v === undefined) continue;
    out[snake(key)] = typeof v === "bigint" ? Number(v) : v;
  }
  return out;
}

/** A binary client frame as the JSON frame of the same meaning. */
export function clientFrameOfProto(data: Uint8Array): SentFrame {
  const frame: Frame = fromBinary(FrameSchema, data);
  const type = CLIENT_TYPES[frame.kind.case ?? ""];
  if (!type || !frame.kind.value) throw new Error(`not a client frame: ${String(frame.kind.case)}`);
  const out: Record<string, unknown> = { type, ...(frame.id === undefined ? {} : { id: frame.id }), ...plain(frame.kind.value) };
  // proto3 has no "absent" for plain fields: drop the defaults the JSON frame would leave out
  if (type === "chat:cancel" && out.run_id === "") delete out.run_id;
  return out as SentFrame;
}

const BIG = new Set(["expires_at", "head_seq", "seq", "from_seq", "time_unix_ms", "after_seq", "first_seq"]);

function protoFields(fields: Record<string, unknown>, skip: string[] = []): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(fields)) {
    if (key === "type" || key === "ref" || skip.includes(key) || v === undefined || v === null) continue;
    out[camel(key)] = BIG.has(key) && typeof v === "number" ? BigInt(v) : v;
  }
  return out;
}

const FINISH: Record<string, FinishReason> = {
  stop: FinishReason.STOP, cancelled: FinishReason.CANCELLED, error: FinishReason.ERROR,
  interrupted: FinishReason.INTERRUPTED, max_steps: FinishReason.MAX_STEPS,
};

const TOOL_FIELDS: Record<string, string[]> = {
  started: ["arguments_json"], progress: ["fraction", "note"], output: ["text", "stream"],
  completed: ["result", "duration_ms"], failed: ["code", "message", "duration_ms"], cancelled: ["reason"],
};

function eventKind(f: Record<string, unknown>): { case: string; value: Record<string, unknown> } | undefined {
  const body = protoFields(f, ["session_id", "seq", "run_id", "time_unix_ms"]);
  switch (f.type) {
    case "chat:accepted":
      return { case: "messageAccepted", value: body };
    case "chat:run_started":
      return { case: "runStarted", value: body };
    case "chat:run_error":
      return { case: "runError", value: body };
    case "chat:gap":
      return { case: "replayGap", value: body };
    case "chat:complete": {
      const usage = f.usage as { input_tokens?: number; output_tokens?: number } | undefined;
      return {
        case: "runCompleted",
        value: {
          ...protoFields(f, ["session_id", "seq", "run_id", "time_unix_ms", "usage", "finish_reason"]),
          finishReason: FINISH[String(f.finish_reason)] ?? FinishReason.UNSPECIFIED,
          usage: { inputTokens: usage?.input_tokens ?? 0, outputTokens: usage?.output_tokens ?? 0 },
        },
      };
    }
    case "chat:tool_execution": {
      const status = String(f.status);
      const update = protoFields(Object.fromEntries((TOOL_FIELDS[status] ?? []).map((k) => [k, f[k]])));
      return {
        case: "toolExecution",
        value: { callId: f.call_id, toolName: f.tool_name ?? "", update: { case: status, value: update } },
      };
    }
    default:
      return undefined;
  }
}

/** A server frame (the JSON mapping) as the edge sends it on the proto wire; undefined for
 * a frame type the proto wire has no message for. */
export function protoOfServerFrame(f: Record<string, unknown>): Uint8Array | undefined {
  const ref = typeof f.ref === "string" ? f.ref : undefined;
  const simple: Record<string, string> = { welcome: "welcome", ack: "ack", error: "error", pong: "pong", upstream: "upstream" };
  const type = String(f.type);
  let init: Record<string, unknown>;
  if (simple[type]) {
    init = { ref, kind: { case: simple[type], value: protoFields(f) } };
  } else if (type === "chat:response" && typeof f.from_seq === "number") {
    init = { kind: { case: "response", value: protoFields(f) } };
  } else if (type === "chat:response") {
    const event = { ...protoFields(f, ["text", "step"]), kind: { case: "responseDelta", value: { text: f.text, step: f.step ?? 0 } } };
    init = { kind: { case: "event", value: create(SessionEventSchema, event as never) } };
  } else {
    const kind = eventKind(f);
    if (!kind) return undefined;
    const envelope = protoFields({ session_id: f.session_id, seq: f.seq, run_id: f.run_id, time_unix_ms: f.time_unix_ms });
    init = { kind: { case: "event", value: create(SessionEventSchema, { ...envelope, kind } as never) } };
  }
  return toBinary(FrameSchema, create(FrameSchema, init as never));
}
