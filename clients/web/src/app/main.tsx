import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { HttpRelayApi } from "../lib/api";
import { DEFAULT_WIRE, type FrameCodec, loadCodec, wireFromQuery } from "../lib/codec";
import { SessionDirectory } from "../lib/sessions";
import { WebSocketService, defaultSocketUrl } from "../lib/service";
import { defaultStorage } from "../lib/storage";
import { App } from "./App";
import { ConversationList } from "./conversationList";
import { registerServiceWorker } from "./offline";
import "./app.css";

// One service for the page's lifetime: it outlives React re-renders and
// StrictMode's double effects, and owns the socket, outbox and timers.
// `?wire=proto` or `?wire=json` picks the socket's wire format (docs/protocol.md);
// the proto codec is a chunk of its own, fetched only then.
function start(codec: FrameCodec): void {
  const storage = defaultStorage();
  const api = new HttpRelayApi();
  const directory = new SessionDirectory(storage, api);
  const service = new WebSocketService({ url: defaultSocketUrl(), api, tokens: directory, storage, codec });
  const conversations = new ConversationList(storage, directory);
  registerServiceWorker();

  const root = document.getElementById("root");
  if (root) {
    createRoot(root).render(
      <StrictMode>
        <App service={service} directory={directory} conversations={conversations} />
      </StrictMode>,
    );
  }
}

void loadCodec(wireFromQuery(window.location.search) ?? DEFAULT_WIRE).then(start);
