import { memo } from "react";
import { RUNNING_TOOL_STATES, type ToolExecution } from "../lib/conversation";

const STATUS_TEXT: Record<string, string> = {
  started: "running",
  progress: "running",
  output: "running",
  completed: "completed",
  failed: "failed",
  cancelled: "cancelled",
  interrupted: "interrupted",
};

/** Below this a duration says nothing a person could notice ("in 0.0s"): it is left out. */
const NOTICEABLE_MS = 100;

/** "in 1.4s", "in 2m 05s", or nothing for an instant call or an unknown duration. */
export function durationText(durationMs: number | undefined): string {
  if (durationMs === undefined || durationMs < NOTICEABLE_MS) return "";
  if (durationMs < 60_000) return ` in ${(durationMs / 1000).toFixed(1)}s`;
  const seconds = Math.round(durationMs / 1000);
  return ` in ${Math.floor(seconds / 60)}m ${String(seconds % 60).padStart(2, "0")}s`;
}

function prettyArguments(json: string | undefined): string {
  if (!json) return "{}";
  try {
    return JSON.stringify(JSON.parse(json), null, 2);
  } catch {
    return json;
  }
}

/** One tool execution: name, arguments, progress, live output, status and a cancel button. */
export const ToolCard = memo(function ToolCard({
  tool,
  onCancel,
  serviceDown = false,
}: {
  tool: ToolExecution;
  onCancel: (callId: string) => void;
  /** The agent service is unavailable: a cancel could not reach the call, so none is offered. */
  serviceDown?: boolean;
}) {
  const running = RUNNING_TOOL_STATES.has(tool.status);
  const percent = Math.round((tool.fraction ?? 0) * 100);
  const status = STATUS_TEXT[tool.status] ?? tool.status;
  return (
    <section className="tool-card" data-status={tool.status} data-testid="tool-card" aria-label={`Tool ${tool.toolName}, ${status}`}>
      <header className="tool-head">
        <span className="tool-name">{tool.toolName || "tool"}</span>
        <span className="tool-status" data-testid="tool-status">
          {status}
          {running ? "" : durationText(tool.durationMs)}
        </span>
        {running && !serviceDown && (
          <button type="button" className="small-button" onClick={() => onCancel(tool.callId)} aria-label={`Cancel ${tool.toolName}`}>
            Cancel
          </button>
        )}
      </header>
      <details className="tool-args">
        <summary>Arguments</summary>
        <pre>{prettyArguments(tool.argumentsJson)}</pre>
      </details>
      {/* A bar says how far a call got: while it runs, or where a call that reported
          progress stopped. A finished call's full bar is noise. */}
      {(running || (tool.status !== "completed" && tool.fraction !== undefined)) && (
        <div className="progress-row">
          <div
            className="progress"
            role="progressbar"
            aria-label={`${tool.toolName} progress`}
            aria-valuemin={0}
            aria-valuemax={100}
            aria-valuenow={percent}
            aria-valuetext={tool.note ? `${percent}%: ${tool.note}` : `${percent}%`}
          >
            <div className="progress-fill" style={{ width: `${percent}%` }} />
          </div>
          <span className="progress-note">{tool.note ? `${percent}% · ${tool.note}` : `${percent}%`}</span>
        </div>
      )}
      {tool.output && (
        <pre className="tool-output" aria-label={`${tool.toolName} output`}>
          {tool.output}
        </pre>
      )}
      {tool.status === "completed" && tool.result !== undefined && (
        <details className="tool-result">
          <summary>Result</summary>
          <pre>{tool.result}</pre>
        </details>
      )}
      {tool.status === "failed" && (
        <p className="tool-error" role="alert">
          {tool.errorCode ? `${tool.errorCode}: ` : ""}
          {tool.errorMessage}
        </p>
      )}
      {tool.status === "cancelled" && tool.reason && <p className="tool-note">Cancelled ({tool.reason.replace("_", " ")})</p>}
      {tool.status === "interrupted" && (
        <p className="tool-note">Interrupted: the run ended before this call did, so it has no result.</p>
      )}
    </section>
  );
});
