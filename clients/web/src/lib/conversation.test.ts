import { describe, expect, it } from "vitest";
import { conversationFromHistory, emptyConversation, receiveEvent } from "./conversation";
import type { SessionEvent } from "./protocol";

describe("conversationFromHistory", () => {
  it("folds a run's assistant and tool messages into one message with the tool in place", () => {
    const c = conversationFromHistory("s", {
      as_of_seq: 40,
      messages: [
        { message_id: "u1", role: "user", text: "long task 2s", run_id: "r1", status: "complete" },
        {
          message_id: "a1", role: "assistant", text: "Calling long_task.", run_id: "r1", status: "complete",
          tool_calls: [{ call_id: "c1", tool_name: "long_task", arguments_json: '{"seconds":2}' }],
        },
        { message_id: "t1", role: "tool", text: "finished", call_id: "c1", run_id: "r1" },
        { message_id: "a2", role: 2, text: "Done.", run_id: "r1", status: 1 },
        { message_id: "u2", role: "ROLE_USER", text: "and then?", run_id: "r2" },
        { message_id: "a3", role: "ROLE_ASSISTANT", text: "Partial", run_id: "r2", status: "MESSAGE_STATUS_INTERRUPTED" },
      ],
    });
    expect(c.lastSeq).toBe(40);
    expect(c.messages.map((m) => [m.role, m.text, m.state])).toEqual([
      ["user", "long task 2s", "sent"],
      ["assistant", "Calling long_task.Done.", "complete"],
      ["user", "and then?", "sent"],
      ["assistant", "Partial", "interrupted"], // interrupted, not failed: the Python client's state
    ]);
    expect(c.messages[1]!.parts).toEqual([
      { kind: "text", text: "Calling long_task." },
      { kind: "tool", callId: "c1" },
      { kind: "text", text: "Done." },
    ]);
    expect(c.tools.c1).toMatchObject({ toolName: "long_task", status: "completed", result: "finished" });
    expect(c.messages[3]!.error).toBe("The service stopped during this reply.");
    expect(c.activeRunId).toBeUndefined();
  });

  it("marks a reply still streaming as the active run", () => {
    const c = conversationFromHistory("s", {
      as_of_seq: 7,
      messages: [{ message_id: "a", role: "assistant", text: "so far", run_id: "r9", status: "streaming" }],
    });
    expect(c.activeRunId).toBe("r9");
    expect(c.messages[0]!.state).toBe("streaming");
  });
});

describe("conversationFromHistory: how each tool call ended", () => {
  const call = (id: string) => ({ call_id: id, tool_name: "long_task", arguments_json: "{}" });

  it("keeps failed and cancelled calls as they ended, with their error text and duration", () => {
    const c = conversationFromHistory("s", {
      as_of_seq: 30,
      messages: [
        { message_id: "u1", role: "user", text: "go", run_id: "r1", status: "complete" },
        { message_id: "r1.0", role: "assistant", text: "", run_id: "r1", status: "complete", tool_calls: [call("ok"), call("bad"), call("stop")] },
        { message_id: "ok", role: "tool", text: "42", call_id: "ok", run_id: "r1", status: "complete" },
        { message_id: "bad", role: "tool", text: "error (timeout): took longer than 5 s", call_id: "bad", run_id: "r1", status: "failed", duration_ms: 5003 },
        { message_id: "stop", role: "tool", text: "cancelled (user_cancelled)", call_id: "stop", run_id: "r1", status: "MESSAGE_STATUS_FAILED" },
        { message_id: "r1.1", role: "assistant", text: "Done.", run_id: "r1", status: "complete" },
      ],
    });
    expect(c.tools.ok).toMatchObject({ status: "completed", result: "42" });
    expect(c.tools.bad).toMatchObject({ status: "failed", errorCode: "timeout", errorMessage: "took longer than 5 s", durationMs: 5003 });
    expect(c.tools.stop).toMatchObject({ status: "cancelled", reason: "user_cancelled" });
    expect(c.tools.ok!.durationMs).toBeUndefined(); // stored before durations were kept
    expect(c.messages[1]!.state).toBe("complete");
  });

  it("reads the statuses the service stores for calls a run or a restart ended", () => {
    const c = conversationFromHistory("s", {
      as_of_seq: 30,
      messages: [
        { message_id: "u1", role: "user", text: "go", run_id: "r1", status: "complete" },
        { message_id: "r1.0", role: "assistant", text: "", run_id: "r1", status: "complete", tool_calls: [call("a"), call("b")] },
        { message_id: "a", role: "tool", text: "cancelled (requested)", call_id: "a", run_id: "r1", status: "cancelled" },
        { message_id: "b", role: "tool", text: "error (not_finished): the run was interrupted before this call finished", call_id: "b", run_id: "r1", status: "interrupted" },
      ],
    });
    expect(c.tools.a).toMatchObject({ status: "cancelled", reason: "requested" });
    expect(c.tools.b!.status).toBe("interrupted");
  });

  it("shows a call the service died during as interrupted, and its reply too, with nothing left running", () => {
    const c = conversationFromHistory("s", {
      as_of_seq: 12,
      messages: [
        { message_id: "u1", role: "user", text: "long", run_id: "r1", status: "complete" },
        { message_id: "r1.0", role: "assistant", text: "Calling.", run_id: "r1", status: "complete", tool_calls: [call("c1")] },
      ],
    });
    expect(c.tools.c1!.status).toBe("interrupted");
    expect(c.messages[1]).toMatchObject({ state: "interrupted", error: "The service stopped during this reply." });
    expect(c.activeRunId).toBeUndefined();
  });

  it("leaves the active run's call running, and a cancelled run's calls cancelled", () => {
    const running = conversationFromHistory("s", {
      as_of_seq: 12,
      active_run_id: "r1",
      messages: [{ message_id: "r1.0", role: "assistant", text: "", run_id: "r1", status: "complete", tool_calls: [call("c1")] }],
    });
    expect(running.tools.c1!.status).toBe("started");
    expect(running.activeRunId).toBe("r1");
    const cancelled = conversationFromHistory("s", {
      as_of_seq: 12,
      messages: [
        { message_id: "r2.0", role: "assistant", text: "", run_id: "r2", status: "complete", tool_calls: [call("c2")] },
        { message_id: "r2.1", role: "assistant", text: "part", run_id: "r2", status: "cancelled" },
      ],
    });
    expect(cancelled.tools.c2).toMatchObject({ status: "cancelled", reason: "run_cancelled" });
    expect(cancelled.messages[0]!.state).toBe("cancelled");
  });
});

describe("receiveEvent", () => {
  const ev = (seq: number, f: Record<string, unknown>) => ({ session_id: "s", seq, run_id: "r", ...f }) as SessionEvent;

  it("applies in order, drops repeats, and refuses to skip a hole or split a batch", () => {
    let c = emptyConversation("s");
    c = receiveEvent(c, ev(1, { type: "chat:run_started" })).conversation;
    const batch = receiveEvent(c, ev(4, { type: "chat:response", from_seq: 2, text: "abc" }));
    expect(batch.outcome).toBe("applied");
    c = batch.conversation;
    expect(receiveEvent(c, ev(4, { type: "chat:response", text: "abc" })).outcome).toBe("duplicate");
    expect(receiveEvent(c, ev(6, { type: "chat:response", text: "x" })).outcome).toBe("gap");
    expect(receiveEvent(c, ev(6, { type: "chat:response", from_seq: 4, text: "cx" })).outcome).toBe("gap");
    expect(c.messages[0]!.text).toBe("abc");
  });

  it("takes the final text when the streamed text differs, keeping tool cards", () => {
    let c = emptyConversation("s");
    c = receiveEvent(c, ev(1, { type: "chat:tool_execution", call_id: "c", tool_name: "t", status: "started" })).conversation;
    c = receiveEvent(c, ev(2, { type: "chat:complete", finish_reason: "FINISH_REASON_STOP", text: "final" })).conversation;
    expect(c.messages[0]).toMatchObject({ state: "complete", text: "final" });
    expect(c.messages[0]!.parts).toEqual([{ kind: "tool", callId: "c" }, { kind: "text", text: "final" }]);
  });

  it("shows a call the service ended at its restart (cancelled, reason interrupted) as interrupted", () => {
    let c = emptyConversation("s");
    c = receiveEvent(c, ev(1, { type: "chat:tool_execution", call_id: "c", tool_name: "t", status: "progress", fraction: 0.2 })).conversation;
    c = receiveEvent(c, ev(2, { type: "chat:tool_execution", call_id: "c", tool_name: "t", status: "cancelled", reason: "interrupted" })).conversation;
    expect(c.tools.c).toMatchObject({ status: "interrupted", reason: "interrupted" });
  });

  it("ends a run's running tool calls with the run: interrupted by a crash, cancelled by a cancel", () => {
    let c = emptyConversation("s");
    c = receiveEvent(c, ev(1, { type: "chat:run_started", assistant_message_id: "a" })).conversation;
    c = receiveEvent(c, ev(2, { type: "chat:tool_execution", call_id: "c", tool_name: "t", status: "progress", fraction: 0 })).conversation;
    c = receiveEvent(c, ev(3, { type: "chat:tool_execution", call_id: "d", tool_name: "t", status: "completed", duration_ms: 3 })).conversation;
    const crashed = receiveEvent(c, ev(4, { type: "chat:complete", finish_reason: "interrupted" })).conversation;
    expect(crashed.tools.c!.status).toBe("interrupted");
    expect(crashed.tools.d!.status).toBe("completed");
    expect(crashed.messages[0]).toMatchObject({ state: "interrupted", error: "The service stopped during this reply." });
    expect(crashed.activeRunId).toBeUndefined();
    const stopped = receiveEvent(c, ev(4, { type: "chat:complete", finish_reason: "cancelled" })).conversation;
    expect(stopped.tools.c).toMatchObject({ status: "cancelled", reason: "run_cancelled" });
  });
});
