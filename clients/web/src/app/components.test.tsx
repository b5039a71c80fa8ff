import { act, cleanup, fireEvent, render, renderHook, screen } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { ToolExecution } from "../lib/conversation";
import { Composer } from "./Composer";
import { ConnectionBadge } from "./ConnectionBadge";
import { Markdown } from "./Markdown";
import { MessageView } from "./MessageView";
import { ToolCard, durationText } from "./ToolCard";
import { mergeSessions } from "./conversationList";
import { PROBE_MAX_MS, probeDelayMs, useReconnectProbe } from "./reconnectProbe";

afterEach(cleanup);

describe("Markdown", () => {
  it("renders fenced code blocks with their language", () => {
    const { container } = render(<Markdown text={"Look:\n\n```python\nprint(6 * 7)\n```\n\nand `inline`."} />);
    const code = container.querySelector("pre.code-block > code");
    expect(code?.textContent).toBe("print(6 * 7)\n");
    expect(code?.getAttribute("data-language")).toBe("python");
    expect(container.querySelector("p code")?.textContent).toBe("inline");
  });

  it("never renders raw HTML or script links from the model", () => {
    const { container } = render(
      <Markdown text={'<script>window.pwned = 1</script><img src=x onerror="window.pwned = 1">\n\n[click](javascript:alert(1)) [ok](https://example.org)'} />,
    );
    expect(container.querySelector("script")).toBeNull();
    expect(container.querySelector("img")).toBeNull();
    const links = [...container.querySelectorAll("a")].map((a) => a.getAttribute("href") ?? "");
    expect(links.some((href) => href.startsWith("javascript:"))).toBe(false);
    expect(links).toContain("https://example.org");
    expect((window as unknown as { pwned?: number }).pwned).toBeUndefined();
  });
});

describe("ToolCard", () => {
  const running: ToolExecution = {
    callId: "c_1", toolName: "long_task", status: "progress", fraction: 0.4, note: "step 4 of 10",
    output: "tick\n", argumentsJson: '{"seconds":10}',
  };

  it("shows progress, output and a cancel button while running", () => {
    const onCancel = vi.fn();
    render(<ToolCard tool={running} onCancel={onCancel} />);
    const bar = screen.getByRole("progressbar");
    expect(bar.getAttribute("aria-valuenow")).toBe("40");
    expect(screen.getByText("40% · step 4 of 10")).toBeTruthy();
    expect(screen.getByLabelText("long_task output").textContent).toBe("tick\n");
    fireEvent.click(screen.getByRole("button", { name: "Cancel long_task" }));
    expect(onCancel).toHaveBeenCalledWith("c_1");
  });

  it("has no cancel button once finished, and says how it ended", () => {
    render(<ToolCard tool={{ ...running, status: "failed", errorCode: "timeout", errorMessage: "took too long" }} onCancel={() => {}} />);
    expect(screen.queryByRole("button", { name: /Cancel/ })).toBeNull();
    expect(screen.getByRole("alert").textContent).toBe("timeout: took too long");
  });
});

describe("ToolCard: the truth, and no noise", () => {
  it("shows an interrupted call as interrupted, with no Cancel and no bar it cannot move", () => {
    render(<ToolCard tool={{ callId: "c", toolName: "long_task", status: "interrupted", output: "" }} onCancel={() => {}} />);
    expect(screen.getByTestId("tool-status").textContent).toBe("interrupted");
    expect(screen.queryByRole("button", { name: /Cancel/ })).toBeNull();
    expect(screen.queryByRole("progressbar")).toBeNull();
    expect(screen.getByText(/the run ended before this call did/)).toBeTruthy();
  });

  it("says nothing of time or progress for an instant call, and the time of a slow one", () => {
    const { rerender } = render(
      <ToolCard tool={{ callId: "c", toolName: "calculator", status: "completed", fraction: 1, durationMs: 0.4, output: "", result: "14" }} onCancel={() => {}} />,
    );
    expect(screen.getByTestId("tool-status").textContent).toBe("completed");
    expect(screen.queryByRole("progressbar")).toBeNull();
    rerender(<ToolCard tool={{ callId: "c", toolName: "long_task", status: "completed", fraction: 1, durationMs: 2_340, output: "" }} onCancel={() => {}} />);
    expect(screen.getByTestId("tool-status").textContent).toBe("completed in 2.3s");
    expect(durationText(undefined)).toBe("");
    expect(durationText(99)).toBe("");
    expect(durationText(125_000)).toBe(" in 2m 05s");
  });
});

describe("MessageView", () => {
  const reply = { id: "a", role: "assistant" as const, text: "Part of", parts: [{ kind: "text" as const, text: "Part of" }], createdMs: 0 };

  it("pauses the typing dots while the agent service is down", () => {
    render(<MessageView message={{ ...reply, state: "streaming" }} tools={{}} onRetry={() => {}} onCancelTool={() => {}} serviceDown />);
    expect(screen.queryByTestId("typing-indicator")).toBeNull();
    expect(screen.getByTestId("reply-paused")).toBeTruthy();
  });

  it("says an interrupted reply was interrupted and offers to retry it", () => {
    const onRetryReply = vi.fn();
    render(
      <MessageView
        message={{ ...reply, state: "interrupted", error: "The service stopped during this reply." }}
        tools={{}}
        onRetry={() => {}}
        onCancelTool={() => {}}
        onRetryReply={onRetryReply}
      />,
    );
    expect(screen.getByRole("alert").textContent).toBe("Interrupted: The service stopped during this reply.");
    fireEvent.click(screen.getByRole("button", { name: "Retry" }));
    expect(onRetryReply).toHaveBeenCalled();
  });
});

describe("the conversation list", () => {
  it("adds the server's sessions this browser lacks, keeps local names, leaves out removed ones", () => {
    const merged = mergeSessions(
      [
        { sessionId: "a", title: "renamed here", createdMs: 10 },
        { sessionId: "b", title: "", createdMs: 20 },
      ],
      [
        { session_id: "a", title: "server title", created_unix_ms: "10" },
        { session_id: "b", title: "from server", created_unix_ms: 20 },
        { session_id: "c", title: "other browser", created_unix_ms: 30 },
        { session_id: "d", title: "removed", created_unix_ms: 40 },
      ],
      new Set(["d"]),
    );
    expect(merged.map((s) => [s.sessionId, s.title])).toEqual([
      ["c", "other browser"],
      ["b", "from server"],
      ["a", "renamed here"],
    ]);
  });

  it("probes at a capped interval", () => {
    expect([0, 1, 2, 3, 9].map(probeDelayMs)).toEqual([1_000, 2_000, 4_000, PROBE_MAX_MS, PROBE_MAX_MS]);
  });
});

describe("Composer", () => {
  it("sends on Enter and breaks the line on Shift+Enter", () => {
    const onSend = vi.fn();
    render(<Composer onSend={onSend} onStop={() => {}} running={false} disabled={false} />);
    const box = screen.getByLabelText("Message") as HTMLTextAreaElement;
    fireEvent.change(box, { target: { value: "line one" } });
    fireEvent.keyDown(box, { key: "Enter", shiftKey: true });
    expect(onSend).not.toHaveBeenCalled();
    fireEvent.keyDown(box, { key: "Enter" });
    expect(onSend).toHaveBeenCalledWith("line one");
    expect(box.value).toBe("");
    fireEvent.keyDown(box, { key: "Enter" }); // empty: nothing sent
    expect(onSend).toHaveBeenCalledTimes(1);
  });

  it("offers Stop only while a run is active", () => {
    const onStop = vi.fn();
    const { rerender } = render(<Composer onSend={() => {}} onStop={onStop} running={false} disabled={false} />);
    expect(screen.queryByRole("button", { name: "Stop" })).toBeNull();
    rerender(<Composer onSend={() => {}} onStop={onStop} running={true} disabled={false} />);
    fireEvent.click(screen.getByRole("button", { name: "Stop" }));
    expect(onStop).toHaveBeenCalled();
  });
});

describe("ConnectionBadge", () => {
  it("counts down to the next attempt outside the announced status, and retries on demand", () => {
    vi.useFakeTimers({ now: 1_000_000 });
    try {
      const onRetryNow = vi.fn();
      render(
        <ConnectionBadge
          connection={{ state: "reconnecting", attempt: 2, online: true, retryAt: 1_000_000 + 2_500 }}
          onRetryNow={onRetryNow}
        />,
      );
      expect(screen.getByTestId("connection-badge").textContent).toContain("Reconnecting in 3s");
      expect(screen.getByRole("status").textContent).toBe("Reconnecting");
      act(() => vi.advanceTimersByTime(1_000));
      expect(screen.getByTestId("connection-badge").textContent).toContain("Reconnecting in 2s");
      fireEvent.click(screen.getByRole("button", { name: "Retry now" }));
      expect(onRetryNow).toHaveBeenCalled();
    } finally {
      vi.useRealTimers();
    }
  });

  it("says when it waits for the network, and offers no retry then", () => {
    render(<ConnectionBadge connection={{ state: "reconnecting", attempt: 1, online: false }} onRetryNow={() => {}} />);
    expect(screen.getByRole("status").textContent).toBe("Offline: waiting for the network");
    expect(screen.queryByRole("button")).toBeNull();
  });
});

describe("ConnectionBadge and the agent service", () => {
  it("does not say Connected while the edge reports the agent service down", () => {
    render(<ConnectionBadge connection={{ state: "connected", attempt: 0, online: true, upstream: "unavailable" }} onRetryNow={() => {}} />);
    expect(screen.getByRole("status").textContent).toBe("Agent service unavailable");
    expect(screen.getByTestId("connection-badge").dataset.state).toBe("degraded");
  });
});

describe("useReconnectProbe", () => {
  it("while waiting to reconnect, probes at once when the tab becomes visible, and on its timer", async () => {
    vi.useFakeTimers();
    try {
      let up = false;
      const ready = vi.fn(async () => up);
      const reconnectNow = vi.fn();
      const waiting = { state: "reconnecting" as const, attempt: 6, online: true, retryAt: Date.now() + 25_000 };
      const { rerender } = renderHook(({ c }) => useReconnectProbe(c, reconnectNow, ready), {
        initialProps: { c: waiting as import("../lib/service").ConnectionInfo },
      });
      await act(async () => vi.advanceTimersByTimeAsync(1_000));
      expect(ready).toHaveBeenCalledTimes(1);
      expect(reconnectNow).not.toHaveBeenCalled();
      up = true;
      await act(async () => {
        document.dispatchEvent(new Event("visibilitychange"));
        await vi.advanceTimersByTimeAsync(0);
      });
      expect(reconnectNow).toHaveBeenCalledTimes(1);
      // Connected: no more probes.
      rerender({ c: { state: "connected", attempt: 0, online: true } });
      ready.mockClear();
      await act(async () => vi.advanceTimersByTimeAsync(10_000));
      expect(ready).not.toHaveBeenCalled();
    } finally {
      vi.useRealTimers();
    }
  });
});
