import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { ConnectionState, WebSocketServiceOptions } from "./service";
import { WebSocketService } from "./service";
import { MemoryStorage, StorageKey } from "./storage";
import { FakeApi, FakeNetwork, FakeSocket, FakeTokens } from "./testing";
import { type Wire, jsonCodec } from "./codec";
import { protoCodec } from "./protoCodec";

const T0 = 1_700_000_000_000;
const SID = "s_1";

/** The wire under test: service.proto.test.ts runs this whole file again with "proto". */
const WIRE = (globalThis as { __AGENT_RELAY_TEST_WIRE__?: Wire }).__AGENT_RELAY_TEST_WIRE__ ?? "json";

function setup(overrides: Partial<WebSocketServiceOptions> & { storage?: MemoryStorage } = {}) {
  const sockets: FakeSocket[] = [];
  const storage = overrides.storage ?? new MemoryStorage();
  const tokens = new FakeTokens();
  tokens.set(SID, { token: "t_1", expiresAt: 4_000_000_000 });
  const api = new FakeApi();
  const network = new FakeNetwork();
  let ids = 0;
  const service = new WebSocketService({
    url: "ws://edge/ws",
    api,
    tokens,
    storage,
    network,
    codec: WIRE === "proto" ? protoCodec : jsonCodec,
    transport: (url, protocol) => {
      const socket = new FakeSocket(url, protocol);
      sockets.push(socket);
      return socket;
    },
    random: () => 0.5,
    newId: () => `m_${++ids}`,
    traceMessages: false,
    ...overrides,
  });
  const states: ConnectionState[] = [];
  service.onStateChange((info) => states.push(info.state));
  const last = (): FakeSocket => {
    const socket = sockets[sockets.length - 1];
    if (!socket) throw new Error("no socket opened");
    return socket;
  };
  return { service, sockets, storage, tokens, api, network, states, last };
}

function event(seq: number, fields: Record<string, unknown>): Record<string, unknown> {
  return { session_id: SID, seq, run_id: "r_1", time_unix_ms: T0, ...fields };
}

beforeEach(() => {
  vi.useFakeTimers({ now: T0 });
});

afterEach(() => {
  vi.useRealTimers();
});

describe("connection states", () => {
  it("goes idle -> connecting -> connected through auth and join", () => {
    const { service, last, states } = setup();
    expect(service.getSnapshot().connection.state).toBe("idle");
    service.connect(SID);
    expect(states).toEqual(["connecting"]);
    const socket = last();
    socket.accept();
    expect(socket.lastOf("auth").token).toBe("t_1");
    expect(socket.framesOf("join")).toHaveLength(0); // join waits for the auth ack
    socket.push({ type: "ack", ref: socket.lastOf("auth").id, expires_at: 4_000_000_000 });
    const join = socket.lastOf("join");
    expect(join).toMatchObject({ session_id: SID, after_seq: 0, deltas: "stream", tool_output: "stream" });
    expect(states).toEqual(["connecting"]);
    socket.push({ type: "ack", ref: join.id, session_id: SID, head_seq: 0 });
    expect(states).toEqual(["connecting", "connected"]);
  });

  it("reports the agent service's state as the edge tells it, while the socket stays connected", () => {
    const { service, last } = setup();
    service.connect(SID);
    last().handshake();
    expect(service.getSnapshot().connection).toMatchObject({ state: "connected", upstream: "available" });
    last().push({ type: "error", code: "upstream_unavailable", session_id: SID, message: "gone", retryable: true });
    last().push({ type: "upstream", session_id: SID, state: "unavailable" });
    expect(service.getSnapshot().connection).toMatchObject({ state: "connected", upstream: "unavailable" });
    last().push({ type: "upstream", session_id: "s_other", state: "available" });
    expect(service.getSnapshot().connection.upstream).toBe("unavailable");
    last().push({ type: "upstream", session_id: SID, state: "available" });
    expect(service.getSnapshot().connection).toMatchObject({ state: "connected", upstream: "available" });
  });

  it("connected -> reconnecting on a dropped socket, then connecting when the backoff timer fires", () => {
    const { service, last, states, sockets } = setup();
    service.connect(SID);
    last().handshake();
    last().drop(1006);
    const info = service.getSnapshot().connection;
    expect(info).toMatchObject({ state: "reconnecting", attempt: 1, closeCode: 1006 });
    // random() = 0.5 and attempt 0: half of the 250 ms base (codes.json).
    expect(info.retryAt).toBe(T0 + 125);
    vi.advanceTimersByTime(124);
    expect(sockets).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(sockets).toHaveLength(2);
    last().handshake();
    expect(states).toEqual(["connecting", "connected", "reconnecting", "connecting", "connected"]);
    expect(service.getSnapshot().connection.attempt).toBe(0);
  });

  it("backs off exponentially while attempts keep failing", () => {
    const { service, last } = setup();
    service.connect(SID);
    const delays: number[] = [];
    for (let i = 0; i < 8; i++) {
      last().drop(1006);
      const info = service.getSnapshot().connection;
      delays.push((info.retryAt ?? 0) - Date.now());
      vi.advanceTimersByTime(info.retryAt! - Date.now());
    }
    // Full jitter with random() = 0.5: half of min(15 s, 250 ms * 2^n), the Python client's policy.
    expect(delays).toEqual([125, 250, 500, 1000, 2000, 4000, 7500, 7500]);
  });

  it("connecting -> reconnecting when the join does not finish within the connection timeout", () => {
    const { service, last, states } = setup({ connectTimeoutMs: 3000 });
    service.connect(SID);
    const socket = last();
    socket.accept(); // auth sent, never acked
    vi.advanceTimersByTime(2999);
    expect(states).toEqual(["connecting"]);
    vi.advanceTimersByTime(1);
    expect(socket.closedWith?.code).toBe(4000);
    expect(states).toEqual(["connecting", "reconnecting"]);
  });

  it.each([1000, 1003, 1007, 1008, 1009, 1010, 4503, 4509, 4777])("stops on close code %i (no reconnect)", (code) => {
    const { service, last, sockets, states } = setup();
    const errors: string[] = [];
    service.onError((e) => errors.push(e.code));
    service.connect(SID);
    last().handshake();
    last().drop(code, "bye");
    expect(states).toEqual(["connecting", "connected", "disconnected"]);
    expect(service.getSnapshot().connection.closeCode).toBe(code);
    expect(errors).toContain("closed");
    vi.advanceTimersByTime(10 * 60_000);
    expect(sockets).toHaveLength(1);
  });

  it("renews the token after 4501 and reconnects with it at once; a second refusal stops", async () => {
    const { service, last, sockets, api, states } = setup();
    service.connect(SID);
    last().handshake();
    last().drop(4501, "token expired");
    await vi.advanceTimersByTimeAsync(0);
    expect(api.refreshCalls).toEqual(["t_1"]);
    expect(sockets).toHaveLength(2);
    last().accept();
    expect(last().lastOf("auth").token).toBe("t_fresh");
    last().drop(4501, "still refused");
    await vi.advanceTimersByTimeAsync(60_000);
    expect(sockets).toHaveLength(2);
    expect(states.at(-1)).toBe("disconnected");
  });

  it.each([1001, 1011, 1013, 1014, 3000, 4000, 4001, 4499])("reconnects after close code %i", (code) => {
    const { service, last, sockets } = setup();
    service.connect(SID);
    last().handshake();
    last().drop(code);
    expect(service.getSnapshot().connection.state).toBe("reconnecting");
    vi.advanceTimersByTime(500);
    expect(sockets).toHaveLength(2);
  });

  it("reconnects within the restart jitter after 1012 (edge draining), whatever the attempt count", () => {
    const { service, last } = setup({ restartJitterMs: 1000, random: () => 0.99 });
    service.connect(SID);
    for (let i = 0; i < 5; i++) {
      last().drop(1006);
      vi.advanceTimersByTime(service.getSnapshot().connection.retryAt! - Date.now());
    }
    expect(service.getSnapshot().connection.attempt).toBe(5);
    last().drop(1012);
    const info = service.getSnapshot().connection;
    expect((info.retryAt ?? Infinity) - Date.now()).toBe(990);
  });

  it("waits at least the server's retry_after_ms before reconnecting", () => {
    const { service, last } = setup();
    service.connect(SID);
    last().handshake();
    last().push({ type: "error", code: "rate_limited", message: "slow down", retryable: true, retry_after_ms: 7000 });
    last().drop(1013);
    expect((service.getSnapshot().connection.retryAt ?? 0) - Date.now()).toBe(7000);
  });

  it("disconnect() from any state clears every timer and listener", () => {
    const { service, last, network, states } = setup();
    service.connect(SID);
    last().handshake();
    expect(vi.getTimerCount()).toBeGreaterThan(0); // heartbeat
    expect(network.listenerCount).toBe(1);
    service.disconnect();
    expect(states).toEqual(["connecting", "connected", "disconnected"]);
    expect(last().closedWith?.code).toBe(1000);
    expect(vi.getTimerCount()).toBe(0);
    expect(network.listenerCount).toBe(0);
    // ... also while reconnecting.
    service.connect(SID);
    last().drop(1006);
    service.disconnect();
    expect(vi.getTimerCount()).toBe(0);
    expect(states.slice(-3)).toEqual(["connecting", "reconnecting", "disconnected"]);
    // ... and disconnected -> connecting works again.
    service.connect(SID);
    expect(states.at(-1)).toBe("connecting");
    service.disconnect();
  });

  it("connecting -> disconnected when the edge refuses the token", () => {
    const { service, last, sockets, states } = setup();
    const errors: string[] = [];
    service.onError((e) => errors.push(e.code));
    service.connect(SID);
    last().accept();
    last().push({ type: "error", ref: last().lastOf("auth").id, code: "unauthenticated", message: "token expired" });
    expect(states).toEqual(["connecting", "disconnected"]);
    expect(errors).toEqual(["unauthenticated", "token"]);
    expect(last().closedWith?.code).toBe(1000);
    vi.advanceTimersByTime(60_000);
    expect(sockets).toHaveLength(1);
  });

  it("retries a join refused for now on the same socket, and stops when the join is forbidden", () => {
    // The Python client's rule (clients/spec/gap.json): a retryable refusal joins again after
    // retry_after_ms (at least 500 ms) instead of reconnecting; a final one stops.
    const { service, last, states, sockets } = setup();
    service.connect(SID);
    last().accept();
    last().push({ type: "ack", ref: last().lastOf("auth").id });
    last().push({ type: "error", ref: last().lastOf("join").id, code: "upstream_unavailable", retryable: true });
    expect(states).toEqual(["connecting"]);
    expect(last().framesOf("join")).toHaveLength(1);
    vi.advanceTimersByTime(500);
    expect(last().framesOf("join")).toHaveLength(2);
    last().push({ type: "error", ref: last().lastOf("join").id, code: "forbidden", message: "not your session" });
    expect(states).toEqual(["connecting", "disconnected"]);
    expect(service.getSnapshot().connection.reason).toBe("not your session");
    expect(sockets).toHaveLength(1);
  });

  it("ignores a late close from a socket it already replaced", () => {
    const { service, last, sockets } = setup();
    service.connect(SID);
    const first = last();
    first.accept();
    vi.advanceTimersByTime(10_000); // connect timeout: first is dropped, a retry is scheduled
    vi.advanceTimersByTime(1_000);
    expect(sockets).toHaveLength(2);
    last().handshake();
    first.callbacks?.onClose(1006, ""); // detached: nothing happens
    expect(service.getSnapshot().connection.state).toBe("connected");
  });
});

describe("heartbeat", () => {
  it("pings every heartbeat_ms and drops a link silent for two intervals (the Python client's rule)", () => {
    const { service, last, states } = setup();
    service.connect(SID);
    last().handshake(); // welcome says heartbeat_ms 15000
    vi.advanceTimersByTime(15_000);
    const ping = last().lastOf("ping");
    expect(ping.ts).toBe(Date.now());
    last().push({ type: "pong", ref: ping.id, ts: ping.ts }); // the last frame: at 15 s
    vi.advanceTimersByTime(30_000); // ticks at 30 s and 45 s: silent 15 s, then exactly 30 s
    expect(service.getSnapshot().connection.state).toBe("connected");
    vi.advanceTimersByTime(15_000); // tick at 60 s: silent 45 s, more than two intervals
    expect(last().closedWith?.code).toBe(4001);
    expect(states.at(-1)).toBe("reconnecting");
  });

  it("counts any frame as a sign of life", () => {
    const { service, last } = setup({ pingIntervalMs: 1000 });
    service.connect(SID);
    last().handshake();
    for (let i = 0; i < 20; i++) {
      vi.advanceTimersByTime(1000);
      last().push(event(i + 1, { type: "chat:response", text: "x" }));
    }
    expect(service.getSnapshot().connection.state).toBe("connected");
  });
});

describe("offline and online", () => {
  it("stays quiet while offline and reconnects as soon as the network is back", () => {
    const { service, last, sockets, network, states } = setup();
    service.connect(SID);
    last().handshake();
    network.set(false); // the socket cannot carry anything now: closed at once
    expect(last().closedWith?.code).toBe(4001);
    expect(service.getSnapshot().connection).toMatchObject({ state: "reconnecting", online: false });
    expect(service.getSnapshot().connection.retryAt).toBeUndefined();
    vi.advanceTimersByTime(5 * 60_000);
    expect(sockets).toHaveLength(1);
    network.set(true);
    expect(sockets).toHaveLength(2);
    expect(states.slice(-2)).toEqual(["reconnecting", "connecting"]);
  });

  it("gives up an attempt in flight when the network goes away, and waits for it", () => {
    const { service, last, sockets, network, states } = setup();
    service.connect(SID);
    last().accept(); // auth sent, no reply yet
    network.set(false);
    expect(last().closedWith?.code).toBe(4000);
    expect(service.getSnapshot().connection).toMatchObject({ state: "reconnecting", online: false });
    vi.advanceTimersByTime(60_000);
    expect(sockets).toHaveLength(1);
    network.set(true);
    expect(sockets).toHaveLength(2);
    expect(states).toEqual(["connecting", "reconnecting", "connecting"]);
  });

  it("cancels a pending retry when the network goes away", () => {
    const { service, last, sockets, network } = setup();
    service.connect(SID);
    last().drop(1006);
    network.set(false);
    vi.advanceTimersByTime(60_000);
    expect(sockets).toHaveLength(1);
    network.set(true);
    expect(sockets).toHaveLength(2);
  });
});

describe("page visibility", () => {
  it("checks the link at once when the tab becomes visible again", () => {
    const { service, last } = setup();
    service.connect(SID);
    last().handshake();
    const pings = last().framesOf("ping").length;
    document.dispatchEvent(new Event("visibilitychange"));
    expect(last().framesOf("ping")).toHaveLength(pings + 1); // alive so far: pinged at once
    // A throttled tab: its timers did not run, the link stayed silent past two intervals.
    vi.setSystemTime(Date.now() + 31_000);
    document.dispatchEvent(new Event("visibilitychange"));
    expect(last().closedWith?.code).toBe(4001);
    expect(service.getSnapshot().connection.state).toBe("reconnecting");
    service.disconnect();
  });

  it("does not wait out a retry whose time passed while the tab was hidden", () => {
    const { service, last, sockets } = setup();
    service.connect(SID);
    last().drop(1006);
    // A hidden tab's timer ran late: the clock moved on but the timer has not fired.
    vi.setSystemTime(Date.now() + 60_000);
    document.dispatchEvent(new Event("visibilitychange"));
    expect(sockets).toHaveLength(2);
    service.disconnect();
  });
});

describe("outbox", () => {
  it("queues a message sent while disconnected and delivers it once connected", async () => {
    const { service, last } = setup();
    service.connect(SID);
    const sent = service.sendMessage("hello");
    expect(service.getSnapshot().conversation?.messages[0]).toMatchObject({ text: "hello", state: "queued" });
    last().handshake();
    const frame = last().lastOf("chat:message");
    expect(frame).toMatchObject({ message_id: "m_1", text: "hello", session_id: SID });
    expect(service.getSnapshot().conversation?.messages[0]?.state).toBe("sending");
    last().ackMessages(7);
    await expect(sent).resolves.toMatchObject({ messageId: "m_1", seq: 7, duplicate: false });
    expect(service.getSnapshot().conversation?.messages[0]?.state).toBe("sent");
  });

  it("survives a page reload: a new service on the same storage sends it with the same id", async () => {
    const storage = new MemoryStorage();
    const first = setup({ storage });
    first.service.connect(SID);
    void first.service.sendMessage("survive me").catch(() => undefined);
    expect(JSON.parse(storage.getItem(StorageKey.outbox) ?? "[]")).toHaveLength(1);
    // The page goes away without ever connecting.
    const second = setup({ storage });
    second.service.connect(SID);
    expect(second.service.getSnapshot().conversation?.messages[0]).toMatchObject({
      id: "m_1", text: "survive me", state: "queued",
    });
    second.last().handshake();
    expect(second.last().framesOf("chat:message").map((f) => f.message_id)).toEqual(["m_1"]);
    second.last().ackMessages();
    expect(JSON.parse(storage.getItem(StorageKey.outbox) ?? "[]")).toEqual([]);
  });

  it("resends after a lost ack under the same id, and settles once on the server's duplicate ack", async () => {
    const { service, last } = setup();
    service.connect(SID);
    last().handshake();
    const sent = service.sendMessage("once");
    expect(last().framesOf("chat:message")).toHaveLength(1);
    last().drop(1006); // the ack is lost
    expect(service.getSnapshot().conversation?.messages[0]?.state).toBe("queued");
    vi.advanceTimersByTime(1000);
    last().handshake();
    const resent = last().framesOf("chat:message");
    expect(resent.map((f) => f.message_id)).toEqual(["m_1"]);
    last().push({ type: "ack", ref: resent[0]!.id, message_id: "m_1", seq: 1, duplicate: true, queued: false });
    await expect(sent).resolves.toMatchObject({ messageId: "m_1", duplicate: true });
    // Nothing left to send on the next connection.
    last().drop(1006);
    vi.advanceTimersByTime(1000);
    last().handshake();
    expect(last().framesOf("chat:message")).toHaveLength(0);
  });

  it("takes the replayed chat:accepted event as delivery and does not send the message again", async () => {
    const storage = new MemoryStorage();
    const first = setup({ storage });
    first.service.connect(SID);
    first.last().handshake();
    void first.service.sendMessage("hi").catch(() => undefined);
    // The server stored it, but the page reloaded before the ack.
    const second = setup({ storage });
    second.service.connect(SID);
    const socket = second.last();
    socket.accept();
    socket.push({ type: "ack", ref: socket.lastOf("auth").id });
    socket.push(event(1, { type: "chat:accepted", message_id: "m_1", text: "hi" }));
    socket.push({ type: "ack", ref: socket.lastOf("join").id, head_seq: 1 });
    expect(socket.framesOf("chat:message")).toHaveLength(0);
    const messages = second.service.getSnapshot().conversation?.messages ?? [];
    expect(messages.map((m) => [m.id, m.state])).toEqual([["m_1", "sent"]]);
  });

  it("marks a refused message failed, and retry() sends it again under the same id", async () => {
    const { service, last } = setup();
    service.connect(SID);
    last().handshake();
    const sent = service.sendMessage("bad");
    const frame = last().lastOf("chat:message");
    last().push({ type: "error", ref: frame.id, code: "invalid_field", message: "text too long", retryable: false });
    await expect(sent).rejects.toMatchObject({ code: "invalid_field" });
    expect(service.getSnapshot().conversation?.messages[0]).toMatchObject({ state: "failed", error: "text too long" });
    const retried = service.retry("m_1");
    expect(last().lastOf("chat:message").message_id).toBe("m_1");
    const again = service.retry("m_1"); // already on its way: no second frame
    expect(last().framesOf("chat:message")).toHaveLength(2);
    last().push({ type: "ack", ref: last().lastOf("chat:message").id, message_id: "m_1", seq: 1 });
    await expect(retried).resolves.toMatchObject({ messageId: "m_1" });
    await expect(again).resolves.toMatchObject({ messageId: "m_1" });
  });

  it("fails a message larger than the edge's max_frame_bytes without sending it", async () => {
    const { service, last } = setup();
    service.connect(SID);
    last().accept({ max_frame_bytes: 1000 });
    last().push({ type: "ack", ref: last().lastOf("auth").id });
    last().push({ type: "ack", ref: last().lastOf("join").id });
    const sent = service.sendMessage("é".repeat(600)); // 1200 bytes of UTF-8
    await expect(sent).rejects.toMatchObject({ code: "frame_too_large" });
    expect(last().framesOf("chat:message")).toHaveLength(0);
    expect(service.getSnapshot().conversation?.messages[0]?.state).toBe("failed");
    void service.sendMessage("short").catch(() => undefined);
    expect(last().framesOf("chat:message")).toHaveLength(1);
  });

  it("keeps a retryable refusal in the outbox and sends it again after retry_after_ms", () => {
    const { service, last } = setup();
    service.connect(SID);
    last().handshake();
    void service.sendMessage("later");
    const frame = last().lastOf("chat:message");
    last().push({ type: "error", ref: frame.id, code: "rate_limited", retryable: true, retry_after_ms: 3000 });
    expect(service.getSnapshot().conversation?.messages[0]?.state).toBe("queued");
    vi.advanceTimersByTime(2999);
    expect(last().framesOf("chat:message")).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(last().framesOf("chat:message")).toHaveLength(2);
  });

  it("sends a message refused `overloaded` again after retry_after_ms, with the same message id", () => {
    const { service, last } = setup();
    service.connect(SID);
    last().handshake();
    void service.sendMessage("under load");
    const first = last().lastOf("chat:message");
    last().push({ type: "error", ref: first.id, code: "overloaded", retryable: true, retry_after_ms: 1800 });
    expect(service.getSnapshot().conversation?.messages[0]?.state).toBe("queued");
    vi.advanceTimersByTime(1799);
    expect(last().framesOf("chat:message")).toHaveLength(1);
    vi.advanceTimersByTime(1);
    const frames = last().framesOf("chat:message");
    expect(frames).toHaveLength(2);
    expect(frames[1]?.message_id).toBe(first.message_id);
  });

  it("sends a message whose outcome is unknown (`upstream_unavailable`) again with the same id", () => {
    const { service, last } = setup();
    service.connect(SID);
    last().handshake();
    void service.sendMessage("maybe accepted");
    const first = last().lastOf("chat:message");
    last().push({ type: "error", ref: first.id, code: "upstream_unavailable", retryable: true, retry_after_ms: 1000 });
    vi.advanceTimersByTime(1000);
    const frames = last().framesOf("chat:message");
    expect(frames.map((f) => f.message_id)).toEqual([first.message_id, first.message_id]);
  });
});

describe("resume, dedup and gaps", () => {
  it("ignores events at or below the last processed seq and rejoins after it", () => {
    const { service, last } = setup();
    service.connect(SID);
    last().handshake();
    last().push(event(1, { type: "chat:run_started", assistant_message_id: "a_1" }));
    last().push(event(3, { type: "chat:response", from_seq: 2, text: "Hello " }));
    last().push(event(4, { type: "chat:response", text: "world" }));
    last().drop(1006);
    vi.advanceTimersByTime(1000);
    const socket = last();
    socket.accept();
    socket.push({ type: "ack", ref: socket.lastOf("auth").id });
    expect(socket.lastOf("join").after_seq).toBe(4);
    // An edge that replays too much is harmless.
    socket.push(event(3, { type: "chat:response", from_seq: 2, text: "Hello " }));
    socket.push(event(4, { type: "chat:response", text: "world" }));
    socket.push(event(5, { type: "chat:response", text: "!" }));
    const messages = service.getSnapshot().conversation?.messages ?? [];
    expect(messages.map((m) => m.text)).toEqual(["Hello world!"]);
    expect(service.getSnapshot().conversation?.lastSeq).toBe(5);
  });

  it("persists the last seq with the conversation, so a reload resumes after it", () => {
    const storage = new MemoryStorage();
    const first = setup({ storage });
    first.service.connect(SID);
    first.last().handshake();
    first.last().push(event(1, { type: "chat:run_started" }));
    first.last().push(event(2, { type: "chat:response", text: "kept" }));
    vi.advanceTimersByTime(300); // the persist delay
    const second = setup({ storage });
    second.service.connect(SID);
    second.last().accept();
    second.last().push({ type: "ack", ref: second.last().lastOf("auth").id });
    expect(second.last().lastOf("join").after_seq).toBe(2);
    expect(second.service.getSnapshot().conversation?.messages[0]?.text).toBe("kept");
  });

  it("reloads history on chat:gap, then leaves and joins after its as_of_seq (the Python client's rule)", async () => {
    const { service, last, api } = setup();
    api.history = {
      as_of_seq: 950,
      messages: [
        { message_id: "u_1", role: "ROLE_USER", text: "old question", status: "MESSAGE_STATUS_COMPLETE" },
        { message_id: "a_1", role: "ROLE_ASSISTANT", text: "old answer", run_id: "r_0", status: "MESSAGE_STATUS_COMPLETE" },
        { message_id: "u_2", role: "ROLE_USER", text: "go on", run_id: "r_1" },
        { message_id: "a_2", role: "ROLE_ASSISTANT", text: "partial ", run_id: "r_1", status: "MESSAGE_STATUS_STREAMING" },
      ],
    };
    service.connect(SID);
    last().handshake();
    last().push({ type: "chat:gap", session_id: SID, after_seq: 0, first_seq: 900 });
    // Replay goes on from 900 while history loads: dropped, the rejoin replays what follows.
    last().push(event(950, { type: "chat:response", text: "partial " }));
    await vi.advanceTimersByTimeAsync(0);
    expect(api.historyCalls).toBe(1);
    expect(last().lastOf("leave").session_id).toBe(SID);
    expect(last().lastOf("join").after_seq).toBe(950);
    last().push(event(950, { type: "chat:response", text: "partial " })); // a repeat: ignored
    last().push(event(951, { type: "chat:response", text: "answer" }));
    // (the edge always sends the whole text with chat:complete; the proto wire cannot leave it out)
    last().push(event(952, { type: "chat:complete", finish_reason: "stop", text: "partial answer" }));
    const c = service.getSnapshot().conversation!;
    expect(c.messages.map((m) => [m.role, m.text, m.state])).toEqual([
      ["user", "old question", "sent"],
      ["assistant", "old answer", "complete"],
      ["user", "go on", "sent"],
      ["assistant", "partial answer", "complete"],
    ]);
    expect(c.lastSeq).toBe(952);
  });

  it("treats a hole in seq as a gap: history, then leave + join after it on the same socket", async () => {
    const { service, last, api, sockets } = setup();
    api.history = { as_of_seq: 2, messages: [] };
    service.connect(SID);
    last().handshake();
    last().push(event(1, { type: "chat:run_started" }));
    last().push(event(5, { type: "chat:response", text: "after a hole" }));
    await vi.advanceTimersByTimeAsync(0);
    expect(api.historyCalls).toBe(1);
    expect(sockets).toHaveLength(1);
    expect(sockets[0]!.closedWith).toBeUndefined();
    expect(last().framesOf("leave")).toHaveLength(1);
    expect(last().lastOf("join").after_seq).toBe(2);
  });

  it("reloads history when the join is refused as out_of_range, then joins after it", async () => {
    const { service, last, api, states } = setup();
    api.history = { as_of_seq: 3, messages: [{ message_id: "u_1", role: "user", text: "kept", status: "complete" }] };
    service.connect(SID);
    last().accept();
    last().push({ type: "ack", ref: last().lastOf("auth").id });
    last().push({ type: "error", ref: last().lastOf("join").id, code: "out_of_range", message: "after_seq 9 is beyond 3" });
    await vi.advanceTimersByTimeAsync(0);
    expect(api.historyCalls).toBe(1);
    expect(last().framesOf("join")).toHaveLength(2);
    expect(last().lastOf("join").after_seq).toBe(3);
    last().push({ type: "ack", ref: last().lastOf("join").id, head_seq: 3 });
    expect(states).toEqual(["connecting", "connected"]);
    expect(service.getSnapshot().conversation?.messages.map((m) => m.text)).toEqual(["kept"]);
  });

  it("does not resend a message the edge refused as busy: it is shown as failed", async () => {
    const { service, last } = setup();
    service.connect(SID);
    last().handshake();
    const sent = service.sendMessage("while busy", { busyPolicy: "reject" });
    const frame = last().lastOf("chat:message");
    // An older edge marked busy retryable; the one table (codes.json) says it is not.
    last().push({ type: "error", ref: frame.id, code: "busy", message: "a run is active", retryable: true, retry_after_ms: 1000 });
    await expect(sent).rejects.toMatchObject({ code: "busy" });
    vi.advanceTimersByTime(10_000); // well past retry_after_ms
    expect(last().framesOf("chat:message")).toHaveLength(1);
    expect(service.getSnapshot().conversation?.messages[0]).toMatchObject({ state: "failed", error: "a run is active" });
  });

  it("shows an interrupted reply as interrupted, not failed", () => {
    const { service, last } = setup();
    service.connect(SID);
    last().handshake();
    last().push(event(1, { type: "chat:run_started", assistant_message_id: "a_1" }));
    last().push(event(2, { type: "chat:response", text: "Half" }));
    last().push(event(3, { type: "chat:complete", finish_reason: "interrupted", text: "Half" }));
    expect(service.getSnapshot().conversation?.messages[0]?.state).toBe("interrupted");
  });

  it("resets the attempt counter on the auth ack, before the join is acked", () => {
    const { service, last } = setup();
    service.connect(SID);
    for (let i = 0; i < 3; i++) {
      last().drop(1006);
      vi.advanceTimersByTime(service.getSnapshot().connection.retryAt! - Date.now());
    }
    expect(service.getSnapshot().connection.attempt).toBe(3);
    last().accept();
    last().push({ type: "ack", ref: last().lastOf("auth").id });
    expect(service.getSnapshot().connection.attempt).toBe(0);
    last().drop(1006); // before the join's ack: the next wait is the base's again
    expect((service.getSnapshot().connection.retryAt ?? 0) - Date.now()).toBe(125);
  });
});

describe("assembly", () => {
  it("builds messages and tool executions with their states", () => {
    const { service, last } = setup();
    const toolUpdates: string[] = [];
    service.onToolExecution((t) => toolUpdates.push(`${t.status}:${t.fraction ?? ""}`));
    service.connect(SID);
    last().handshake();
    const s = last();
    s.push(event(1, { type: "chat:accepted", message_id: "u_1", text: "run a long task", run_id: "r_1" }));
    s.push(event(2, { type: "chat:run_started", message_id: "u_1", assistant_message_id: "a_1" }));
    s.push(event(3, { type: "chat:response", text: "Starting. " }));
    s.push(event(4, { type: "chat:tool_execution", call_id: "c_1", tool_name: "long_task", status: "started", arguments_json: '{"seconds":10}' }));
    s.push(event(5, { type: "chat:tool_execution", call_id: "c_1", tool_name: "long_task", status: "progress", fraction: 0.4, note: "step 4 of 10" }));
    s.push(event(6, { type: "chat:tool_execution", call_id: "c_1", tool_name: "long_task", status: "output", text: "tick\n" }));
    expect(service.getSnapshot().conversation?.activeRunId).toBe("r_1");
    s.push(event(7, { type: "chat:tool_execution", call_id: "c_1", tool_name: "long_task", status: "cancelled", reason: "requested" }));
    s.push(event(8, { type: "chat:response", text: "Stopped." }));
    s.push(event(9, { type: "chat:complete", finish_reason: "cancelled", text: "Starting. Stopped." }));
    const c = service.getSnapshot().conversation!;
    expect(c.messages.map((m) => [m.role, m.state])).toEqual([["user", "sent"], ["assistant", "cancelled"]]);
    expect(c.messages[1]!.parts).toEqual([
      { kind: "text", text: "Starting. " },
      { kind: "tool", callId: "c_1" },
      { kind: "text", text: "Stopped." },
    ]);
    expect(c.tools.c_1).toMatchObject({ status: "cancelled", fraction: 0.4, output: "tick\n", argumentsJson: '{"seconds":10}' });
    expect(c.activeRunId).toBeUndefined();
    expect(toolUpdates).toEqual(["started:", "progress:0.4", "output:0.4", "cancelled:0.4"]);
  });

  it("cancels the active run and a single tool call", async () => {
    const { service, last } = setup();
    service.connect(SID);
    last().handshake();
    last().push(event(1, { type: "chat:run_started" }));
    const stop = service.cancelRun();
    const frame = last().lastOf("chat:cancel");
    expect(frame).toMatchObject({ session_id: SID, run_id: "r_1" });
    last().push({ type: "ack", ref: frame.id, cancelled: true });
    await expect(stop).resolves.toBe(true);
    const cancelTool = service.cancelTool("c_9");
    const toolFrame = last().lastOf("tool:cancel");
    expect(toolFrame.call_id).toBe("c_9");
    last().push({ type: "error", ref: toolFrame.id, code: "not_found", message: "no such call" });
    await expect(cancelTool).rejects.toMatchObject({ code: "not_found" });
  });
});

describe("tokens", () => {
  it("refreshes the token in-band before it expires", async () => {
    const { service, last, api, tokens } = setup({ tokenRefreshMarginMs: 60_000, pingIntervalMs: 3_600_000 });
    const expiresAt = T0 / 1000 + 300;
    tokens.set(SID, { token: "t_1", expiresAt });
    service.connect(SID);
    last().handshake({ expiresAt });
    await vi.advanceTimersByTimeAsync(240_000 - 1);
    expect(api.refreshCalls).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(api.refreshCalls).toEqual(["t_1"]);
    expect(last().lastOf("auth").token).toBe("t_fresh");
    expect(tokens.get(SID)?.token).toBe("t_fresh");
    expect(service.getSnapshot().connection.state).toBe("connected");
  });

  it("renews a nearly expired token before opening the socket", async () => {
    const { service, last, api, tokens } = setup();
    tokens.set(SID, { token: "t_old", expiresAt: T0 / 1000 + 10 });
    service.connect(SID);
    await vi.advanceTimersByTimeAsync(0);
    expect(api.refreshCalls).toEqual(["t_old"]);
    last().accept();
    expect(last().lastOf("auth").token).toBe("t_fresh");
  });

  it("stops with a token error when the session has no token", () => {
    const { service, tokens, states } = setup();
    tokens.tokens.clear();
    const errors: string[] = [];
    service.onError((e) => errors.push(e.code));
    service.connect(SID);
    expect(states).toEqual(["disconnected"]);
    expect(errors).toEqual(["token"]);
  });
});
