/**
 * agent-relay's browser client: the framework-free `WebSocketService` and the
 * React hooks on top of it.
 */
export { ApiError, HttpRelayApi, type RelayApi } from "./api";
export { DEFAULT_BACKOFF, backoff, backoffCeiling, type BackoffOptions } from "./backoff";
export { browserNetwork, systemClock, type Clock, type NetworkMonitor } from "./clock";
export {
  ClientCloseCode,
  ClientErrorCode,
  CloseCode,
  ErrorCode,
  GRPC_STATUS_TO_ERROR_CODE,
  POLICY,
  PROTOCOL,
  RETRYABLE_ERRORS,
  closeAction,
  isRetryableError,
  type CloseAction,
} from "./codes";
export {
  DEFAULT_WIRE,
  PROTO_PROTOCOL,
  jsonCodec,
  loadCodec,
  wireFromQuery,
  type FrameCodec,
  type Wire,
} from "./codec";
export { ConnectionMachine, linkDead, type Decision, type MachineState } from "./connectionMachine";
export { SessionCore, type Command, type EventOutcome } from "./sessionCore";
export {
  conversationFromHistory,
  emptyConversation,
  receiveEvent,
  type ChatMessage,
  type Conversation,
  type MessagePart,
  type MessageState,
  type ToolExecution,
} from "./conversation";
export { Outbox, type ErrorOutcome, type OutboxEntry } from "./outbox";
export { afterClose, tokenRefreshDelayMs, type AfterClose } from "./reconnect";
export type * from "./protocol";
export { SessionDirectory, type SessionSummary, type StoredToken, type TokenStore } from "./sessions";
export {
  ServiceError,
  WebSocketService,
  defaultSocketUrl,
  type ConnectionInfo,
  type ConnectionState,
  type SendResult,
  type ServiceSnapshot,
  type WebSocketServiceOptions,
} from "./service";
export { MemoryStorage, defaultStorage, type KeyValueStorage } from "./storage";
export { BrowserWebSocketTransport, browserTransport, type Transport, type TransportCallbacks, type TransportFactory } from "./transport";
export { useAgentChat, useWebSocket, type AgentChat, type AgentChatCallbacks } from "./react";
