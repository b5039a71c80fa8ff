import { act, cleanup, fireEvent, render, screen } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { ToolExecution } from "../lib/conversation";
import { Composer } from "./Composer";
import { ConnectionBadge } from "./ConnectionBadge";
import { Markdown } from "./Markdown";
import { ToolCard } from "./ToolCard";

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
