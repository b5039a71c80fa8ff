/**
 * React bindings: they connect a `WebSocketService` to React and nothing
 * more. State is read with `useSyncExternalStore`; callbacks are kept in a
 * ref so the latest ones run without resubscribing.
 */
import { useCallback, useEffect, useRef, useSyncExternalStore } from "react";
import type { ChatMessage, ToolExecution } from "./conversation";
import type { BusyPolicy } from "./protocol";
import type { ConnectionInfo, SendResult, ServiceError, WebSocketService } from "./service";

/** The service and its connection state; connects to `sessionId` when given. */
export function useWebSocket(
  service: WebSocketService,
  sessionId?: string,
): { service: WebSocketService; connection: ConnectionInfo } {
  const snapshot = useSyncExternalStore(service.subscribe, service.getSnapshot, service.getSnapshot);
  useEffect(() => {
    if (sessionId) service.connect(sessionId);
  }, [service, sessionId]);
  return { service, connection: snapshot.connection };
}

export interface AgentChatCallbacks {
  onMessage?: (message: ChatMessage) => void;
  onToolExecution?: (tool: ToolExecution) => void;
  onError?: (error: ServiceError) => void;
}

export interface AgentChat {
  messages: ChatMessage[];
  tools: Record<string, ToolExecution>;
  /** The run in flight, if any. */
  activeRunId: string | undefined;
  connection: ConnectionInfo;
  send: (text: string, options?: { busyPolicy?: BusyPolicy }) => Promise<SendResult>;
  /** Cancel the active run. */
  stop: () => Promise<boolean>;
  cancelTool: (callId: string) => Promise<boolean>;
  retry: (messageId: string) => Promise<SendResult>;
}

const NO_MESSAGES: ChatMessage[] = [];
const NO_TOOLS: Record<string, ToolExecution> = {};

/** A session's messages and tool executions, and the actions on them. */
export function useAgentChat(service: WebSocketService, callbacks: AgentChatCallbacks = {}): AgentChat {
  const snapshot = useSyncExternalStore(service.subscribe, service.getSnapshot, service.getSnapshot);
  const latest = useRef(callbacks);
  latest.current = callbacks;
  useEffect(() => {
    const off = [
      service.onMessage((m) => latest.current.onMessage?.(m)),
      service.onToolExecution((t) => latest.current.onToolExecution?.(t)),
      service.onError((e) => latest.current.onError?.(e)),
    ];
    return () => off.forEach((unsubscribe) => unsubscribe());
  }, [service]);
  const send = useCallback(
    (text: string, options?: { busyPolicy?: BusyPolicy }) => service.sendMessage(text, options),
    [service],
  );
  const stop = useCallback(() => service.cancelRun(), [service]);
  const cancelTool = useCallback((callId: string) => service.cancelTool(callId), [service]);
  const retry = useCallback((messageId: string) => service.retry(messageId), [service]);
  const conversation = snapshot.conversation;
  return {
    messages: conversation?.messages ?? NO_MESSAGES,
    tools: conversation?.tools ?? NO_TOOLS,
    activeRunId: conversation?.activeRunId,
    connection: snapshot.connection,
    send,
    stop,
    cancelTool,
    retry,
  };
}
