import { type ReactNode, useCallback, useEffect, useLayoutEffect, useRef, useState } from "react";
import type { ChatMessage } from "../lib/conversation";
import { useAgentChat, useWebSocket } from "../lib/react";
import type { ConnectionInfo, ServiceError, WebSocketService } from "../lib/service";
import { Composer, type Draft } from "./Composer";
import { ConnectionBadge } from "./ConnectionBadge";
import { MessageView } from "./MessageView";
import { useReconnectProbe } from "./reconnectProbe";

/** A reply that ended badly can be asked for again. */
const RETRYABLE_REPLY = new Set(["failed", "interrupted", "cancelled"]);

/** The banner over the messages: what is down, and what that means for the user. */
function outageText(connection: ConnectionInfo): string | undefined {
  if (connection.state === "connected" && connection.upstream === "unavailable") {
    return "The agent service is unavailable. The server reconnects to it on its own; replies resume and queued messages go out when it is back.";
  }
  if (connection.state === "reconnecting" || (connection.state === "connecting" && connection.attempt > 0)) {
    return connection.online
      ? "The server cannot be reached. This is the conversation saved in this browser; messages you send wait here and go out when it is back."
      : "You are offline. Messages you send wait here and go out when the network is back.";
  }
  return undefined;
}

/** How close to the bottom (px) still counts as "at the bottom": following new text. */
const FOLLOW_SLACK_PX = 48;
/** How long a notice about a passing trouble stays up. */
const NOTICE_MS = 6_000;

/** One conversation: its messages, the composer and the connection badge. */
export function ChatView({
  service,
  sessionId,
  title,
  onFirstMessage,
  header,
}: {
  service: WebSocketService;
  sessionId: string;
  title: string;
  onFirstMessage: (text: string) => void;
  header: ReactNode;
}) {
  const { connection } = useWebSocket(service, sessionId);
  const [notice, setNotice] = useState<{ text: string; transient: boolean } | undefined>();
  const onError = useCallback((error: ServiceError) => {
    // Connection churn and the agent service's outages are shown by the badge and
    // the banner; the rest deserves a line of its own.
    if (error.code === "overloaded") {
      // Refused before it was accepted; the outbox sends it again on its own.
      setNotice({ text: "The service is busy: your message goes again in a moment.", transient: true });
    } else if (error.code !== "connection_lost" && error.code !== "closed" && error.code !== "upstream_unavailable") {
      setNotice({ text: error.message, transient: error.retryable });
    }
  }, []);
  // A passing trouble (retryable: the edge or the client retries on its own)
  // clears itself; a lasting one stays until dismissed.
  useEffect(() => {
    if (!notice?.transient) return;
    const timer = setTimeout(() => setNotice(undefined), NOTICE_MS);
    return () => clearTimeout(timer);
  }, [notice]);
  const chat = useAgentChat(service, { onError });
  const reconnectNow = useCallback(() => service.reconnectNow(), [service]);
  useReconnectProbe(connection, reconnectNow);
  const serviceDown = connection.state === "connected" && connection.upstream === "unavailable";
  const outage = outageText(connection);
  const [draft, setDraft] = useState<Draft | undefined>();

  const logRef = useRef<HTMLDivElement>(null);
  const inputRef = useRef<HTMLTextAreaElement>(null);
  const following = useRef(true);
  const [unseen, setUnseen] = useState(false);

  const scrollToBottom = useCallback(() => {
    const log = logRef.current;
    if (log) log.scrollTop = log.scrollHeight;
    following.current = true;
    setUnseen(false);
  }, []);

  const onScroll = (): void => {
    const log = logRef.current;
    if (!log) return;
    following.current = log.scrollHeight - log.scrollTop - log.clientHeight <= FOLLOW_SLACK_PX;
    if (following.current) setUnseen(false);
  };

  // Follow new text while the reader is at the bottom; otherwise offer a button.
  useLayoutEffect(() => {
    if (following.current) {
      const log = logRef.current;
      if (log) log.scrollTop = log.scrollHeight;
    } else {
      setUnseen(true);
    }
  }, [chat.messages, chat.tools, outage]);

  useEffect(() => {
    document.title = title ? `${title} · agent-relay` : "agent-relay";
  }, [title]);

  useEffect(() => {
    setNotice(undefined);
    following.current = true;
    setUnseen(false);
    inputRef.current?.focus();
  }, [sessionId]);

  const send = (text: string): void => {
    if (chat.messages.length === 0) onFirstMessage(text);
    following.current = true;
    setNotice(undefined);
    chat.send(text).catch((error: ServiceError) => {
      if (error.code !== "disconnected") setNotice({ text: `Not sent: ${error.message}`, transient: false });
    });
  };
  // The Stop and Cancel buttons go away once pressed: keep the keyboard in the composer.
  const stop = (): void => {
    inputRef.current?.focus();
    chat.stop().catch((error: ServiceError) => setNotice({ text: `Could not stop: ${error.message}`, transient: false }));
  };
  const cancelTool = useCallback(
    (callId: string) => {
      inputRef.current?.focus();
      chat.cancelTool(callId).catch((error: ServiceError) => setNotice({ text: `Could not cancel: ${error.message}`, transient: false }));
    },
    [chat.cancelTool],
  );
  const messages = chat.messages;
  // Retry a reply: send the message that asked for it again, as a new message.
  const retryReply = useCallback(
    (reply: ChatMessage) => {
      const index = messages.indexOf(reply);
      const asked = messages.slice(0, index).reverse().find((m) => m.role === "user");
      if (asked) send(asked.text);
    },
    [messages],
  );
  const edit = useCallback((message: ChatMessage) => {
    setDraft({ text: message.text, nonce: Date.now() });
  }, []);
  const lastUser = [...messages].reverse().find((m) => m.role === "user");
  const lastAssistant = messages[messages.length - 1]?.role === "assistant" ? messages[messages.length - 1] : undefined;
  const retry = useCallback(
    (messageId: string) => {
      chat.retry(messageId).catch((error: ServiceError) => setNotice({ text: `Not sent: ${error.message}`, transient: false }));
    },
    [chat.retry],
  );
  const retryNow = (): void => {
    if (connection.state === "disconnected") service.connect(sessionId);
    else service.reconnectNow();
  };


  return (
    <main className="chat" aria-label={title || "Conversation"}>
      <header className="chat-head">
        {header}
        <h1 className="chat-title">{title || "New conversation"}</h1>
        <ConnectionBadge connection={connection} onRetryNow={retryNow} />
      </header>
      {outage && (
        <p className="banner" role="status" data-testid="outage-banner">
          {outage}
        </p>
      )}
      <div className="log-wrap">
        <div className="log" ref={logRef} onScroll={onScroll} role="log" aria-label="Messages" aria-live="polite" tabIndex={0}>
          {chat.messages.length === 0 && (
            <p className="empty">
              Ask anything. Try “run a long task for 10 seconds”, “calc 2 * (3 + 4)” or
              “python: print(6 * 7)”. The default model is a scripted demo.
            </p>
          )}
          {chat.messages.map((message) => (
            <MessageView
              key={`${message.role}:${message.id}`}
              message={message}
              tools={chat.tools}
              onRetry={retry}
              onCancelTool={cancelTool}
              onRetryReply={
                message === lastAssistant && RETRYABLE_REPLY.has(message.state) && chat.activeRunId === undefined
                  ? retryReply
                  : undefined
              }
              onEdit={message === lastUser ? edit : undefined}
              serviceDown={serviceDown}
            />
          ))}
        </div>
        {unseen && (
          <button type="button" className="new-messages" onClick={scrollToBottom}>
            New messages ↓
          </button>
        )}
      </div>
      {notice && (
        <p className="notice" role="alert">
          {notice.text}{" "}
          <button type="button" className="link-button" onClick={() => setNotice(undefined)} aria-label="Dismiss">
            ×
          </button>
        </p>
      )}
      <Composer
        ref={inputRef}
        onSend={send}
        onStop={stop}
        running={chat.activeRunId !== undefined && !serviceDown}
        disabled={false}
        draft={draft}
      />
    </main>
  );
}
