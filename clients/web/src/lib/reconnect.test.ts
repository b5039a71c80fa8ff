import { describe, expect, it } from "vitest";
import { afterClose, tokenRefreshDelayMs } from "./reconnect";

const base = {
  attempt: 0, online: true, retryAfterMs: 0, backoff: { baseMs: 500, maxMs: 30_000 }, restartJitterMs: 1000,
  random: () => 0.5,
};

describe("afterClose", () => {
  it("stops, waits for the network or retries, by close code and network", () => {
    expect(afterClose({ ...base, code: 1008 })).toEqual({ kind: "stop" });
    expect(afterClose({ ...base, code: 4509, online: false })).toEqual({ kind: "stop" });
    expect(afterClose({ ...base, code: 4501 })).toEqual({ kind: "refresh_token" });
    expect(afterClose({ ...base, code: 1006, online: false })).toEqual({ kind: "wait_for_network" });
    expect(afterClose({ ...base, code: 1006, attempt: 3 })).toEqual({ kind: "retry", delayMs: 2000 });
    expect(afterClose({ ...base, code: 1012, attempt: 9 })).toEqual({ kind: "retry", delayMs: 500 });
    expect(afterClose({ ...base, code: 1013, retryAfterMs: 9000 })).toEqual({ kind: "retry", delayMs: 9000 });
  });
});

describe("tokenRefreshDelayMs", () => {
  it("renews a margin before expiry, never in the first half of the remaining life", () => {
    expect(tokenRefreshDelayMs(3_600_000, 60_000)).toBe(3_540_000);
    expect(tokenRefreshDelayMs(60_000, 60_000)).toBe(30_000);
    expect(tokenRefreshDelayMs(0, 60_000)).toBe(0);
    expect(tokenRefreshDelayMs(-5, 60_000)).toBe(0);
    expect(tokenRefreshDelayMs(Infinity, 60_000)).toBe(Infinity);
  });
});
