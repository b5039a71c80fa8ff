import { Suspense, lazy, memo, useState } from "react";
import type { ChatMessage, ToolExecution } from "../lib/conversation";
import { ToolCard } from "./ToolCard";

// The Markdown renderer is the largest part of the app: load it after the first
// paint, showing the plain text until it is there.
const Markdown = lazy(() => import("./Markdown").then((m) => ({ default: m.Markdown })));

function PlainText({ text }: { text: string }) {
  // Trailing blank lines mean nothing in Markdown; pre-wrap would show them.
  return <p className="plain">{text.trimEnd()}</p>;
}

const USER_STATE_TEXT: Record<string, string> = {
  queued: "Queued: will be sent when connected",
  sending: "Sending…",
  sent: "Sent",
  failed: "Not sent",
};

/** Where the clipboard API is missing (an insecure origin), select-and-copy still works. */
async function copyText(text: string): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    const copied = document.execCommand("copy");
    area.remove();
    return copied;
  }
}

/** Copies the message's text; says "Copied" for a moment. */
function CopyButton({ text, what }: { text: string; what: string }) {
  const [copied, setCopied] = useState(false);
  const copy = (): void => {
    void copyText(text).then((ok) => {
      if (!ok) return;
      setCopied(true);
      setTimeout(() => setCopied(false), 1500);
    });
  };
  return (
    <button type="button" className="link-button action" onClick={copy} aria-label={`Copy ${what}`}>
      {copied ? "Copied" : "Copy"}
    </button>
  );
}

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
  onRetryReply,
  onEdit,
  serviceDown = false,
}: {
  message: ChatMessage;
  tools: Record<string, ToolExecution>;
  onRetry: (messageId: string) => void;
  onCancelTool: (callId: string) => void;
  /** Ask again for a reply that failed or was cut short (the assistant message). */
  onRetryReply?: ((message: ChatMessage) => void) | undefined;
  /** Edit this (the last) user message and send it again. */
  onEdit?: ((message: ChatMessage) => void) | undefined;
  /** The agent service is unavailable: a streaming reply is paused, not being written. */
  serviceDown?: boolean;
}) {
  if (message.role === "user") {
    return (
      <article className="message user" data-state={message.state} data-testid="user-message" aria-label="You said">
        <div className="bubble">{message.text}</div>
        <div className="meta" data-testid="message-state">
          {message.state === "queued" && serviceDown
            ? "Queued: will be sent when the agent service is back"
            : (USER_STATE_TEXT[message.state] ?? message.state)}
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
        <div className="actions">
          <CopyButton text={message.text} what="your message" />
          {onEdit && (
            <button type="button" className="link-button action" onClick={() => onEdit(message)} aria-label="Edit your last message">
              Edit
            </button>
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
            <ToolCard
              key={part.callId}
              tool={tools[part.callId] as ToolExecution}
              onCancel={onCancelTool}
              serviceDown={serviceDown}
            />
          ) : null,
        )}
        {streaming && !serviceDown && <TypingIndicator />}
        {streaming && serviceDown && (
          <p className="plain muted" data-testid="reply-paused">
            Paused: the agent service is unavailable. The reply resumes when it is back.
          </p>
        )}
        {empty && (
          <p className="plain muted">{message.state === "cancelled" ? "Stopped before any text." : "No reply."}</p>
        )}
      </div>
      {message.state === "cancelled" && <div className="meta">Stopped</div>}
      {message.state === "failed" && (
        <div className="meta error" role="alert">
          {message.error ?? "The reply failed"}
        </div>
      )}
      {message.state === "interrupted" && (
        <div className="meta error" role="alert" data-testid="interrupted">
          Interrupted: {message.error ?? "the service stopped during this reply."}
        </div>
      )}
      {!streaming && (
        <div className="actions">
          {message.text && <CopyButton text={message.text} what="the reply" />}
          {onRetryReply && (
            <button type="button" className="link-button action" onClick={() => onRetryReply(message)}>
              Retry
            </button>
          )}
        </div>
      )}
    </article>
  );
});
