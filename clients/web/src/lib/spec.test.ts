/**
 * The language-neutral client scenarios (clients/spec/*.json), run against the
 * TypeScript cores. tests/clients_python/test_spec.py runs the same files
 * against the Python cores, so the two clients cannot drift. The format is in
 * clients/spec/README.md.
 */
import { describe, expect, it } from "vitest";
import { ConnectionMachine, type Decision, linkDead } from "./connectionMachine";
import type { MessageState } from "./conversation";
import type { GapEvent, History, SessionEvent } from "./protocol";
import { type Command, SessionCore } from "./sessionCore";

type Step = Record<string, unknown> & { do: string };
interface Scenario {
  name: string;
  core: "connection" | "session";
  random?: number[];
  steps: Step[];
}

// Vite inlines every scenario file at build time: no file-system access in the test.
const SPEC_FILES = import.meta.glob<{ scenarios: Scenario[] }>("../../../spec/*.json", { eager: true, import: "default" });
const files = Object.keys(SPEC_FILES).map((path) => path.split("/").pop() as string).sort();
const byName = new Map(Object.entries(SPEC_FILES).map(([path, data]) => [path.split("/").pop() as string, data]));

function decisionJson(d: Decision): unknown {
  switch (d.kind) {
    case "reconnect":
      return { reconnect: { delay_ms: round6(d.delayMs), attempt: d.attempt } };
    case "refresh_token":
      return { refresh_token: { attempt: d.attempt } };
    case "give_up":
      return { give_up: { code: d.code } };
  }
}

function round6(x: number): number {
  return Math.round(x * 1e6) / 1e6;
}

function expectedDecision(d: Record<string, Record<string, number>>): unknown {
  const r = d.reconnect;
  return r ? { reconnect: { ...r, delay_ms: round6(Number(r.delay_ms)) } } : d;
}

function runConnection(scenario: Scenario): void {
  const draws = scenario.random ?? [0.5];
  let n = 0;
  const machine = new ConnectionMachine({ random: () => draws[n++ % draws.length] as number });
  scenario.steps.forEach((step, i) => {
    const where = `step ${i} (${step.do})`;
    switch (step.do) {
      case "start":
        machine.receiveStart();
        break;
      case "connected":
        machine.receiveConnected();
        break;
      case "attempt":
        machine.receiveAttempt();
        break;
      case "stop":
        machine.receiveStop();
        break;
      case "closed": {
        const got = machine.receiveClosed(step.code as number, "", (step.retry_after_ms as number | undefined) ?? 0);
        if (step.decision) expect(decisionJson(got), where).toEqual(expectedDecision(step.decision as never));
        break;
      }
      case "link_dead":
        expect(linkDead(step.last_frame_ms as number, step.now_ms as number, step.interval_ms as number), where).toBe(
          step.dead,
        );
        break;
      default:
        throw new Error(`unknown step ${step.do}`);
    }
    const state = (step.state ?? {}) as { state?: string; attempt?: number };
    if (state.state !== undefined) expect(machine.state, where).toBe(state.state);
    if (state.attempt !== undefined) expect(machine.attempt, where).toBe(state.attempt);
  });
}

function commandJson(c: Command): unknown {
  switch (c.kind) {
    case "join":
      return { join: c.sessionId, after_seq: c.afterSeq };
    case "leave":
      return { leave: c.sessionId };
    case "send":
      return { send: c.entry.messageId };
    case "load_history":
      return { load_history: c.sessionId };
  }
}

/** The scenario's words for a user message: the TypeScript states behind them. */
function userState(state: MessageState): string {
  if (state === "queued" || state === "sending") return "pending";
  if (state === "failed") return "rejected";
  return "accepted";
}

function stepSession(core: SessionCore, step: Step): { commands: Command[]; outcome?: string } {
  const now = (step.now_ms as number | undefined) ?? 0;
  const str = (key: string): string => step[key] as string;
  switch (step.do) {
    case "follow":
      return { commands: core.follow(str("session")) };
    case "connected":
      return { commands: core.receiveConnected() };
    case "disconnected":
      core.receiveDisconnected();
      return { commands: [] };
    case "joined":
      return { commands: core.receiveJoined(str("session"), now) };
    case "join_failed":
      return {
        commands: core.receiveJoinFailed(str("session"), str("code"), (step.retry_after_ms as number) ?? 0, now),
      };
    case "send": {
      const busyPolicy = step.busy_policy as "reject" | undefined;
      const sent = core.sendMessage(str("session"), str("text"), {
        messageId: str("message_id"), nowMs: now, ...(busyPolicy ? { busyPolicy } : {}),
      });
      return { commands: sent.commands };
    }
    case "sent":
      core.receiveSent(str("message_id"));
      return { commands: [] };
    case "send_failed":
      return {
        commands: [],
        outcome: core.receiveSendFailed(
          str("message_id"), str("code"), (step.message as string) ?? "", (step.retry_after_ms as number) ?? 0, now,
        ),
      };
    case "not_joined":
      return { commands: core.receiveNotJoined(str("message_id")) };
    case "event": {
      const got = core.receiveEvent(step.event as SessionEvent | GapEvent);
      return { commands: got.commands, outcome: got.outcome };
    }
    case "history":
      return { commands: core.receiveHistory(str("session"), step.history as History) };
    case "tick":
      return { commands: core.takeDue(now) };
    default:
      throw new Error(`unknown step ${step.do}`);
  }
}

interface SessionState {
  outbox?: string[];
  in_flight?: string[];
  next_due_ms?: number | null;
  followed?: string[];
  last_seq?: Record<string, number>;
  user?: Record<string, string>;
  reply?: Record<string, string>;
  text?: Record<string, string>;
}

function checkSession(core: SessionCore, expected: SessionState, where: string): void {
  const entries = core.outbox.entries();
  if (expected.outbox) expect(entries.map((e) => e.messageId), where).toEqual(expected.outbox);
  if (expected.in_flight) {
    expect(entries.filter((e) => core.outbox.isInFlight(e.messageId)).map((e) => e.messageId), where).toEqual(
      expected.in_flight,
    );
  }
  if ("next_due_ms" in expected) expect(core.nextDueMs() ?? null, where).toBe(expected.next_due_ms);
  if (expected.followed) expect([...core.conversations.keys()].sort(), where).toEqual([...expected.followed].sort());
  for (const [sid, seq] of Object.entries(expected.last_seq ?? {})) {
    expect(core.conversations.get(sid)?.lastSeq, where).toBe(seq);
  }
  const messages = [...core.conversations.values()].flatMap((c) => c.messages);
  for (const [id, state] of Object.entries(expected.user ?? {})) {
    const m = messages.find((x) => x.role === "user" && x.id === id);
    expect(m && userState(m.state), `${where}: ${id}`).toBe(state);
  }
  const reply = (runId: string) => [...messages].reverse().find((m) => m.role === "assistant" && m.runId === runId);
  for (const [runId, state] of Object.entries(expected.reply ?? {})) expect(reply(runId)?.state, `${where}: ${runId}`).toBe(state);
  for (const [runId, text] of Object.entries(expected.text ?? {})) expect(reply(runId)?.text, `${where}: ${runId}`).toBe(text);
}

function runSession(scenario: Scenario): void {
  const core = new SessionCore();
  scenario.steps.forEach((step, i) => {
    const where = `step ${i} (${step.do})`;
    const { commands, outcome } = stepSession(core, step);
    if (step.commands) expect(commands.map(commandJson), where).toEqual(step.commands);
    if (step.outcome) expect(outcome, where).toBe(step.outcome);
    checkSession(core, (step.state ?? {}) as SessionState, where);
  });
}

describe("client scenarios (clients/spec/*.json)", () => {
  it("cover every rule the clients share", () => {
    const names = new Set(files.map((f) => f.replace(/\.json$/, "")));
    for (const n of ["busy", "connection_backoff", "connection_close_codes", "dead_link", "dedup", "gap", "interrupted", "outbox"]) {
      expect(names.has(n), n).toBe(true);
    }
  });

  for (const file of files) {
    const { scenarios } = byName.get(file) as { scenarios: Scenario[] };
    describe(file, () => {
      for (const scenario of scenarios) {
        it(scenario.name, () => (scenario.core === "connection" ? runConnection(scenario) : runSession(scenario)));
      }
    });
  }
});
