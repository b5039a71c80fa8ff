/**
 * `WebSocketService`: one session's live connection to the edge, with no
 * framework in it. It owns the connection state machine, the outbox, resume by
 * `seq`, delta assembly and token refresh; the transport only carries frames,
 * the clock and storage are injected.
 *
 * Connection states and the transitions it emits:
 *
 *     idle ──connect()──> connecting ──join acked──> connected
 *                           │   ^                       │
 *         closed/timeout    │   │ retry timer, online   │ closed, heartbeat lost
 *         (reconnect code)  v   │                       v
 *                         reconnecting <────────────────┘
 *     any ──disconnect() or a "stop" close code──> disconnected ──connect()──> connecting
 *
 * Calling rule: everything is driven by public calls, transport callbacks and
 * the injected clock's timers; none of them throws. Failures reach the caller
 * through `onError` and through the promises of `sendMessage`, `cancelRun` and
 * `cancelTool`.
 */
import type { RelayApi } from "./api";
import { DEFAULT_BACKOFF, type BackoffOptions, backoff } from "./backoff";
import { type Clock, type NetworkMonitor, Timers, browserNetwork, systemClock } from "./clock";
import { ClientCloseCode, ClientErrorCode, ErrorCode, isRetryableError } from "./codes";
import {
  type ChatMessage,
  type Conversation,
  type ToolExecution,
  addLocalMessage,
  conversationFromHistory,
  receiveEvent,
  setMessageState,
} from "./conversation";
import { Listeners } from "./listeners";
import { Outbox, type OutboxEntry } from "./outbox";
import { afterClose, tokenRefreshDelayMs } from "./reconnect";
import {
  type AckFrame,
  type BusyPolicy,
  type ClientFrame,
  type ErrorFrame,
  type ServerFrame,
  type SessionEvent,
  isSessionEvent,
  parseServerFrame,
} from "./protocol";
import type { StoredToken, TokenStore } from "./sessions";
import { ConversationSnapshots } from "./snapshots";
import { type KeyValueStorage, MemoryStorage } from "./storage";
import { type Transport, type TransportFactory, browserTransport } from "./transport";

export type ConnectionState = "idle" | "connecting" | "connected" | "reconnecting" | "disconnected";

export interface ConnectionInfo {
  state: ConnectionState;
  sessionId?: string;
  /** Failed attempts since the last successful join. */
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
  clock?: Clock;
  network?: NetworkMonitor;
  /** Uniform in [0, 1): jitter. */
  random?: () => number;
  /** Unique ids for messages (UUIDs by default). */
  newId?: () => string;
  backoff?: BackoffOptions;
  /** From opening the socket to the join's ack; past it the attempt counts as failed. Default 10 s. */
  connectTimeoutMs?: number;
  /** Heartbeat ping period; default the edge's `heartbeat_ms` from `welcome`, else 15 s. */
  pingIntervalMs?: number;
  /** After a ping, no frame within this long means the link is dead. Default 5 s. */
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

type Pending =
  | { kind: "auth" }
  | { kind: "join" }
  | { kind: "leave" }
  | { kind: "message"; messageId: string }
  | { kind: "cancel"; resolve: (cancelled: boolean) => void; reject: (error: ServiceError) => void };

interface Waiter {
  resolve: (result: SendResult) => void;
  reject: (error: ServiceError) => void;
}


export class WebSocketService {
  private readonly storage: KeyValueStorage;
  private readonly transportFactory: TransportFactory;
  private readonly clock: Clock;
  private readonly network: NetworkMonitor;
  private readonly random: () => number;
  private readonly newId: () => string;
  private readonly outbox: Outbox;
  private readonly snapshots: ConversationSnapshots;
  private readonly backoffOptions: BackoffOptions;
  private readonly connectTimeoutMs: number;
  private readonly pongTimeoutMs: number;
  private readonly restartJitterMs: number;
  private readonly tokenRefreshMarginMs: number;
  private readonly persistDelayMs: number;

  private connection: ConnectionInfo;
  private conversation: Conversation | undefined;
  private snapshot: ServiceSnapshot;

  private transport: Transport | undefined;
  /** Bumped for every socket; callbacks of older sockets are ignored. */
  private generation = 0;
  private frameCounter = 0;
  private joined = false;
  private heartbeatMs: number | undefined;
  /** The edge's `max_frame_bytes` from `welcome`: larger frames would be refused. */
  private maxFrameBytes: number | undefined;
  private retryAfterMs = 0;
  private readonly pending = new Map<string, Pending>();
  /** Message ids sent on the current socket and not yet acked. */
  private readonly inFlight = new Set<string>();
  private readonly waiters = new Map<string, Waiter[]>();
  private resyncing = false;
  private resyncBuffer: SessionEvent[] = [];

  private readonly timers: Timers;
  private unsubscribeNetwork: (() => void) | undefined;
  private removePageHide: (() => void) | undefined;

  private readonly subscribers = new Set<() => void>();
  private readonly messageListeners = new Listeners<[ChatMessage]>();
  private readonly toolListeners = new Listeners<[ToolExecution]>();
  private readonly errorListeners = new Listeners<[ServiceError]>();
  private readonly stateListeners = new Listeners<[ConnectionInfo, ConnectionState]>();

  constructor(private readonly options: WebSocketServiceOptions) {
    this.storage = options.storage ?? new MemoryStorage();
    this.transportFactory = options.transport ?? browserTransport;
    this.clock = options.clock ?? systemClock;
    this.network = options.network ?? browserNetwork();
    this.random = options.random ?? Math.random;
    this.newId = options.newId ?? (() => globalThis.crypto.randomUUID());
    this.backoffOptions = options.backoff ?? DEFAULT_BACKOFF;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    this.pongTimeoutMs = options.pongTimeoutMs ?? 5_000;
    this.restartJitterMs = options.restartJitterMs ?? 1_000;
    this.tokenRefreshMarginMs = options.tokenRefreshMarginMs ?? 60_000;
    this.persistDelayMs = options.persistDelayMs ?? 250;
    this.outbox = new Outbox(this.storage);
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
    this.setConversation(this.snapshots.restore(sessionId, this.outbox.pending(sessionId)));
    this.connection = { ...this.connection, sessionId, attempt: 0 };
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
    const entry: OutboxEntry = {
      sessionId, messageId: this.newId(), text, createdMs: this.clock.now(),
      ...(options.busyPolicy ? { busyPolicy: options.busyPolicy } : {}),
    };
    return this.enqueue(entry);
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
    return this.enqueue({ sessionId, messageId, text: message.text, createdMs: message.createdMs });
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
    this.open();
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
    this.timers.clearAll();
    this.unsubscribeNetwork?.();
    this.unsubscribeNetwork = undefined;
    this.removePageHide?.();
    this.removePageHide = undefined;
    this.rejectWaiters(new ServiceError(ClientErrorCode.DISCONNECTED, "disconnected; the message stays queued"));
    if (this.connection.state !== "idle" && this.connection.state !== "disconnected") {
      this.setConnection({ state: "disconnected", reason: "disconnected by the client" });
    }
  }

  // ------------------------------------------------------------------ connection

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
    this.joined = false;
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
    const transport = this.transportFactory(this.options.url);
    this.transport = transport;
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
    this.joined = false;
    this.timers.clear("connect", "ping", "pong", "refresh");
    const lost = new ServiceError(ClientErrorCode.CONNECTION_LOST, "the connection was lost", true);
    for (const pending of this.pending.values()) if (pending.kind === "cancel") pending.reject(lost);
    this.pending.clear();
    let c = this.conversation;
    for (const messageId of this.inFlight) if (c) c = setMessageState(c, messageId, "queued");
    this.inFlight.clear();
    this.resyncing = false;
    this.resyncBuffer = [];
    if (c !== this.conversation) this.setConversation(c);
  }

  private socketClosed(code: number, reason: string): void {
    this.socketGone();
    const next = afterClose({
      code, attempt: this.connection.attempt, online: this.network.isOnline(), retryAfterMs: this.retryAfterMs,
      backoff: this.backoffOptions, restartJitterMs: this.restartJitterMs, random: this.random,
    });
    this.retryAfterMs = 0;
    switch (next.kind) {
      case "stop":
        this.stop(new ServiceError(ClientErrorCode.CLOSED, `the edge closed the connection (${code}: ${reason})`), code);
        return;
      case "wait_for_network":
        this.setConnection({ state: "reconnecting", retryAt: undefined, closeCode: code, reason: "offline" });
        return;
      case "retry":
        this.timers.set("retry", next.delayMs, () => this.open());
        this.setConnection({
          state: "reconnecting", attempt: this.connection.attempt + 1, retryAt: this.clock.now() + next.delayMs,
          closeCode: code, reason,
        });
    }
  }

  private stop(error: ServiceError, closeCode?: number): void {
    this.dropSocket(ClientCloseCode.CLIENT_DISCONNECT, error.message);
    this.timers.clear("retry");
    this.emitError(error);
    this.rejectWaiters(error);
    this.setConnection({
      state: "disconnected", retryAt: undefined, reason: error.message,
      ...(closeCode !== undefined ? { closeCode } : {}),
    });
  }

  private joinedSession(): void {
    this.joined = true;
    this.timers.clear("connect");
    this.retryAfterMs = 0;
    this.setConnection({
      state: "connected", attempt: 0, retryAt: undefined, closeCode: undefined, reason: undefined, upstream: "available",
    });
    this.scheduleHeartbeat();
    this.flushOutbox();
  }

  // ------------------------------------------------------------------ frames in

  private receiveFrame(data: string): void {
    // Any frame proves the link alive.
    this.timers.clear("pong");
    const frame = parseServerFrame(data);
    if (!frame) {
      this.emitError(new ServiceError(ClientErrorCode.PROTOCOL, `unreadable frame: ${data.slice(0, 120)}`));
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
      case "chat:gap":
        if (frame.session_id === this.connection.sessionId) this.resync();
        return;
      case "upstream":
        if (frame.session_id === this.connection.sessionId) this.setConnection({ upstream: frame.state });
        return;
      default:
        if (isSessionEvent(frame)) this.receiveSessionEvent(frame);
    }
  }

  private receiveAck(ack: AckFrame): void {
    const pending = this.pending.get(ack.ref);
    if (!pending) return;
    this.pending.delete(ack.ref);
    switch (pending.kind) {
      case "auth": {
        const sessionId = this.connection.sessionId;
        if (sessionId && typeof ack.expires_at === "number") this.scheduleRefresh(sessionId, ack.expires_at);
        if (!this.joined && sessionId && this.conversation) {
          this.sendFrame({
            type: "join", id: this.track({ kind: "join" }), session_id: sessionId,
            after_seq: this.conversation.lastSeq, deltas: "stream", tool_output: "stream",
          });
        }
        return;
      }
      case "join":
        return this.joinedSession();
      case "leave":
        return;
      case "message":
        return this.accepted(pending.messageId, {
          messageId: pending.messageId, queued: ack.queued === true, duplicate: ack.duplicate === true,
          ...(ack.run_id ? { runId: ack.run_id } : {}),
          ...(typeof ack.seq === "number" ? { seq: ack.seq } : {}),
        });
      case "cancel":
        return pending.resolve(ack.cancelled !== false);
    }
  }

  private receiveError(frame: ErrorFrame): void {
    const retryable = isRetryableError(frame.code, frame.retryable);
    const error = new ServiceError(frame.code, frame.message ?? frame.code, retryable, frame.retry_after_ms);
    if (frame.retry_after_ms) this.retryAfterMs = Math.max(this.retryAfterMs, frame.retry_after_ms);
    if (frame.code === "upstream_unavailable") this.setConnection({ upstream: "unavailable" });
    const pending = frame.ref ? this.pending.get(frame.ref) : undefined;
    if (frame.ref) this.pending.delete(frame.ref);
    this.emitError(error);
    if (!pending) return;
    switch (pending.kind) {
      case "auth":
        if (this.joined) return; // An in-band refresh was refused; the current token still holds.
        if (retryable) this.socketFailed(ClientCloseCode.CONNECT_TIMEOUT, error.message);
        else this.stop(new ServiceError(ClientErrorCode.TOKEN, `the edge refused the token: ${error.message}`));
        return;
      case "join":
        if (retryable) this.socketFailed(ClientCloseCode.CONNECT_TIMEOUT, error.message);
        else this.stop(error);
        return;
      case "leave":
        return;
      case "message":
        return this.messageRefused(pending.messageId, error);
      case "cancel":
        return pending.reject(error);
    }
  }

  private receiveSessionEvent(event: SessionEvent): void {
    if (event.session_id !== this.connection.sessionId || !this.conversation) return;
    if (this.resyncing) {
      this.resyncBuffer.push(event);
      return;
    }
    const received = receiveEvent(this.conversation, event);
    if (received.outcome === "duplicate") return;
    if (received.outcome === "gap") {
      this.resyncBuffer.push(event);
      this.resync();
      return;
    }
    const previous = this.conversation;
    this.setConversation(received.conversation);
    this.schedulePersist();
    if (event.type === "chat:accepted") {
      this.accepted(event.message_id, {
        messageId: event.message_id, queued: event.queued === true, duplicate: false, seq: event.seq,
        ...(event.run_id ? { runId: event.run_id } : {}),
      });
    }
    this.emitChanges(previous, this.conversation);
  }

  // ------------------------------------------------------------------ resync after a gap

  /**
   * Events were lost (a `chat:gap`, or a hole in `seq`): reload history, then
   * apply what arrived meanwhile. If that still leaves a hole, reconnect and
   * join after the history's `as_of_seq`, which replays the rest.
   */
  private resync(): void {
    const sessionId = this.connection.sessionId;
    const token = sessionId ? this.options.tokens.get(sessionId) : undefined;
    if (this.resyncing || !sessionId || !token) return;
    this.resyncing = true;
    const generation = this.generation;
    this.options.api.getMessages(sessionId, token.token).then(
      (history) => {
        if (generation !== this.generation || !this.resyncing) return;
        const buffered = this.resyncBuffer;
        this.resyncing = false;
        this.resyncBuffer = [];
        let c = conversationFromHistory(sessionId, history);
        for (const m of this.conversation?.messages ?? []) {
          if (m.role === "user" && m.state !== "sent") c = addLocalMessage(c, m);
        }
        this.setConversation(c);
        this.schedulePersist();
        for (const event of buffered) {
          if (!this.conversation) return;
          const received = receiveEvent(this.conversation, event);
          if (received.outcome === "gap") {
            this.socketFailed(ClientCloseCode.CONNECT_TIMEOUT, "resuming after a gap");
            return;
          }
          this.setConversation(received.conversation);
        }
        for (const message of this.conversation?.messages ?? []) this.emitMessage(message);
      },
      (error: unknown) => {
        if (generation !== this.generation) return;
        this.emitError(new ServiceError(ClientErrorCode.HISTORY, `reloading history failed: ${String(error)}`, true));
        this.socketFailed(ClientCloseCode.CONNECT_TIMEOUT, "reloading history failed");
      },
    );
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

  private enqueue(entry: OutboxEntry): Promise<SendResult> {
    const promise = this.waitFor(entry.messageId);
    if (!this.outbox.add(entry)) {
      this.emitError(new ServiceError("storage", "the outbox could not be saved; a reload would lose this message"));
    }
    let c = this.conversation as Conversation;
    c = addLocalMessage(c, { id: entry.messageId, text: entry.text, state: "queued", createdMs: entry.createdMs });
    c = setMessageState(c, entry.messageId, "queued");
    this.setConversation(c);
    this.schedulePersist();
    const message = this.conversation?.messages.find((m) => m.id === entry.messageId);
    if (message) this.emitMessage(message);
    if (this.joined) this.sendChat(entry);
    return promise;
  }

  private flushOutbox(): void {
    const sessionId = this.connection.sessionId;
    if (!sessionId || !this.joined) return;
    for (const entry of this.outbox.pending(sessionId)) {
      if (!this.inFlight.has(entry.messageId)) this.sendChat(entry);
    }
  }

  private sendChat(entry: OutboxEntry): void {
    this.inFlight.add(entry.messageId);
    const frameId = this.track({ kind: "message", messageId: entry.messageId });
    const frame: ClientFrame = {
      type: "chat:message", id: frameId,
      session_id: entry.sessionId, message_id: entry.messageId, text: entry.text,
      ...(entry.busyPolicy ? { busy_policy: entry.busyPolicy } : {}),
      ...(this.options.traceMessages === false ? {} : { traceparent: this.traceparent() }),
    };
    const data = JSON.stringify(frame);
    const bytes = new TextEncoder().encode(data).length;
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
    if (this.conversation) {
      this.setConversation(setMessageState(this.conversation, entry.messageId, "sending"));
      this.emitMessageById(entry.messageId);
    }
  }

  private accepted(messageId: string, result: SendResult): void {
    this.inFlight.delete(messageId);
    const sessionId = this.connection.sessionId;
    if (sessionId) this.outbox.remove(sessionId, messageId);
    if (this.conversation) {
      const before = this.conversation;
      this.setConversation(setMessageState(this.conversation, messageId, "sent"));
      if (before !== this.conversation) this.emitMessageById(messageId);
    }
    const waiters = this.waiters.get(messageId) ?? [];
    this.waiters.delete(messageId);
    for (const w of waiters) w.resolve(result);
  }

  private messageRefused(messageId: string, error: ServiceError): void {
    this.inFlight.delete(messageId);
    const sessionId = this.connection.sessionId;
    if (!sessionId || !this.conversation) return;
    if (error.code === ErrorCode.UNAUTHENTICATED) {
      // The token lapsed under us: renew it, then the outbox goes again.
      const token = this.options.tokens.get(sessionId);
      if (token) void this.refreshToken(sessionId, token).then((fresh) => fresh && this.reauth(fresh));
      this.setConversation(setMessageState(this.conversation, messageId, "queued"));
      return;
    }
    if (error.retryable) {
      this.setConversation(setMessageState(this.conversation, messageId, "queued"));
      this.timers.set("outbox", Math.max(error.retryAfterMs ?? 0, backoff(1, this.backoffOptions, this.random)), () =>
        this.flushOutbox(),
      );
      return;
    }
    this.outbox.remove(sessionId, messageId);
    this.setConversation(setMessageState(this.conversation, messageId, "failed", error.message));
    this.emitMessageById(messageId);
    const waiters = this.waiters.get(messageId) ?? [];
    this.waiters.delete(messageId);
    for (const w of waiters) w.reject(error);
  }

  private rejectWaiters(error: ServiceError): void {
    const all = [...this.waiters.values()].flat();
    this.waiters.clear();
    for (const w of all) w.reject(error);
  }

  private request(build: (id: string, sessionId: string) => ClientFrame): Promise<boolean> {
    const sessionId = this.connection.sessionId;
    if (!sessionId || !this.joined) {
      return Promise.reject(new ServiceError(ClientErrorCode.CONNECTION_LOST, "not connected", true));
    }
    return new Promise<boolean>((resolve, reject) => {
      this.sendFrame(build(this.track({ kind: "cancel", resolve, reject }), sessionId));
    });
  }

  // ------------------------------------------------------------------ heartbeat

  private scheduleHeartbeat(): void {
    const interval = this.options.pingIntervalMs ?? this.heartbeatMs ?? 15_000;
    this.timers.set("ping", interval, () => {
      this.ping();
      this.scheduleHeartbeat();
    });
  }

  /** Send a ping; no frame within the pong timeout means the link is dead. */
  private ping(): void {
    if (!this.transport) return;
    this.sendFrame({ type: "ping", id: this.nextFrameId("p"), ts: this.clock.now() });
    if (!this.timers.has("pong")) {
      this.timers.set("pong", this.pongTimeoutMs, () =>
        this.socketFailed(ClientCloseCode.HEARTBEAT_TIMEOUT, "no heartbeat reply"),
      );
    }
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

  /** Authenticate again on the open socket with a fresh token. */
  private reauth(token: StoredToken): void {
    if (!this.transport || !this.joined) return;
    this.sendFrame({ type: "auth", id: this.track({ kind: "auth" }), token: token.token });
    this.flushOutbox();
  }

  // ------------------------------------------------------------------ environment

  private listenToEnvironment(): void {
    if (!this.unsubscribeNetwork) this.unsubscribeNetwork = this.network.subscribe((online) => this.networkChanged(online));
    if (!this.removePageHide && typeof window !== "undefined") {
      const flush = (): void => this.flushPersist();
      const visible = (): void => {
        if (document.visibilityState === "visible") this.becameVisible();
      };
      window.addEventListener("pagehide", flush);
      document.addEventListener("visibilitychange", visible);
      this.removePageHide = () => {
        window.removeEventListener("pagehide", flush);
        document.removeEventListener("visibilitychange", visible);
      };
    }
  }

  /**
   * A hidden tab's timers are throttled (to once a minute after a while) and a
   * phone may have slept: on coming back, check the link at once, and do not
   * wait out a retry whose time has passed.
   */
  private becameVisible(): void {
    if (this.connection.state === "connected") this.ping();
    const retryAt = this.connection.retryAt;
    if (this.connection.state === "reconnecting" && retryAt !== undefined && retryAt <= this.clock.now()) {
      this.open();
    }
  }

  private networkChanged(online: boolean): void {
    this.setConnection({ online });
    if (online && this.connection.state === "reconnecting") {
      this.open();
    } else if (!online && this.connection.state === "reconnecting") {
      this.timers.clear("retry");
      this.setConnection({ retryAt: undefined, reason: "offline" });
    } else if (!online && this.connection.state === "connecting") {
      // An attempt started just before the network went away would hang until
      // the connection timeout: give it up and wait for the network instead.
      this.socketFailed(ClientCloseCode.CONNECT_TIMEOUT, "offline");
    } else if (!online && this.connection.state === "connected") {
      // The socket may be dead without knowing it: check now rather than at the next ping.
      this.ping();
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

  private sendFrame(frame: ClientFrame): void {
    this.transport?.send(JSON.stringify(frame));
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

  private emitMessageById(messageId: string): void {
    const message = this.conversation?.messages.find((m) => m.id === messageId);
    if (message) this.emitMessage(message);
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
