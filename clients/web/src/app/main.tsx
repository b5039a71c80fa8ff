import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { HttpRelayApi } from "../lib/api";
import { SessionDirectory } from "../lib/sessions";
import { WebSocketService, defaultSocketUrl } from "../lib/service";
import { defaultStorage } from "../lib/storage";
import { App } from "./App";
import { ConversationList } from "./conversationList";
import { registerServiceWorker } from "./offline";
import "./app.css";

// One service for the page's lifetime: it outlives React re-renders and
// StrictMode's double effects, and owns the socket, outbox and timers.
const storage = defaultStorage();
const api = new HttpRelayApi();
const directory = new SessionDirectory(storage, api);
const service = new WebSocketService({ url: defaultSocketUrl(), api, tokens: directory, storage });
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
