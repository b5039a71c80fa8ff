import { useCallback, useEffect, useRef, useState } from "react";
import type { SessionDirectory, SessionSummary } from "../lib/sessions";
import type { WebSocketService } from "../lib/service";
import { ChatView } from "./ChatView";

function sessionFromHash(): string | undefined {
  const match = /^#\/?s\/([\w-]+)/.exec(window.location.hash);
  return match?.[1];
}

/** The chat app: the list of conversations and the open one. */
export function App({ service, directory }: { service: WebSocketService; directory: SessionDirectory }) {
  const [sessions, setSessions] = useState<SessionSummary[]>(() => directory.list());
  const [current, setCurrent] = useState<string | undefined>(() => {
    const fromHash = sessionFromHash();
    const known = directory.list();
    return known.some((s) => s.sessionId === fromHash) ? fromHash : known[0]?.sessionId;
  });
  const [creating, setCreating] = useState(false);
  const [error, setError] = useState<string | undefined>();
  const [menuOpen, setMenuOpen] = useState(false);

  const open = useCallback((sessionId: string) => {
    setCurrent(sessionId);
    setMenuOpen(false);
    window.history.replaceState(null, "", `#/s/${sessionId}`);
  }, []);

  const create = useCallback(async () => {
    setCreating(true);
    setError(undefined);
    try {
      const created = await directory.create();
      setSessions(directory.list());
      open(created.sessionId);
    } catch (e) {
      setError(`Could not start a conversation: ${e instanceof Error ? e.message : String(e)}`);
    } finally {
      setCreating(false);
    }
  }, [directory, open]);

  // A first visit starts a conversation at once (once: StrictMode runs effects twice).
  const autoStarted = useRef(false);
  useEffect(() => {
    if (current || autoStarted.current) return;
    autoStarted.current = true;
    void create();
  }, [current, create]);

  useEffect(() => {
    if (current) window.history.replaceState(null, "", `#/s/${current}`);
  }, [current]);

  const onFirstMessage = (text: string): void => {
    if (!current) return;
    const known = directory.list().find((s) => s.sessionId === current);
    if (known && !known.title) {
      directory.setTitle(current, text.trim().slice(0, 60));
      setSessions(directory.list());
    }
  };

  const title = sessions.find((s) => s.sessionId === current)?.title ?? "";
  const menuButton = (
    <button
      type="button"
      className="menu-button"
      aria-expanded={menuOpen}
      aria-controls="conversations"
      onClick={() => setMenuOpen((v) => !v)}
    >
      <span aria-hidden="true">☰</span>
      <span className="visually-hidden">Conversations</span>
    </button>
  );

  return (
    <div className="app" data-menu-open={menuOpen}>
      <nav id="conversations" className="sidebar" aria-label="Conversations">
        <button type="button" className="new-button" onClick={() => void create()} disabled={creating}>
          {creating ? "Starting…" : "+ New conversation"}
        </button>
        <ul className="session-list">
          {sessions.map((s) => (
            <li key={s.sessionId}>
              <button
                type="button"
                className="session-item"
                aria-current={s.sessionId === current ? "page" : undefined}
                onClick={() => open(s.sessionId)}
              >
                <span className="session-title">{s.title || "New conversation"}</span>
                <span className="session-time">{new Date(s.createdMs).toLocaleString()}</span>
              </button>
            </li>
          ))}
        </ul>
      </nav>
      {current ? (
        <ChatView
          key={current}
          service={service}
          sessionId={current}
          title={title}
          onFirstMessage={onFirstMessage}
          header={menuButton}
        />
      ) : (
        <main className="chat placeholder" aria-label="Conversation">
          {error ? (
            <p role="alert">
              {error}{" "}
              <button type="button" className="link-button" onClick={() => void create()}>
                Try again
              </button>
            </p>
          ) : (
            <p role="status">Starting a conversation…</p>
          )}
        </main>
      )}
    </div>
  );
}
