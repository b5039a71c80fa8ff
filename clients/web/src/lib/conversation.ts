/**
 * A session's conversation as the client shows it, and the pure functions
 * that build it from the event log. No I/O, no timers: every function takes a
 * conversation and returns a new one (never mutating the old, so React sees a
 * new reference on every change and the same one when nothing changed).
 *
 * Calling rule: feed events through `receiveEvent`, which drops what was
 * already processed (`seq <= lastSeq`) and reports a hole in the sequence
 * instead of applying past it.
 */
import type {
  CompleteEvent,
  History,
  HistoryMessage,
  ResponseEvent,
  SessionEvent,
  ToolExecutionEvent,
  ToolStatus,
} from "./protocol";

/**
 * Where a message stands.
 * User messages: queued (in the outbox, not yet on a socket) -> sending (on a
 * socket, no ack yet) -> sent (accepted by the server) | failed (refused).
 * Assistant messages: streaming -> complete | cancelled | failed | interrupted
 * (the service stopped during the reply; the Python client says the same).
 */
export type MessageState =
  | "queued"
  | "sending"
  | "sent"
  | "streaming"
  | "complete"
  | "cancelled"
  | "failed"
  | "interrupted";

/**
 * Where a tool call stands: the protocol's statuses, plus `interrupted` (the
 * run ended, by a crash or a cancel, before the call reported an end; no
 * event will ever finish it, so nothing may offer to cancel it).
 */
export type ToolState = ToolStatus | "interrupted";

/** The states in which a tool call is still running (and may be cancelled). */
export const RUNNING_TOOL_STATES: ReadonlySet<ToolState> = new Set(["started", "progress", "output"]);

/** A piece of an assistant message: text, or a tool call shown in place. */
export type MessagePart = { kind: "text"; text: string } | { kind: "tool"; callId: string };

export interface ChatMessage {
  /** The client's message id for user messages; the assistant message id otherwise. */
  id: string;
  role: "user" | "assistant";
  /** The whole text (for an assistant message, the text parts joined). */
  text: string;
  /** Assistant text and tool calls in the order they happened. */
  parts: MessagePart[];
  state: MessageState;
  runId?: string;
  /** Why the message failed or was cut short, in words. */
  error?: string;
  /** The user message waits for an active run to end. */
  runQueued?: boolean;
  createdMs: number;
}

export interface ToolExecution {
  callId: string;
  toolName: string;
  runId?: string;
  argumentsJson?: string;
  status: ToolState;
  /** 0 to 1 when the tool reported progress. */
  fraction?: number;
  note?: string;
  /** Output streamed so far, capped at `MAX_TOOL_OUTPUT_CHARS` (older text dropped). */
  output: string;
  result?: string;
  errorCode?: string;
  errorMessage?: string;
  reason?: string;
  durationMs?: number;
}

export interface Conversation {
  sessionId: string;
  /** The last event `seq` applied: resume after it. */
  lastSeq: number;
  messages: ChatMessage[];
  tools: Record<string, ToolExecution>;
  /** The run in flight, if any. */
  activeRunId?: string;
}

/** What an interrupted reply says about itself. */
const INTERRUPTED = "The service stopped during this reply.";

/** A tool's live output is kept to this many characters (the tail). */
export const MAX_TOOL_OUTPUT_CHARS = 32_000;

export function emptyConversation(sessionId: string): Conversation {
  return { sessionId, lastSeq: 0, messages: [], tools: {} };
}

/** What happened to an event fed to `receiveEvent`. */
export type Received =
  | { outcome: "applied"; conversation: Conversation }
  /** Already processed (`seq <= lastSeq`): ignored. */
  | { outcome: "duplicate"; conversation: Conversation }
  /** Events between `lastSeq` and this one are missing: reload history. */
  | { outcome: "gap"; conversation: Conversation };

/** Apply one log event unless it was already processed or would skip a hole. */
export function receiveEvent(conversation: Conversation, event: SessionEvent): Received {
  const first = event.type === "chat:response" ? (event.from_seq ?? event.seq) : event.seq;
  if (event.seq <= conversation.lastSeq) return { outcome: "duplicate", conversation };
  // A batch that straddles lastSeq cannot be split (its text is one string): resync.
  if (first <= conversation.lastSeq || first > conversation.lastSeq + 1) {
    return { outcome: "gap", conversation };
  }
  const next = applyEvent(conversation, event);
  return { outcome: "applied", conversation: { ...next, lastSeq: event.seq } };
}

function applyEvent(c: Conversation, event: SessionEvent): Conversation {
  switch (event.type) {
    case "chat:accepted":
      return upsertUserMessage(c, {
        id: event.message_id,
        text: event.text,
        runId: event.run_id,
        runQueued: event.queued === true,
        createdMs: event.time_unix_ms ?? 0,
      });
    case "chat:run_started": {
      const runId = event.run_id ?? "";
      const withMessage = ensureAssistant(c, runId, event.assistant_message_id, event.time_unix_ms);
      const messages = withMessage.messages.map((m) =>
        m.role === "user" && m.id === event.message_id ? { ...m, runQueued: false } : m,
      );
      return { ...withMessage, messages, activeRunId: runId };
    }
    case "chat:response":
      return appendText(c, event);
    case "chat:tool_execution":
      return applyTool(c, event);
    case "chat:run_error": {
      const runId = event.run_id ?? "";
      const base = ensureAssistant(c, runId, undefined, event.time_unix_ms);
      return updateAssistant(base, runId, (m) => ({ ...m, error: event.message || event.code }));
    }
    case "chat:complete":
      return complete(c, event);
  }
}

function upsertUserMessage(
  c: Conversation,
  m: { id: string; text: string; runId?: string; runQueued: boolean; createdMs: number },
): Conversation {
  const index = c.messages.findIndex((x) => x.role === "user" && x.id === m.id);
  if (index >= 0) {
    const old = c.messages[index] as ChatMessage;
    const updated: ChatMessage = { ...old, state: "sent", runQueued: m.runQueued };
    delete updated.error;
    if (m.runId) updated.runId = m.runId;
    return { ...c, messages: replaceAt(c.messages, index, updated) };
  }
  const message: ChatMessage = {
    id: m.id,
    role: "user",
    text: m.text,
    parts: [{ kind: "text", text: m.text }],
    state: "sent",
    runQueued: m.runQueued,
    createdMs: m.createdMs,
  };
  if (m.runId) message.runId = m.runId;
  return { ...c, messages: [...c.messages, message] };
}

function findAssistantIndex(c: Conversation, runId: string): number {
  for (let i = c.messages.length - 1; i >= 0; i--) {
    const m = c.messages[i] as ChatMessage;
    if (m.role === "assistant" && m.runId === runId) return i;
  }
  return -1;
}

function ensureAssistant(
  c: Conversation,
  runId: string,
  messageId: string | undefined,
  timeMs: number | undefined,
): Conversation {
  if (findAssistantIndex(c, runId) >= 0) return c;
  const message: ChatMessage = {
    id: messageId || `a_${runId}`,
    role: "assistant",
    text: "",
    parts: [],
    state: "streaming",
    runId,
    createdMs: timeMs ?? 0,
  };
  return { ...c, messages: [...c.messages, message] };
}

function updateAssistant(
  c: Conversation,
  runId: string,
  update: (m: ChatMessage) => ChatMessage,
): Conversation {
  const index = findAssistantIndex(c, runId);
  if (index < 0) return c;
  return { ...c, messages: replaceAt(c.messages, index, update(c.messages[index] as ChatMessage)) };
}

function appendText(c: Conversation, event: ResponseEvent): Conversation {
  const runId = event.run_id ?? "";
  const base = ensureAssistant(c, runId, undefined, event.time_unix_ms);
  return updateAssistant(base, runId, (m) => {
    const parts = [...m.parts];
    const last = parts[parts.length - 1];
    if (last?.kind === "text") parts[parts.length - 1] = { kind: "text", text: last.text + event.text };
    else parts.push({ kind: "text", text: event.text });
    return { ...m, parts, text: m.text + event.text };
  });
}

function applyTool(c: Conversation, event: ToolExecutionEvent): Conversation {
  const runId = event.run_id ?? "";
  let next = c;
  if (runId) {
    next = ensureAssistant(next, runId, undefined, event.time_unix_ms);
    next = updateAssistant(next, runId, (m) =>
      m.parts.some((p) => p.kind === "tool" && p.callId === event.call_id)
        ? m
        : { ...m, parts: [...m.parts, { kind: "tool", callId: event.call_id }] },
    );
  }
  const old: ToolExecution = next.tools[event.call_id] ?? {
    callId: event.call_id,
    toolName: event.tool_name,
    status: "started",
    output: "",
  };
  const tool: ToolExecution = { ...old, toolName: event.tool_name || old.toolName, status: event.status };
  if (runId) tool.runId = runId;
  switch (event.status) {
    case "started":
      if (event.arguments_json !== undefined) tool.argumentsJson = event.arguments_json;
      break;
    case "progress":
      if (typeof event.fraction === "number") tool.fraction = clamp01(event.fraction);
      if (event.note !== undefined) tool.note = event.note;
      // Progress after output must not hide the card's "running" state.
      tool.status = "progress";
      break;
    case "output":
      tool.output = (old.output + (event.text ?? "")).slice(-MAX_TOOL_OUTPUT_CHARS);
      break;
    case "completed":
      tool.fraction = 1;
      if (event.result !== undefined) tool.result = event.result;
      if (event.duration_ms !== undefined) tool.durationMs = event.duration_ms;
      break;
    case "failed":
      if (event.code !== undefined) tool.errorCode = event.code;
      if (event.message !== undefined) tool.errorMessage = event.message;
      if (event.duration_ms !== undefined) tool.durationMs = event.duration_ms;
      break;
    case "cancelled":
      if (event.reason !== undefined) tool.reason = event.reason;
      // the service ended the call at its restart: it did not stop on request
      if (event.reason === "interrupted") tool.status = "interrupted";
      break;
  }
  return { ...next, tools: { ...next.tools, [event.call_id]: tool } };
}

/** `finish_reason` in the protocol's lower-case form, whatever spelling arrived. */
export function normaliseFinishReason(reason: string | number | undefined): string {
  const names = ["unspecified", "stop", "cancelled", "error", "interrupted", "max_steps"];
  if (typeof reason === "number") return names[reason] ?? "unspecified";
  return (reason ?? "").toLowerCase().replace(/^finish_reason_/, "");
}

/** The state a finished reply ends in, by `finish_reason` (the Python client's table). */
export function finishState(reason: string): MessageState {
  switch (reason) {
    case "cancelled":
      return "cancelled";
    case "error":
      return "failed";
    case "interrupted":
      return "interrupted";
    default:
      return "complete";
  }
}

function complete(c: Conversation, event: CompleteEvent): Conversation {
  const runId = event.run_id ?? "";
  const reason = normaliseFinishReason(event.finish_reason);
  const base = ensureAssistant(c, runId, event.assistant_message_id, event.time_unix_ms);
  const next = updateAssistant(base, runId, (m) => {
    const state = finishState(reason);
    const updated: ChatMessage = { ...m, state };
    if (reason === "interrupted" && !m.error) updated.error = INTERRUPTED;
    // The final text is authoritative: if the assembled text differs (deltas were
    // not streamed, or history lagged), show the server's and keep the tool cards.
    if (typeof event.text === "string" && event.text !== m.text) {
      updated.text = event.text;
      updated.parts = [
        ...m.parts.filter((p) => p.kind === "tool"),
        ...(event.text ? [{ kind: "text" as const, text: event.text }] : []),
      ];
    }
    return updated;
  });
  const ended = endUnfinishedTools(next, runId, reason === "cancelled" ? "cancelled" : "interrupted");
  return ended.activeRunId === runId ? withoutActiveRun(ended) : ended;
}

/**
 * The run is over: a call of it that never reported its end never will. A
 * cancelled run's calls were cancelled with it; any other end (a crash, an
 * error) left them interrupted.
 */
function endUnfinishedTools(c: Conversation, runId: string, status: "cancelled" | "interrupted"): Conversation {
  let tools: Record<string, ToolExecution> | undefined;
  for (const tool of Object.values(c.tools)) {
    if (tool.runId !== runId || !RUNNING_TOOL_STATES.has(tool.status)) continue;
    tools ??= { ...c.tools };
    const ended: ToolExecution = { ...tool, status };
    if (status === "cancelled") ended.reason = ended.reason ?? "run_cancelled";
    tools[tool.callId] = ended;
  }
  return tools ? { ...c, tools } : c;
}

function withoutActiveRun(c: Conversation): Conversation {
  const next = { ...c };
  delete next.activeRunId;
  return next;
}

/**
 * Build a conversation from history (`GET /api/sessions/{id}/messages`).
 * Consecutive assistant and tool messages of one run fold into one assistant
 * message whose tool calls appear as cards between its text parts.
 *
 * A tool call's end is read from its result message (`toolFromResult`). A call
 * with no result belongs either to the run still going (`history.active_run_id`,
 * or a reply still streaming: its events follow after `as_of_seq`) or to a run
 * that ended first: cancelled with it, or interrupted.
 */
export function conversationFromHistory(sessionId: string, history: History): Conversation {
  let c: Conversation = { ...emptyConversation(sessionId), lastSeq: Number(history.as_of_seq) || 0 };
  const runStatuses = new Map<string, Set<string>>();
  for (const raw of history.messages) {
    const role = normaliseEnum(raw.role, "role", ["unspecified", "user", "assistant", "tool"]);
    const status = normaliseEnum(raw.status, "message_status", [
      "unspecified", "complete", "streaming", "cancelled", "failed", "interrupted", "queued",
    ]);
    const createdMs = Number(raw.created_unix_ms ?? 0) || 0;
    if (raw.run_id && role === "assistant") {
      runStatuses.set(raw.run_id, (runStatuses.get(raw.run_id) ?? new Set()).add(status));
    }
    if (role === "user") {
      c = upsertUserMessage(c, {
        id: raw.message_id, text: raw.text ?? "", runQueued: status === "queued", createdMs,
        ...(raw.run_id ? { runId: raw.run_id } : {}),
      });
    } else if (role === "assistant") {
      c = applyHistoryAssistant(c, raw, status, createdMs);
    } else if (role === "tool" && raw.call_id) {
      const old = c.tools[raw.call_id] ?? { callId: raw.call_id, toolName: "", output: "", status: "started" as const };
      const tool = toolFromResult(old, raw.text ?? "", status);
      if (raw.duration_ms && tool.status !== "interrupted") tool.durationMs = raw.duration_ms;
      c = { ...c, tools: { ...c.tools, [raw.call_id]: tool } };
    }
  }
  const streaming = [...c.messages].reverse().find((m) => m.role === "assistant" && m.state === "streaming");
  const activeRunId = history.active_run_id || streaming?.runId;
  const tools = { ...c.tools };
  const cutShort = new Map<string, MessageState>();
  for (const tool of Object.values(tools)) {
    if (!RUNNING_TOOL_STATES.has(tool.status) || !tool.runId || tool.runId === activeRunId) continue;
    const cancelled = runStatuses.get(tool.runId)?.has("cancelled") === true;
    tools[tool.callId] = cancelled
      ? { ...tool, status: "cancelled", reason: "run_cancelled" }
      : { ...tool, status: "interrupted" };
    cutShort.set(tool.runId, cancelled ? "cancelled" : "interrupted");
  }
  c = { ...c, tools };
  // A run that ended while a call of it was running did not end well, whatever
  // its last stored step says.
  for (const [runId, state] of cutShort) {
    c = updateAssistant(c, runId, (m) =>
      m.state !== "complete" ? m : { ...m, state, ...(state === "interrupted" ? { error: INTERRUPTED } : {}) },
    );
  }
  return activeRunId ? { ...c, activeRunId } : c;
}

/**
 * A tool call as its stored result tells it. History keeps the result text the
 * model read and the call's status: `complete`, `failed` (written as
 * `error (CODE): MESSAGE`), `cancelled` (`cancelled (REASON)`, or a note that its
 * run was cancelled first) or `interrupted` (the service stopped with the call in
 * flight). The duration comes beside it (`duration_ms`), for calls that finished.
 */
export function toolFromResult(tool: ToolExecution, text: string, status: string): ToolExecution {
  const base: ToolExecution = { ...tool };
  delete base.fraction;
  if (status === "interrupted") return { ...base, status: "interrupted" };
  const cancelled = /^cancelled \(([^)]*)\)$/.exec(text);
  if (status === "cancelled" || cancelled) {
    return { ...base, status: "cancelled", reason: cancelled?.[1] ?? "run_cancelled" };
  }
  if (status !== "failed") return { ...base, status: "completed", result: text, fraction: 1 };
  const failed = /^error \(([^)]*)\): ([\s\S]*)$/.exec(text);
  if (failed) return { ...base, status: "failed", errorCode: failed[1] ?? "", errorMessage: failed[2] ?? "" };
  return { ...base, status: "failed", errorMessage: text };
}

function applyHistoryAssistant(c: Conversation, raw: HistoryMessage, status: string, createdMs: number): Conversation {
  const runId = raw.run_id || `history_${raw.message_id}`;
  const state: MessageState =
    status === "streaming" ? "streaming"
      : status === "cancelled" || status === "failed" || status === "interrupted" ? status
      : "complete";
  let next = c;
  if (findAssistantIndex(next, runId) < 0) {
    const message: ChatMessage = { id: raw.message_id, role: "assistant", text: "", parts: [], state, runId, createdMs };
    next = { ...next, messages: [...next.messages, message] };
  }
  const tools = { ...next.tools };
  next = updateAssistant(next, runId, (m) => {
    const parts = [...m.parts];
    if (raw.text) parts.push({ kind: "text", text: raw.text });
    for (const call of raw.tool_calls ?? []) {
      parts.push({ kind: "tool", callId: call.call_id });
      tools[call.call_id] = {
        ...(tools[call.call_id] ?? { status: "started", output: "" }),
        callId: call.call_id, toolName: call.tool_name, runId,
        ...(call.arguments_json !== undefined ? { argumentsJson: call.arguments_json } : {}),
      };
    }
    // A run ends with its last step: its state is the run's state so far.
    const updated: ChatMessage = { ...m, parts, state, text: m.text + (raw.text ?? "") };
    if (state === "interrupted") updated.error = INTERRUPTED;
    return updated;
  });
  return { ...next, tools };
}

function normaliseEnum(value: string | number | undefined, prefix: string, names: string[]): string {
  if (typeof value === "number") return names[value] ?? "unspecified";
  return (value ?? "").toLowerCase().replace(new RegExp(`^${prefix}_`), "");
}

/** Set a local message's state (the outbox's view of a user message). */
export function setMessageState(c: Conversation, id: string, state: MessageState, error?: string): Conversation {
  const index = c.messages.findIndex((m) => m.role === "user" && m.id === id);
  if (index < 0) return c;
  const old = c.messages[index] as ChatMessage;
  // The server's acceptance is final: a late local state never overrides it.
  if (old.state === "sent" && state !== "sent") return c;
  const updated: ChatMessage = { ...old, state };
  if (error) updated.error = error;
  else delete updated.error;
  return { ...c, messages: replaceAt(c.messages, index, updated) };
}

/** Add a user message the client is about to send (not yet in the log). */
export function addLocalMessage(
  c: Conversation,
  m: { id: string; text: string; state: MessageState; createdMs: number },
): Conversation {
  if (c.messages.some((x) => x.role === "user" && x.id === m.id)) return c;
  const message: ChatMessage = {
    id: m.id, role: "user", text: m.text, parts: [{ kind: "text", text: m.text }], state: m.state, createdMs: m.createdMs,
  };
  return { ...c, messages: [...c.messages, message] };
}

function replaceAt<T>(items: T[], index: number, item: T): T[] {
  const copy = items.slice();
  copy[index] = item;
  return copy;
}

function clamp01(x: number): number {
  return Math.max(0, Math.min(1, x));
}
