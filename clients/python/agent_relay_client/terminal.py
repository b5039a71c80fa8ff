"""The terminal chat's keyboard and screen: a line editor that never mixes with the reply.

At the prompt, `read_line` runs prompt_toolkit's line editor (history, cursor keys,
Ctrl-C/Ctrl-D), with the connection's state in a bottom toolbar while it is not
fine. While a reply streams, `typing_ahead` reads keys with no echo: what is typed
then is kept (a finished line is sent after the reply; a started one is put back in
the editor), so it can never land in the middle of the reply's text. Ctrl-C then
reaches `on_interrupt`.

While the prompt is up, output goes through `patch_stdout`'s proxy, so lines appear
above it; a partial line cannot sit above a live prompt (the prompt's redraw would
cover it), so `ScreenOut` holds partial lines back then. While no prompt is up (a
reply streams), output goes straight to the terminal, in order and at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.input import Input, create_input
from prompt_toolkit.key_binding import KeyPress
from prompt_toolkit.keys import Keys


class ScreenOut:
    """The chat's text stream: through `patch_stdout`'s proxy while the prompt is shown,
    straight to the terminal otherwise (see the module docstring)."""

    def __init__(self, proxy: TextIO, terminal: TextIO) -> None:
        self.proxy = proxy
        self.terminal = terminal
        self.prompt_shown = False

    def write(self, text: str) -> int:
        return (self.proxy if self.prompt_shown else self.terminal).write(text)

    def flush(self) -> None:
        if not self.prompt_shown:
            self.terminal.flush()

    def isatty(self) -> bool:
        return True


class TerminalInput:
    """prompt_toolkit's editor at the prompt, silent key collection during a reply."""

    def __init__(self, out: ScreenOut, status: Callable[[], str]) -> None:
        self.out = out
        self.status = status  # the toolbar's text ("" hides the toolbar)
        self.input: Input = create_input()
        self.session: PromptSession[str] = PromptSession(input=self.input)
        self.typed = ""  # the line being typed during a reply
        self.lines: list[str] = []  # lines finished (Enter) during a reply, oldest first

    async def read_line(self, prompt: str) -> str | None:
        """The next line: one typed ahead, else from the editor. None for Ctrl-C or Ctrl-D
        at the prompt."""
        if self.lines:
            line = self.lines.pop(0)
            self.out.write(f"{prompt}{line}\n")
            self.out.flush()
            return line
        default, self.typed = self.typed, ""
        self.out.prompt_shown = True
        try:
            return await self.session.prompt_async(
                prompt, default=default, bottom_toolbar=self._toolbar
            )
        except (KeyboardInterrupt, EOFError):
            return None
        finally:
            self.out.prompt_shown = False
            self.out.proxy.flush()  # a line held back while the prompt was up

    def _toolbar(self) -> str | None:
        return self.status() or None

    @contextlib.contextmanager
    def typing_ahead(self, on_interrupt: Callable[[], None]) -> Iterator[None]:
        """While the block runs (a reply streams): keys are read without echo; Ctrl-C calls
        on_interrupt."""

        def keys() -> None:
            for key in self.input.read_keys():
                self._key(key, on_interrupt)

        with self.input.raw_mode(), self.input.attach(keys):
            yield

    def _key(self, key: KeyPress, on_interrupt: Callable[[], None]) -> None:
        if key.key == Keys.ControlC:
            on_interrupt()
        elif key.key in (Keys.ControlM, Keys.ControlJ):
            if self.typed.strip():
                self.lines.append(self.typed)
            self.typed = ""
        elif key.key in (Keys.Backspace, Keys.ControlH):
            self.typed = self.typed[:-1]
        elif key.key == Keys.BracketedPaste or (len(key.data) == 1 and key.data.isprintable()):
            self.typed += key.data.replace("\r", "\n")
