import { act, renderHook } from "@testing-library/react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { useAgentChat, useWebSocket } from "./react";
import { WebSocketService } from "./service";
import { MemoryStorage } from "./storage";
import { FakeApi, FakeNetwork, FakeSocket, FakeTokens } from "./testing";

function makeService() {
  const sockets: FakeSocket[] = [];
  const tokens = new FakeTokens();
  tokens.set("s_1", { token: "t", expiresAt: 4_000_000_000 });
  const service = new WebSocketService({
    url: "ws://edge/ws", api: new FakeApi(), tokens, storage: new MemoryStorage(), network: new FakeNetwork(),
    transport: (url) => {
      const s = new FakeSocket(url);
      sockets.push(s);
      return s;
    },
    random: () => 0.5,
  });
  return { service, sockets };
}

beforeEach(() => vi.useFakeTimers());
afterEach(() => vi.useRealTimers());

describe("hooks", () => {
  it("useWebSocket connects and follows the connection state", () => {
    const { service, sockets } = makeService();
    const { result } = renderHook(() => useWebSocket(service, "s_1"));
    expect(result.current.connection.state).toBe("connecting");
    act(() => sockets[0]!.handshake());
    expect(result.current.connection.state).toBe("connected");
    act(() => sockets[0]!.drop(1006));
    expect(result.current.connection.state).toBe("reconnecting");
    service.disconnect();
  });

  it("useAgentChat renders streamed text and calls the latest callbacks", () => {
    const { service, sockets } = makeService();
    service.connect("s_1");
    act(() => sockets[0]!.handshake());
    const first = vi.fn();
    const second = vi.fn();
    const { result, rerender } = renderHook(({ cb }) => useAgentChat(service, { onMessage: cb }), {
      initialProps: { cb: first },
    });
    const push = (seq: number, f: Record<string, unknown>) =>
      act(() => sockets[0]!.push({ session_id: "s_1", seq, run_id: "r_1", ...f }));
    push(1, { type: "chat:run_started" });
    expect(result.current.activeRunId).toBe("r_1");
    rerender({ cb: second });
    push(2, { type: "chat:response", text: "Hi" });
    expect(result.current.messages[0]?.text).toBe("Hi");
    expect(first).toHaveBeenCalledTimes(1);
    expect(second).toHaveBeenCalledTimes(1);
    let stopped: Promise<boolean> | undefined;
    act(() => {
      stopped = result.current.stop();
    });
    void stopped?.catch(() => undefined); // rejected by the disconnect below
    expect(sockets[0]!.lastOf("chat:cancel").run_id).toBe("r_1");
    service.disconnect();
  });
});
