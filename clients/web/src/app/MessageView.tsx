import { Suspense, lazy, memo } from "react";
import type { ChatMessage, ToolExecution } from "../lib/conversation";
import { ToolCard } from "./ToolCard";

// The Markdown renderer is the largest part of the app: load it after the first
// paint, showing the plain text until it is there.
const Markdown = lazy(() => import("./Markdown").then((m) => ({ default: m.Markdown })));

function PlainText({ text }: { text: string }) {
  return <p className="plain">{text}</p>;
}

const USER_STATE_TEXT: Record<string, string> = {
  queued: "Queued: will be sent when connected",
  sending: "Sending…",
  sent: "Sent",
  failed: "Not sent",
};

function TypingIndicator() {
  return (
    <span className="typing" role="img" aria-label="The assistant is writing" data-testid="typing-indicator">
      <span />
      <span />
      <span />
    </span>
  );
}

/** One message: user text with its delivery state, or assistant Markdown with tool cards in place. */
export const MessageView = memo(function MessageView({
  message,
  tools,
  onRetry,
  onCancelTool,
}: {
  message: ChatMessage;
  tools: Record<string, ToolExecution>;
  onRetry: (messageId: string) => void;
  onCancelTool: (callId: string) => void;
}) {
  if (message.role === "user") {
    return (
      <article className="message user" data-state={message.state} data-testid="user-message" aria-label="You said">
        <div className="bubble">{message.text}</div>
        <div className="meta" data-testid="message-state">
          {USER_STATE_TEXT[message.state] ?? message.state}
          {message.runQueued && message.state === "sent" ? " · waiting for the current reply" : ""}
          {message.state === "failed" && (
            <>
              {message.error ? `: ${message.error}` : ""}{" "}
              <button type="button" className="link-button" onClick={() => onRetry(message.id)}>
                Retry
              </button>
            </>
          )}
        </div>
      </article>
    );
  }
  const streaming = message.state === "streaming";
  const empty = !streaming && message.parts.length === 0;
  return (
    <article
      className="message assistant"
      data-state={message.state}
      data-testid="assistant-message"
      aria-label="Assistant"
      aria-busy={streaming}
    >
      <div className="bubble">
        {message.parts.map((part, index) =>
          part.kind === "text" ? (
            <div className="markdown" key={index} data-testid="assistant-text">
              <Suspense fallback={<PlainText text={part.text} />}>
                <Markdown text={part.text} />
              </Suspense>
            </div>
          ) : tools[part.callId] ? (
            <ToolCard key={part.callId} tool={tools[part.callId] as ToolExecution} onCancel={onCancelTool} />
          ) : null,
        )}
        {streaming && <TypingIndicator />}
        {empty && (
          <p className="plain muted">{message.state === "cancelled" ? "Stopped before any text." : "No reply."}</p>
        )}
      </div>
      {message.state === "cancelled" && <div className="meta">Stopped</div>}
      {(message.state === "failed" || message.state === "interrupted") && (
        <div className="meta error" role="alert">
          {message.error ?? "The reply failed"}
        </div>
      )}
    </article>
  );
});
