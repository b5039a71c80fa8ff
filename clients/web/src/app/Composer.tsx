import { type FormEvent, type KeyboardEvent, forwardRef, useState } from "react";

/** The message box: Enter sends, Shift+Enter breaks a line; Stop replaces nothing, it sits beside Send. */
export const Composer = forwardRef<
  HTMLTextAreaElement,
  { onSend: (text: string) => void; onStop: () => void; running: boolean; disabled: boolean }
>(function Composer({ onSend, onStop, running, disabled }, ref) {
  const [text, setText] = useState("");

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
        ref={ref}
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
