import { describe, expect, it } from "vitest";
import { SessionDirectory, tokenSessions } from "./sessions";
import { MemoryStorage } from "./storage";
import { FakeApi } from "./testing";

function jwt(claims: Record<string, unknown>): string {
  const b64 = (v: unknown) => btoa(JSON.stringify(v)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  return `${b64({ alg: "HS256" })}.${b64(claims)}.sig`;
}

describe("SessionDirectory", () => {
  const NOW_S = 1_700_000_000;

  it("reads the sessions claim of a token, and nothing from garbage", () => {
    expect(tokenSessions(jwt({ sub: "u", sessions: ["s_1", "s_2"] }))).toEqual(["s_1", "s_2"]);
    expect(tokenSessions("not a token")).toEqual([]);
  });

  it("lists created sessions newest first, and creates later ones as the same user", async () => {
    const api = new FakeApi();
    const bearers: (string | undefined)[] = [];
    let n = 0;
    api.createSession = (options?: { bearer?: string }) => {
      bearers.push(options?.bearer);
      n += 1;
      return Promise.resolve({ session_id: `s_${n}`, token: `t_${n}`, expires_at: NOW_S + 3600 });
    };
    const dir = new SessionDirectory(new MemoryStorage(), api, () => NOW_S * 1000);
    await dir.create();
    await dir.create();
    expect(dir.list().map((s) => s.sessionId)).toEqual(["s_2", "s_1"]);
    expect(bearers).toEqual([undefined, "t_1"]);
  });

  it("joins an old session with a newer token that names it once its own expired", () => {
    let nowMs = NOW_S * 1000;
    const dir = new SessionDirectory(new MemoryStorage(), new FakeApi(), () => nowMs);
    const storage = (dir as unknown as { storage: MemoryStorage }).storage;
    storage.setItem("agent-relay:sessions", JSON.stringify([
      { sessionId: "s_2", title: "", createdMs: 2 }, { sessionId: "s_1", title: "", createdMs: 1 },
    ]));
    const older = { token: jwt({ sessions: ["s_1"] }), expiresAt: NOW_S + 60 };
    const newer = { token: jwt({ sessions: ["s_1", "s_2"] }), expiresAt: NOW_S + 3600 };
    dir.set("s_1", older);
    dir.set("s_2", newer);
    expect(dir.get("s_1")).toEqual(older);
    nowMs += 120_000; // s_1's own token is dead now
    expect(dir.get("s_1")).toEqual(newer);
    expect(dir.get("s_2")).toEqual(newer);
  });
});
