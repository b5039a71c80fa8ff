/**
 * Test doubles for the service: a fake transport whose "server side" the test
 * drives frame by frame, a fake API and a switchable network. Used by the
 * unit tests only; not exported from the library entry.
 */
import type { RelayApi } from "./api";
import type { NetworkMonitor } from "./clock";
import type { ClientFrame, History, ServerFrame } from "./protocol";
import type { StoredToken, TokenStore } from "./sessions";
import type { Transport, TransportCallbacks } from "./transport";

export type SentFrame = ClientFrame & Record<string, unknown>;

export class FakeSocket implements Transport {
  readonly sent: SentFrame[] = [];
  callbacks: TransportCallbacks | undefined;
  closedWith: { code: number; reason: string } | undefined;

  constructor(readonly url: string) {}

  open(callbacks: TransportCallbacks): void {
    this.callbacks = callbacks;
  }

  send(data: string): void {
    this.sent.push(JSON.parse(data) as SentFrame);
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
    this.callbacks?.onMessage(JSON.stringify(frame));
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
