/**
 * `WebSocketService`: one session's live connection to the edge, with no
 * framework in it. A thin driver: it owns the transport, the timers, the
 * window and network events, the token refresh and the promises it hands
 * out; every protocol decision is made by the pure cores it feeds, the same
 * cores (same inputs, same outputs) as the Python client's:
 *
 * - `ConnectionMachine` (connectionMachine.ts): close codes, backoff, the
 *   attempt counter (reset on the auth ack), the dead-link rule;
 * - `SessionCore` (sessionCore.ts): joins, resume by `seq`, dedup, gaps
 *   (reload history, then leave + join after its `as_of_seq`), the outbox
 *   (outbox.ts: once per connection, retryable codes only, `busy` never).
 *
 * Connection states it shows (`ConnectionInfo.state`):
 *
 *     idle ──connect()──> connecting ──join acked──> connected
 *                           │   ^                       │
 *         closed/timeout    │   │ retry timer, online   │ closed, link dead
 *         (code: reconnect) v   │                       v
 *                         reconnecting <────────────────┘
 *     any ──disconnect() or a "stop" close code──> disconnected ──connect()──> connecting
 *
 * Calling rule: everything is driven by public calls, transport callbacks and
 * the injected clock's timers; none of them throws. Failures reach the caller
 * through `onError` and through the promises of `sendMessage`, `cancelRun` and
 * `cancelTool`.
 */
import { DEFAULT_BACKOFF } from "./backoff";
import { type Clock, type NetworkMonitor, Timers, browserNetwork, systemClock } from "./clock";
import { ClientCloseCode, ClientErrorCode, ErrorCode, POLICY, isRetryableError } from "./codes";
import { ConnectionMachine, type Decision, linkDead } from "./connectionMachine";
import type { ChatMessage, Conversation, ToolExecution } from "./conversation";
import { Listeners } from "./listeners";
import { Outbox, type OutboxEntry } from "./outbox";
import type { AckFrame, BusyPolicy, ClientFrame, ErrorFrame, ServerFrame } from "./protocol";
import { isSessionEvent } from "./protocol";
import { tokenRefreshDelayMs } from "./reconnect";
import { type Command, SessionCore } from "./sessionCore";
import type { StoredToken } from "./sessions";
import { ConversationSnapshots } from "./snapshots";
import { watchEnvironment } from "./environment";
import { type KeyValueStorage, MemoryStorage } from "./storage";
import { type Transport, type TransportFactory, browserTransport } from "./transport";
import { type FrameCodec, encodedBytes, jsonCodec } from "./codec";
import {
  type ConnectionInfo,
  type ConnectionState,
  type SendResult,
  type ServiceSnapshot,
  ServiceError,
  type WebSocketServiceOptions,
} from "./serviceTypes";

export {
  type ConnectionInfo,
  type ConnectionState,
  type SendResult,
  type ServiceSnapshot,
  type WebSocketServiceOptions,
  ServiceError,
} from "./serviceTypes";

type Pending =
  | { kind: "auth" }
  | { kind: "join"; sessionId: string }
  | { kind: "leave" }
  | { kind: "message"; messageId: string }
  | { kind: "cancel"; resolve: (cancelled: boolean) => void; reject: (error: ServiceError) => void };

interface Waiter {
  resolve: (result: SendResult) => void;
  reject: (error: ServiceError) => void;
}

/** A message refused with `not_joined` is joined again and resent at most this often. */
const MAX_NOT_JOINED_RESENDS = 5;

export class WebSocketService {
  private readonly storage: KeyValueStorage;
  private readonly transportFactory: TransportFactory;
  private readonly codec: FrameCodec;
  private readonly clock: Clock;
  private readonly network: NetworkMonitor;
  private readonly newId: () => string;
  private readonly core: SessionCore;
  private readonly machine: ConnectionMachine;
  private readonly snapshots: ConversationSnapshots;
  private readonly connectTimeoutMs: number;
  private readonly tokenRefreshMarginMs: number;
  private readonly persistDelayMs: number;

  private connection: ConnectionInfo;
  private conversation: Conversation | undefined;
  private snapshot: ServiceSnapshot;

  private transport: Transport | undefined;
  /** Bumped for every socket; callbacks of older sockets are ignored. */
  private generation = 0;
  private frameCounter = 0;
  private heartbeatMs: number | undefined;
  /** When the last frame arrived on this socket (any frame proves the link alive). */
  private lastFrameMs = 0;
  /** The edge's `max_frame_bytes` from `welcome`: larger frames would be refused. */
  private maxFrameBytes: number | undefined;
  private retryAfterMs = 0;
  private readonly pending = new Map<string, Pending>();
  private readonly waiters = new Map<string, Waiter[]>();

  private readonly timers: Timers;
  private stopWatching: (() => void) | undefined;

  private readonly subscribers = new Set<() => void>();
  private readonly messageListeners = new Listeners<[ChatMessage]>();
  private readonly toolListeners = new Listeners<[ToolExecution]>();
  private readonly errorListeners = new Listeners<[ServiceError]>();
  private readonly stateListeners = new Listeners<[ConnectionInfo, ConnectionState]>();

  constructor(private readonly options: WebSocketServiceOptions) {
    this.storage = options.storage ?? new MemoryStorage();
    this.transportFactory = options.transport ?? browserTransport;
    this.codec = options.codec ?? jsonCodec;
    this.clock = options.clock ?? systemClock;
    this.network = options.network ?? browserNetwork();
    this.newId = options.newId ?? (() => globalThis.crypto.randomUUID());
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    this.tokenRefreshMarginMs = options.tokenRefreshMarginMs ?? 60_000;
    this.persistDelayMs = options.persistDelayMs ?? 250;
    this.core = new SessionCore({ outbox: new Outbox(this.storage) });
    this.machine = new ConnectionMachine({
      backoff: options.backoff ?? DEFAULT_BACKOFF,
      restartJitterMs: options.restartJitterMs ?? POLICY.restartJitterMs,
      random: options.random ?? Math.random,
    });
    this.snapshots = new ConversationSnapshots(this.storage);
    this.timers = new Timers(this.clock);
    this.connection = { state: "idle", attempt: 0, online: this.network.isOnline() };
    this.snapshot = { connection: this.connection, conversation: undefined };
  }

  // ------------------------------------------------------------------ public API

  /** The current state, for `useSyncExternalStore`: a new object after every change. */
  getSnapshot = (): ServiceSnapshot => this.snapshot;

  /** Called after every change of the snapshot; returns the unsubscribe. */
  subscribe = (listener: () => void): (() => void) => {
    this.subscribers.add(listener);
    return () => this.subscribers.delete(listener);
  };

  /** An assembled message was added or changed. */
  onMessage(callback: (message: ChatMessage) => void): () => void {
    return this.messageListeners.add(callback);
  }

  /** A tool execution was added or changed. */
  onToolExecution(callback: (tool: ToolExecution) => void): () => void {
    return this.toolListeners.add(callback);
  }

  /** A reply error, a lost request, a refused token, a closed connection. */
  onError(callback: (error: ServiceError) => void): () => void {
    return this.errorListeners.add(callback);
  }

  /** Every transition of the connection state, with the state before it. */
  onStateChange(callback: (info: ConnectionInfo, previous: ConnectionState) => void): () => void {
    return this.stateListeners.add(callback);
  }

  /**
   * Follow `sessionId`: restore its stored conversation, open a socket, auth,
   * join after the last processed `seq`, then deliver the outbox. Switching to
   * another session closes the current socket first. Needs a token for the
   * session in the token store.
   */
  connect(sessionId: string): void {
    const active = this.connection.state;
    if (this.connection.sessionId === sessionId && active !== "idle" && active !== "disconnected") return;
    this.flushPersist();
    this.dropSocket(ClientCloseCode.CLIENT_DISCONNECT, "switching session");
    this.timers.clear("retry");
    const previous = this.connection.sessionId;
    if (previous) this.core.unfollow(previous);
    this.core.adopt(this.snapshots.restore(sessionId, this.core.outbox.pending(sessionId)));
    this.connection = { ...this.connection, sessionId, attempt: 0 };
    if (this.machine.state !== "idle" && this.machine.state !== "disconnected") this.machine.receiveStop();
    this.machine.receiveStart();
    this.sync();
    this.listenToEnvironment();
    this.open();
  }

  /**
   * Send a user message. It enters the persisted outbox at once and is shown
   * as `queued` (or `sending` when connected). The promise resolves when the
   * server accepted it, however many reconnects that takes; it rejects when
   * the server refused it for good or `disconnect()` is called first (the
   * message then stays in the outbox for the next `connect`).
   */
  sendMessage(text: string, options: { busyPolicy?: BusyPolicy } = {}): Promise<SendResult> {
    const sessionId = this.connection.sessionId;
    if (!sessionId || !this.conversation) {
      return Promise.reject(new ServiceError(ClientErrorCode.NO_SESSION, "connect to a session first"));
    }
    if (!text.trim()) return Promise.reject(new ServiceError(ErrorCode.INVALID_FIELD, "the message is empty"));
    return this.enqueue(sessionId, this.newId(), text, this.clock.now(), options.busyPolicy);
  }

  /** Send a failed message again, under the same id (so it can never be doubled). */
  retry(messageId: string): Promise<SendResult> {
    const sessionId = this.connection.sessionId;
    const message = this.conversation?.messages.find((m) => m.role === "user" && m.id === messageId);
    if (!sessionId || !message) {
      return Promise.reject(new ServiceError(ErrorCode.NOT_FOUND, `no message ${messageId}`));
    }
    if (message.state === "sent") return Promise.resolve({ messageId, queued: false, duplicate: true });
    if (message.state !== "failed") return this.waitFor(messageId); // already on its way
    return this.enqueue(sessionId, messageId, message.text, message.createdMs);
  }

  /** Cancel a run (the active one when `runId` is omitted). Resolves with whether it was running. */
  cancelRun(runId?: string): Promise<boolean> {
    const target = runId ?? this.conversation?.activeRunId;
    return this.request((id, session_id) => ({
      type: "chat:cancel", id, session_id, ...(target ? { run_id: target } : {}),
    }));
  }

  /** Cancel one tool call; the rest of the run goes on. */
  cancelTool(callId: string): Promise<boolean> {
    return this.request((id, session_id) => ({ type: "tool:cancel", id, session_id, call_id: callId }));
  }

  /** Try to reconnect now instead of waiting for the backoff timer. */
  reconnectNow(): void {
    if (this.connection.state !== "reconnecting") return;
    this.timers.clear("retry");
    this.attempt();
  }

  /**
   * Close the socket and stop: every timer is cleared, the window and network
   * listeners are removed, pending requests reject. Messages still in the
   * outbox stay persisted for the next `connect`. Callbacks registered with
   * `on*` stay registered (each `on*` returns its own unsubscribe).
   */
  disconnect(): void {
    this.flushPersist();
    this.dropSocket(ClientCloseCode.CLIENT_DISCONNECT, "client disconnect");
    this.machine.receiveStop();
    this.timers.clearAll();
    this.stopWatching?.();
    this.stopWatching = undefined;
    this.rejectWaiters(new ServiceError(ClientErrorCode.DISCONNECTED, "disconnected; the message stays queued"));
    if (this.connection.state !== "idle" && this.connection.state !== "disconnected") {
      this.setConnection({ state: "disconnected", reason: "disconnected by the client" });
    }
  }

  // ------------------------------------------------------------------ connection

  /** The next attempt after a wait: tell the machine, then open. */
  private attempt(): void {
    if (this.machine.state === "reconnecting") this.machine.receiveAttempt();
    this.open();
  }

  private open(): void {
    this.timers.clear("retry");
    const sessionId = this.connection.sessionId;
    if (!sessionId) return;
    if (!this.network.isOnline()) {
      this.setConnection({ state: "reconnecting", retryAt: undefined, reason: "offline" });
      return;
    }
    const token = this.options.tokens.get(sessionId);
    if (!token) {
      this.stop(new ServiceError(ClientErrorCode.TOKEN, `no token for session ${sessionId}`));
      return;
    }
    this.setConnection({ state: "connecting", retryAt: undefined });
    const generation = ++this.generation;
    this.timers.set("connect", this.connectTimeoutMs, () =>
      this.socketFailed(ClientCloseCode.CONNECT_TIMEOUT, "connection timed out"),
    );
    if (this.remainingMs(token) <= this.tokenRefreshMarginMs / 2) {
      // Authenticating with a token about to expire would fail mid-way: renew first.
      void this.refreshToken(sessionId, token).then((fresh) => {
        if (generation === this.generation) this.openSocket(generation, fresh ?? token);
      });
      return;
    }
    this.openSocket(generation, token);
  }

  private openSocket(generation: number, token: StoredToken): void {
    const transport = this.transportFactory(this.options.url, this.codec.protocol);
    this.transport = transport;
    this.lastFrameMs = this.clock.now();
    transport.open({
      onOpen: () => {
        if (generation !== this.generation) return;
        this.sendFrame({ type: "auth", id: this.track({ kind: "auth" }), token: token.token });
      },
      onMessage: (data) => {
        if (generation === this.generation) this.receiveFrame(data);
      },
      onClose: (code, reason) => {
        if (generation !== this.generation) return;
        this.transport = undefined;
        this.socketClosed(code, reason || `closed with ${code}`);
      },
    });
  }

  /** The client judged the socket dead or stale: close it and react as if it had closed. */
  private socketFailed(code: number, reason: string): void {
    this.dropSocket(code, reason);
    this.socketClosed(code, reason);
  }

  /** Close the current socket (if any) without reacting; later callbacks from it are ignored. */
  private dropSocket(code: number, reason: string): void {
    this.generation++;
    const transport = this.transport;
    this.transport = undefined;
    transport?.close(code, reason);
    this.socketGone();
  }

  /** Forget everything that belonged to the socket that just went away. */
  private socketGone(): void {
    this.timers.clear("connect", "ping", "refresh", "due");
    const lost = new ServiceError(ClientErrorCode.CONNECTION_LOST, "the connection was lost", true);
    for (const pending of this.pending.values()) if (pending.kind === "cancel") pending.reject(lost);
    this.pending.clear();
    if (this.core.connected) this.core.receiveDisconnected();
    this.sync();
  }

  private socketClosed(code: number, reason: string): void {
    this.socketGone();
    const decision = this.machine.receiveClosed(code, reason, this.retryAfterMs);
    this.retryAfterMs = 0;
    this.carryOutDecision(decision, code, reason);
  }

  private carryOutDecision(decision: Decision, code: number, reason: string): void {
    if (decision.kind === "give_up") {
      this.stop(new ServiceError(ClientErrorCode.CLOSED, `the edge closed the connection (${code}: ${reason})`), code);
      return;
    }
    const info = { state: "reconnecting" as const, attempt: this.machine.attempt, closeCode: code, reason };
    if (!this.network.isOnline()) {
      // Offline: no timer; the `online` event starts the next attempt.
      this.setConnection({ ...info, retryAt: undefined, reason: "offline" });
      return;
    }
    if (decision.kind === "refresh_token") {
      this.setConnection({ ...info, retryAt: undefined });
      const sessionId = this.connection.sessionId;
      const token = sessionId ? this.options.tokens.get(sessionId) : undefined;
      const generation = this.generation;
      if (!sessionId || !token) return this.giveUp(code, "no token to renew");
      void this.refreshToken(sessionId, token).then((fresh) => {
        if (generation !== this.generation || this.machine.state !== "reconnecting") return;
        if (fresh) this.attempt();
        else this.giveUp(code, "the token was refused and could not be renewed");
      });
      return;
    }
    this.timers.set("retry", decision.delayMs, () => this.attempt());
    this.setConnection({ ...info, retryAt: this.clock.now() + decision.delayMs });
  }

  private giveUp(code: number, reason: string): void {
    this.machine.receiveStop();
    this.stop(new ServiceError(ClientErrorCode.TOKEN, reason), code);
  }

  private stop(error: ServiceError, closeCode?: number): void {
    this.dropSocket(ClientCloseCode.CLIENT_DISCONNECT, error.message);
    this.machine.receiveStop();
    this.timers.clear("retry");
    this.emitError(error);
    this.rejectWaiters(error);
    this.setConnection({
      state: "disconnected", retryAt: undefined, reason: error.message,
      ...(closeCode !== undefined ? { closeCode } : {}),
    });
  }

  /** The auth was acked: the connection counts as made (the attempt counter resets here). */
  private authenticated(ack: AckFrame): void {
    const sessionId = this.connection.sessionId;
    if (sessionId && typeof ack.expires_at === "number") this.scheduleRefresh(sessionId, ack.expires_at);
    if (this.core.connected) {
      this.carryOut(this.core.takeDue(this.clock.now())); // an in-band refresh: resend what waits
      return;
    }
    if (this.machine.state === "connecting" || this.machine.state === "reconnecting") this.machine.receiveConnected();
    this.setConnection({ attempt: this.machine.attempt });
    this.carryOut(this.core.receiveConnected());
  }

  private joinedSession(sessionId: string): void {
    const commands = this.core.receiveJoined(sessionId, this.clock.now());
    if (sessionId === this.connection.sessionId && this.connection.state !== "connected") {
      this.timers.clear("connect");
      this.retryAfterMs = 0;
      this.setConnection({
        state: "connected", attempt: this.machine.attempt, retryAt: undefined, closeCode: undefined, reason: undefined,
        upstream: "available",
      });
      this.scheduleHeartbeat();
    }
    this.carryOut(commands);
  }

  // ------------------------------------------------------------------ frames in

  private receiveFrame(data: string | ArrayBuffer): void {
    this.lastFrameMs = this.clock.now(); // any frame proves the link alive
    const frame = this.codec.decode(data);
    if (!frame) {
      const shown = typeof data === "string" ? data.slice(0, 120) : `${data.byteLength} bytes`;
      this.emitError(new ServiceError(ClientErrorCode.PROTOCOL, `unreadable ${this.codec.wire} frame: ${shown}`));
      return;
    }
    this.dispatch(frame);
  }

  private dispatch(frame: ServerFrame): void {
    switch (frame.type) {
      case "welcome":
        if (typeof frame.heartbeat_ms === "number" && frame.heartbeat_ms > 0) this.heartbeatMs = frame.heartbeat_ms;
        if (typeof frame.max_frame_bytes === "number" && frame.max_frame_bytes > 0) {
          this.maxFrameBytes = frame.max_frame_bytes;
        }
        return;
      case "ack":
        return this.receiveAck(frame);
      case "error":
        return this.receiveError(frame);
      case "pong":
        return;
      case "upstream":
        if (frame.session_id === this.connection.sessionId) this.setConnection({ upstream: frame.state });
        return;
      default: {
        if (frame.type !== "chat:gap" && !isSessionEvent(frame)) return;
        const { outcome, commands } = this.core.receiveEvent(frame);
        if (outcome === "applied" && frame.type === "chat:accepted") {
          this.settle(frame.message_id, {
            messageId: frame.message_id, queued: frame.queued === true, duplicate: false, seq: frame.seq,
            ...(frame.run_id ? { runId: frame.run_id } : {}),
          });
        }
        this.sync();
        this.carryOut(commands);
      }
    }
  }

  private receiveAck(ack: AckFrame): void {
    const pending = this.pending.get(ack.ref);
    if (!pending) return;
    this.pending.delete(ack.ref);
    switch (pending.kind) {
      case "auth":
        return this.authenticated(ack);
      case "join":
        return this.joinedSession(pending.sessionId);
      case "leave":
        return;
      case "message":
        this.core.receiveSent(pending.messageId);
        this.sync();
        return this.settle(pending.messageId, {
          messageId: pending.messageId, queued: ack.queued === true, duplicate: ack.duplicate === true,
          ...(ack.run_id ? { runId: ack.run_id } : {}),
          ...(typeof ack.seq === "number" ? { seq: ack.seq } : {}),
        });
      case "cancel":
        return pending.resolve(ack.cancelled !== false);
    }
  }

  private receiveError(frame: ErrorFrame): void {
    // One retryable set for every client (codes.json): the frame's own flag is not consulted.
    const retryable = isRetryableError(frame.code);
    const error = new ServiceError(frame.code, frame.message ?? frame.code, retryable, frame.retry_after_ms);
    if (frame.retry_after_ms) this.retryAfterMs = Math.max(this.retryAfterMs, frame.retry_after_ms);
    if (frame.code === "upstream_unavailable") this.setConnection({ upstream: "unavailable" });
    const pending = frame.ref ? this.pending.get(frame.ref) : undefined;
    if (frame.ref) this.pending.delete(frame.ref);
    this.emitError(error);
    if (!pending) return;
    switch (pending.kind) {
      case "auth":
        if (this.core.connected) return; // An in-band refresh was refused; the current token still holds.
        if (retryable) this.socketFailed(ClientCloseCode.CONNECT_TIMEOUT, error.message);
        else this.stop(new ServiceError(ClientErrorCode.TOKEN, `the edge refused the token: ${error.message}`));
        return;
      case "join": {
        const commands = this.core.receiveJoinFailed(pending.sessionId, frame.code, frame.retry_after_ms ?? 0, this.clock.now());
        if (!this.core.conversations.has(pending.sessionId)) return this.stop(error); // unfollowed: nothing to show
        this.carryOut(commands);
        return;
      }
      case "leave":
        return;
      case "message":
        return this.messageRefused(pending.messageId, error);
      case "cancel":
        return pending.reject(error);
    }
  }

  private messageRefused(messageId: string, error: ServiceError): void {
    if (error.code === ErrorCode.NOT_JOINED && this.core.outbox.attemptsOf(messageId) < MAX_NOT_JOINED_RESENDS) {
      this.carryOut(this.core.receiveNotJoined(messageId));
      return;
    }
    const outcome = this.core.receiveSendFailed(messageId, error.code, error.message, error.retryAfterMs ?? 0, this.clock.now());
    this.sync();
    if (outcome === "dropped") this.settle(messageId, error);
    else this.scheduleDue();
    if (outcome === "reauth") {
      // The token lapsed under us: renew it; the message goes again when due.
      const sessionId = this.connection.sessionId;
      const token = sessionId ? this.options.tokens.get(sessionId) : undefined;
      if (sessionId && token) void this.refreshToken(sessionId, token).then((fresh) => fresh && this.reauth(fresh));
    }
  }

  // ------------------------------------------------------------------ carrying out the core's commands

  private carryOut(commands: Command[]): void {
    for (const command of commands) {
      switch (command.kind) {
        case "join":
          this.sendFrame({
            type: "join", id: this.track({ kind: "join", sessionId: command.sessionId }), session_id: command.sessionId,
            after_seq: command.afterSeq, deltas: "stream", tool_output: "stream",
          });
          break;
        case "leave":
          this.sendFrame({ type: "leave", id: this.track({ kind: "leave" }), session_id: command.sessionId });
          break;
        case "send":
          this.sendChat(command.entry);
          break;
        case "load_history":
          this.loadHistory(command.sessionId);
          break;
      }
    }
    this.sync();
    this.scheduleDue();
  }

  /** A hole in the log: fetch history, then the core rejoins after its `as_of_seq`. */
  private loadHistory(sessionId: string): void {
    const token = this.options.tokens.get(sessionId);
    if (!token) return;
    const generation = this.generation;
    this.options.api.getMessages(sessionId, token.token).then(
      (history) => {
        if (generation !== this.generation) return;
        this.carryOut(this.core.receiveHistory(sessionId, history));
        this.schedulePersist();
        for (const message of this.conversation?.messages ?? []) this.emitMessage(message);
      },
      (error: unknown) => {
        if (generation !== this.generation) return;
        this.emitError(new ServiceError(ClientErrorCode.HISTORY, `reloading history failed: ${String(error)}`, true));
        this.socketFailed(ClientCloseCode.CONNECT_TIMEOUT, "reloading history failed");
      },
    );
  }

  /** Wake up when the core's next refused join or waiting message is due. */
  private scheduleDue(): void {
    const due = this.core.nextDueMs();
    if (due === undefined) {
      this.timers.clear("due");
      return;
    }
    this.timers.set("due", due - this.clock.now(), () => this.carryOut(this.core.takeDue(this.clock.now())));
  }

  // ------------------------------------------------------------------ outbox

  /** A promise settled when the server accepts (or refuses) `messageId`. */
  private waitFor(messageId: string): Promise<SendResult> {
    return new Promise<SendResult>((resolve, reject) => {
      const list = this.waiters.get(messageId) ?? [];
      list.push({ resolve, reject });
      this.waiters.set(messageId, list);
    });
  }

  private enqueue(
    sessionId: string, messageId: string, text: string, createdMs: number, busyPolicy?: BusyPolicy,
  ): Promise<SendResult> {
    const promise = this.waitFor(messageId);
    const { commands, stored } = this.core.sendMessage(sessionId, text, {
      messageId, nowMs: this.clock.now(), createdMs, ...(busyPolicy ? { busyPolicy } : {}),
    });
    if (!stored) {
      this.emitError(new ServiceError("storage", "the outbox could not be saved; a reload would lose this message"));
    }
    this.sync();
    this.carryOut(commands);
    return promise;
  }

  private sendChat(entry: OutboxEntry): void {
    const frameId = this.track({ kind: "message", messageId: entry.messageId });
    const frame: ClientFrame = {
      type: "chat:message", id: frameId,
      session_id: entry.sessionId, message_id: entry.messageId, text: entry.text,
      ...(entry.busyPolicy ? { busy_policy: entry.busyPolicy } : {}),
      ...(this.options.traceMessages === false ? {} : { traceparent: this.traceparent() }),
    };
    const data = this.codec.encode(frame);
    const bytes = encodedBytes(data);
    if (this.maxFrameBytes !== undefined && bytes > this.maxFrameBytes) {
      // The edge would refuse it (or close the socket past its hard limit): fail it
      // here, with a reason the user can act on, instead of sending it at all.
      this.pending.delete(frameId);
      const error = new ServiceError(
        ErrorCode.FRAME_TOO_LARGE,
        `the message is too long (${bytes} bytes; the limit is ${this.maxFrameBytes})`,
      );
      this.emitError(error);
      this.messageRefused(entry.messageId, error);
      return;
    }
    this.transport?.send(data);
  }

  /** Resolve or reject every promise waiting on `messageId`. */
  private settle(messageId: string, outcome: SendResult | ServiceError): void {
    const waiters = this.waiters.get(messageId) ?? [];
    this.waiters.delete(messageId);
    for (const w of waiters) {
      if (outcome instanceof ServiceError) w.reject(outcome);
      else w.resolve(outcome);
    }
  }

  private rejectWaiters(error: ServiceError): void {
    const all = [...this.waiters.values()].flat();
    this.waiters.clear();
    for (const w of all) w.reject(error);
  }

  private request(build: (id: string, sessionId: string) => ClientFrame): Promise<boolean> {
    const sessionId = this.connection.sessionId;
    if (!sessionId || !this.core.isJoined(sessionId) || !this.transport) {
      return Promise.reject(new ServiceError(ClientErrorCode.CONNECTION_LOST, "not connected", true));
    }
    return new Promise<boolean>((resolve, reject) => {
      this.sendFrame(build(this.track({ kind: "cancel", resolve, reject }), sessionId));
    });
  }

  // ------------------------------------------------------------------ heartbeat

  private pingIntervalMs(): number {
    return this.options.pingIntervalMs ?? this.heartbeatMs ?? POLICY.heartbeatDefaultIntervalMs;
  }

  /** Every interval: a link silent for too long is dead (`linkDead`); else ping it. */
  private scheduleHeartbeat(): void {
    this.timers.set("ping", this.pingIntervalMs(), () => {
      if (this.checkLink()) this.scheduleHeartbeat();
    });
  }

  /** Close a dead link (false), or ping a live one (true). */
  private checkLink(): boolean {
    if (!this.transport) return false;
    if (linkDead(this.lastFrameMs, this.clock.now(), this.pingIntervalMs())) {
      this.socketFailed(ClientCloseCode.HEARTBEAT_TIMEOUT, "no frame for two heartbeat intervals");
      return false;
    }
    this.sendFrame({ type: "ping", id: this.nextFrameId("p"), ts: this.clock.now() });
    return true;
  }

  // ------------------------------------------------------------------ tokens

  /** Milliseconds until the token expires (Infinity when it does not say). */
  private remainingMs(token: StoredToken): number {
    return Number.isFinite(token.expiresAt) ? token.expiresAt * 1000 - this.clock.now() : Infinity;
  }

  private scheduleRefresh(sessionId: string, expiresAtS: number): void {
    const token = this.options.tokens.get(sessionId);
    if (!token) return;
    const current = { ...token, expiresAt: expiresAtS };
    const delay = tokenRefreshDelayMs(this.remainingMs(current), this.tokenRefreshMarginMs);
    if (!Number.isFinite(delay)) return;
    this.timers.set("refresh", delay, () => {
      void this.refreshToken(sessionId, current).then((fresh) => {
        if (fresh) this.reauth(fresh);
        else this.timers.set("refresh", 5_000, () => this.scheduleRefresh(sessionId, expiresAtS));
      });
    });
  }

  /** POST /api/token; stores and returns the new token, or undefined (error reported). */
  private async refreshToken(sessionId: string, token: StoredToken): Promise<StoredToken | undefined> {
    try {
      const fresh = await this.options.api.refreshToken(token.token);
      const stored = { token: fresh.token, expiresAt: Number(fresh.expires_at) };
      this.options.tokens.set(sessionId, stored);
      return stored;
    } catch (error) {
      this.emitError(new ServiceError(ClientErrorCode.TOKEN, `token refresh failed: ${String(error)}`, true));
      return undefined;
    }
  }

  /** Authenticate again on the open socket with a fresh token (its ack resends what waits). */
  private reauth(token: StoredToken): void {
    if (!this.transport || !this.core.connected) return;
    this.sendFrame({ type: "auth", id: this.track({ kind: "auth" }), token: token.token });
  }

  // ------------------------------------------------------------------ environment

  private listenToEnvironment(): void {
    this.stopWatching ??= watchEnvironment(this.network, {
      network: (online) => this.networkChanged(online),
      visible: () => this.becameVisible(),
      pageHide: () => this.flushPersist(),
    });
  }

  /**
   * A hidden tab's timers are throttled (to once a minute after a while) and a
   * phone may have slept: on coming back, check the link at once (the same
   * dead-link rule, then a ping), and do not wait out a retry whose time has passed.
   */
  private becameVisible(): void {
    if (this.connection.state === "connected" && this.checkLink()) this.scheduleHeartbeat();
    const retryAt = this.connection.retryAt;
    if (this.connection.state === "reconnecting" && retryAt !== undefined && retryAt <= this.clock.now()) {
      this.attempt();
    }
  }

  private networkChanged(online: boolean): void {
    this.setConnection({ online });
    if (online && this.connection.state === "reconnecting") {
      this.timers.clear("retry");
      this.attempt();
    } else if (!online && this.connection.state === "reconnecting") {
      this.timers.clear("retry");
      this.setConnection({ retryAt: undefined, reason: "offline" });
    } else if (!online && this.connection.state === "connecting") {
      // An attempt started just before the network went away would hang until
      // the connection timeout: give it up and wait for the network instead.
      this.socketFailed(ClientCloseCode.CONNECT_TIMEOUT, "offline");
    } else if (!online && this.connection.state === "connected") {
      // The browser says the network is gone: the socket cannot carry anything, and it
      // would take two silent intervals to prove it. Close it now and wait for the
      // network; the resume by seq makes the reconnect lossless if it was a blip.
      this.socketFailed(ClientCloseCode.HEARTBEAT_TIMEOUT, "offline");
    }
  }

  // ------------------------------------------------------------------ persistence

  private schedulePersist(): void {
    if (this.timers.has("persist")) return;
    this.timers.set("persist", this.persistDelayMs, () => this.flushPersist());
  }

  /** Save the conversation with its `lastSeq` now (see `ConversationSnapshots`). */
  private flushPersist(): void {
    this.timers.clear("persist");
    if (this.conversation) this.snapshots.save(this.conversation);
  }

  // ------------------------------------------------------------------ helpers

  /** Show the core's conversation for this session: notify, emit what changed, persist soon. */
  private sync(): void {
    const sessionId = this.connection.sessionId;
    const next = sessionId ? this.core.conversations.get(sessionId) : undefined;
    if (next === this.conversation) return;
    const previous = this.conversation;
    this.setConversation(next);
    if (next && previous && previous.sessionId === next.sessionId) {
      this.emitChanges(previous, next);
      this.schedulePersist();
    }
  }

  private sendFrame(frame: ClientFrame): void {
    this.transport?.send(this.codec.encode(frame));
  }

  private track(pending: Pending): string {
    const id = this.nextFrameId(pending.kind[0] as string);
    this.pending.set(id, pending);
    return id;
  }

  private nextFrameId(prefix: string): string {
    this.frameCounter += 1;
    return `${prefix}${this.frameCounter}`;
  }

  private traceparent(): string {
    const hex = (bytes: number): string =>
      Array.from(globalThis.crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, "0")).join("");
    return `00-${hex(16)}-${hex(8)}-01`;
  }

  private setConnection(change: Partial<ConnectionInfo>): void {
    const previous = this.connection;
    const next: ConnectionInfo = { ...previous, ...change };
    for (const key of Object.keys(next) as (keyof ConnectionInfo)[]) if (next[key] === undefined) delete next[key];
    this.connection = next;
    this.snapshot = { connection: next, conversation: this.conversation };
    this.notify();
    if (next.state !== previous.state) this.stateListeners.emit(next, previous.state);
  }

  private setConversation(conversation: Conversation | undefined): void {
    if (conversation === this.conversation) return;
    this.conversation = conversation;
    this.snapshot = { connection: this.connection, conversation };
    this.notify();
  }

  private notify(): void {
    for (const s of [...this.subscribers]) s();
  }

  private emitError(error: ServiceError): void {
    this.errorListeners.emit(error);
  }

  private emitMessage(message: ChatMessage): void {
    this.messageListeners.emit(message);
  }

  private emitChanges(before: Conversation | undefined, after: Conversation | undefined): void {
    if (!after) return;
    const old = new Set(before?.messages ?? []);
    for (const m of after.messages) if (!old.has(m)) this.emitMessage(m);
    for (const [id, tool] of Object.entries(after.tools)) {
      if (before?.tools[id] !== tool) this.toolListeners.emit(tool);
    }
  }
}

/** `ws(s)://<this page's host>/ws`: where the edge that served the page listens. */
export function defaultSocketUrl(location: { protocol: string; host: string } = window.location): string {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
}
