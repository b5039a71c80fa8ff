import { describe, expect, it } from "vitest";
import { DEFAULT_BACKOFF, backoff, backoffCeiling } from "./backoff";
import { closeAction, isRetryableError } from "./codes";

describe("backoff", () => {
  it("defaults to the protocol's policy: 250 ms base, 15 s cap (the Python client's)", () => {
    expect(DEFAULT_BACKOFF).toEqual({ baseMs: 250, maxMs: 15_000 });
  });

  const options = { baseMs: 500, maxMs: 30_000 };

  it("doubles the ceiling per attempt up to the maximum", () => {
    const ceilings = Array.from({ length: 10 }, (_, n) => backoffCeiling(n, options));
    expect(ceilings).toEqual([500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]);
  });

  it("draws uniformly in [0, ceiling): full jitter", () => {
    for (let attempt = 0; attempt < 12; attempt++) {
      const ceiling = backoffCeiling(attempt, options);
      expect(backoff(attempt, options, () => 0)).toBe(0);
      expect(backoff(attempt, options, () => 0.999999)).toBeCloseTo(ceiling * 0.999999, 6);
      expect(backoff(attempt, options, () => 0.5)).toBe(ceiling / 2);
    }
  });

  it("stays within bounds for random draws and spreads over the window", () => {
    let seed = 42;
    const random = (): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const draws = Array.from({ length: 2000 }, () => backoff(4, options, random));
    expect(Math.min(...draws)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...draws)).toBeLessThan(8000);
    // Spread: both halves of the window are used.
    expect(draws.filter((d) => d < 4000).length).toBeGreaterThan(800);
    expect(draws.filter((d) => d >= 4000).length).toBeGreaterThan(800);
  });

  it("never overflows on large attempt counts", () => {
    expect(backoffCeiling(10_000, options)).toBe(30_000);
    expect(backoff(-3, options, () => 0.5)).toBe(250);
  });
});

describe("close codes", () => {
  it("groups close codes by what the client does (codes.json: the table, then the range)", () => {
    const table = Object.fromEntries(
      [1000, 1001, 1003, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 4000, 4001, 4499, 4500, 4501, 4503, 4509, 4999, 3000].map(
        (code) => [code, closeAction(code)],
      ),
    );
    expect(table).toEqual({
      1000: "stop", 1001: "reconnect", 1003: "stop", 1006: "reconnect", 1007: "stop", 1008: "stop", 1009: "stop",
      1010: "stop", 1011: "reconnect", 1012: "reconnect_now", 1013: "reconnect", 4000: "reconnect", 4001: "reconnect",
      4499: "reconnect", 4500: "stop", 4501: "refresh_token", 4503: "stop", 4509: "stop", 4999: "stop", 3000: "reconnect",
    });
  });

  it("knows which reply errors are retryable: one table, and busy is not in it", () => {
    expect(["rate_limited", "overloaded", "upstream_unavailable", "internal"].every((c) => isRetryableError(c))).toBe(true);
    expect(["busy", "bad_frame", "invalid_field", "forbidden", "not_found", "out_of_range", "already_exists"].some((c) => isRetryableError(c))).toBe(false);
  });
});
