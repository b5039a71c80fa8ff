import { type FormEvent, type KeyboardEvent, forwardRef, useEffect, useRef, useState } from "react";

/** Text to put in the box (to edit and resend a message); a new `nonce` puts it again. */
export interface Draft {
  text: string;
  nonce: number;
}

/** The message box: Enter sends, Shift+Enter breaks a line; Stop replaces nothing, it sits beside Send. */
export const Composer = forwardRef<
  HTMLTextAreaElement,
  { onSend: (text: string) => void; onStop: () => void; running: boolean; disabled: boolean; draft?: Draft | undefined }
>(function Composer({ onSend, onStop, running, disabled, draft }, ref) {
  const [text, setText] = useState("");
  const box = useRef<HTMLTextAreaElement | null>(null);
  useEffect(() => {
    if (!draft) return;
    setText(draft.text);
    const el = box.current;
    if (el) {
      el.focus();
      el.setSelectionRange(draft.text.length, draft.text.length);
    }
  }, [draft]);
  const setRefs = (el: HTMLTextAreaElement | null): void => {
    box.current = el;
    if (typeof ref === "function") ref(el);
    else if (ref) ref.current = el;
  };

  const submit = (): void => {
    if (!text.trim() || disabled) return;
    onSend(text);
    setText("");
  };
  const onKeyDown = (event: KeyboardEvent<HTMLTextAreaElement>): void => {
    // isComposing: Enter that confirms an IME composition must not send.
    if (event.key === "Enter" && !event.shiftKey && !event.nativeEvent.isComposing) {
      event.preventDefault();
      submit();
    }
  };
  const onSubmit = (event: FormEvent): void => {
    event.preventDefault();
    submit();
  };

  return (
    <form className="composer" onSubmit={onSubmit} aria-label="Send a message">
      <label htmlFor="composer-input" className="visually-hidden">
        Message
      </label>
      <textarea
        id="composer-input"
        ref={setRefs}
        value={text}
        rows={1}
        placeholder="Message the agent…"
        onChange={(e) => setText(e.target.value)}
        onKeyDown={onKeyDown}
        aria-describedby="composer-hint"
      />
      <span id="composer-hint" className="visually-hidden">
        Enter sends, Shift+Enter starts a new line.
      </span>
      {running && (
        <button type="button" className="stop-button" onClick={onStop}>
          Stop
        </button>
      )}
      <button type="submit" className="send-button" disabled={disabled || !text.trim()}>
        Send
      </button>
    </form>
  );
});
