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
});
