import { type KeyboardEvent, useCallback, useEffect, useRef, useState } from "react";
import type { SessionDirectory, SessionSummary } from "../lib/sessions";
import type { WebSocketService } from "../lib/service";
import { ChatView } from "./ChatView";
import type { ConversationList } from "./conversationList";

function sessionFromHash(): string | undefined {
  const match = /^#\/?s\/([\w-]+)/.exec(window.location.hash);
  return match?.[1];
}

/** One conversation in the sidebar: open it, rename it, or remove it from this browser. */
function SessionRow({
  session,
  current,
  onOpen,
  onRename,
  onRemove,
}: {
  session: SessionSummary;
  current: boolean;
  onOpen: () => void;
  onRename: (title: string) => void;
  onRemove: () => void;
}) {
  const [mode, setMode] = useState<"view" | "rename" | "remove">("view");
  // Enter or Escape settles a rename; the blur that follows must not redo (or undo) it.
  const settled = useRef(false);
  const title = session.title || "New conversation";
  if (mode === "rename") {
    const finish = (value: string | undefined): void => {
      if (settled.current) return;
      settled.current = true;
      if (value !== undefined && value.trim()) onRename(value);
      setMode("view");
    };
    const done = (event: KeyboardEvent<HTMLInputElement>): void => {
      if (event.key === "Enter") finish(event.currentTarget.value);
      else if (event.key === "Escape") {
        event.stopPropagation();
        finish(undefined);
      }
    };
    return (
      <input
        className="rename-input"
        aria-label={`New name for ${title}`}
        defaultValue={session.title}
        autoFocus
        onKeyDown={done}
        onBlur={(e) => finish(e.currentTarget.value)}
      />
    );
  }
  if (mode === "remove") {
    return (
      <div className="session-row" role="group" aria-label={`Remove ${title}?`}>
        <p className="list-note">Remove “{title}” from this browser? The server keeps it.</p>
        <div className="session-tools">
          <button type="button" onClick={onRemove}>
            Remove
          </button>
          <button type="button" onClick={() => setMode("view")} autoFocus>
            Keep
          </button>
        </div>
      </div>
    );
  }
  return (
    <div className="session-row">
      <button type="button" className="session-item" aria-current={current ? "page" : undefined} onClick={onOpen}>
        <span className="session-title">{title}</span>
        <span className="session-time">{new Date(session.createdMs).toLocaleString()}</span>
      </button>
      <div className="session-tools">
        <button
          type="button"
          aria-label={`Rename ${title}`}
          onClick={() => {
            settled.current = false;
            setMode("rename");
          }}
        >
          Rename
        </button>
        <button type="button" aria-label={`Remove ${title}`} onClick={() => setMode("remove")}>
          Remove
        </button>
      </div>
    </div>
  );
}

/** The chat app: the list of conversations and the open one. */
export function App({
  service,
  directory,
  conversations,
}: {
  service: WebSocketService;
  directory: SessionDirectory;
  conversations: ConversationList;
}) {
  const [sessions, setSessions] = useState<SessionSummary[]>(() => conversations.list());
  const [current, setCurrent] = useState<string | undefined>(() => {
    const fromHash = sessionFromHash();
    const known = conversations.list();
    return known.some((s) => s.sessionId === fromHash) ? fromHash : known[0]?.sessionId;
  });
  const [creating, setCreating] = useState(false);
  const [error, setError] = useState<string | undefined>();
  const [menuOpen, setMenuOpen] = useState(false);
  const menuButtonRef = useRef<HTMLButtonElement>(null);
  const sidebarRef = useRef<HTMLElement>(null);
  const refresh = useCallback(() => setSessions(conversations.list()), [conversations]);

  // Other tabs change the list too; and the server knows conversations this browser forgot.
  useEffect(() => conversations.subscribe(refresh), [conversations, refresh]);
  useEffect(() => {
    void conversations.syncFromServer().then((changed) => {
      if (changed) refresh();
    });
  }, [conversations, refresh]);

  // The phone menu closes on Escape and on a tap outside it.
  useEffect(() => {
    if (!menuOpen) return;
    const onKey = (event: globalThis.KeyboardEvent): void => {
      if (event.key !== "Escape") return;
      setMenuOpen(false);
      menuButtonRef.current?.focus();
    };
    const onPointer = (event: PointerEvent): void => {
      const target = event.target as Node | null;
      if (target && (sidebarRef.current?.contains(target) || menuButtonRef.current?.contains(target))) return;
      setMenuOpen(false);
    };
    document.addEventListener("keydown", onKey);
    document.addEventListener("pointerdown", onPointer);
    return () => {
      document.removeEventListener("keydown", onKey);
      document.removeEventListener("pointerdown", onPointer);
    };
  }, [menuOpen]);

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
      refresh();
      open(created.sessionId);
    } catch (e) {
      setError(`Could not start a conversation: ${e instanceof Error ? e.message : String(e)}`);
    } finally {
      setCreating(false);
    }
  }, [directory, open, refresh]);

  const rename = (sessionId: string, title: string): void => {
    conversations.rename(sessionId, title);
    refresh();
  };
  const remove = (sessionId: string): void => {
    conversations.remove(sessionId);
    const rest = conversations.list();
    setSessions(rest);
    if (sessionId === current) {
      const next = rest[0]?.sessionId;
      if (next) open(next);
      else {
        setCurrent(undefined);
        autoStarted.current = false;
      }
    }
  };

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
      refresh();
    }
  };

  const title = sessions.find((s) => s.sessionId === current)?.title ?? "";
  const menuButton = (
    <button
      ref={menuButtonRef}
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
      <nav id="conversations" ref={sidebarRef} className="sidebar" aria-label="Conversations">
        <button type="button" className="new-button" onClick={() => void create()} disabled={creating}>
          {creating ? "Starting…" : "+ New conversation"}
        </button>
        <ul className="session-list">
          {sessions.map((s) => (
            <li key={s.sessionId}>
              <SessionRow
                session={s}
                current={s.sessionId === current}
                onOpen={() => open(s.sessionId)}
                onRename={(t) => rename(s.sessionId, t)}
                onRemove={() => remove(s.sessionId)}
              />
            </li>
          ))}
        </ul>
        <p className="list-note">Names and removals are kept in this browser only.</p>
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
