"""The terminal chat: `agent-relay chat`, `agent-relay tools`, `agent-relay history SESSION`.

::

    agent-relay chat                          new session through the edge at 127.0.0.1:8080
    agent-relay chat --session s_...          reopen one (its token is remembered)
    agent-relay chat --grpc 127.0.0.1:50051   straight to the agent service
    agent-relay tools [--grpc ADDR]           the agent's tools
    agent-relay history SESSION [--grpc ADDR] a session's messages

In `chat`: type a message and press Enter; the reply streams in. Ctrl-C during a
reply cancels it; a second Ctrl-C quits. Ctrl-C or Ctrl-D at the prompt quits.
What is typed while a reply streams is not echoed into it: a finished line is sent
after the reply, a started one waits in the line editor. Dropped connections are
re-established and the reply resumes where it was, without a word lost or
repeated; an outage that lasts says so ([reconnecting ...], and in the prompt's
toolbar), as does the agent service going away behind the edge. Tokens for
sessions made through the edge, and messages not yet delivered, are kept under
--state-dir so a session can be reopened.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import TextIO, cast

from prompt_toolkit.patch_stdout import patch_stdout

from agent_relay_client import errors
from agent_relay_client.connection import State
from agent_relay_client.events import MessageAccepted, RunCompleted, UpstreamChanged
from agent_relay_client.grpc import AgentClient
from agent_relay_client.outbox import Outbox
from agent_relay_client.render import USER, Renderer
from agent_relay_client.resilient import (
    EventApplied,
    HistoryLoaded,
    MessageRejected,
    MessageSent,
    ResilientChat,
    StateChanged,
    Update,
)
from agent_relay_client.terminal import ScreenOut, TerminalInput
from agent_relay_client.ws import EdgeClient, http_url

DEFAULT_EDGE = "http://127.0.0.1:8080"
DEFAULT_GRPC = "127.0.0.1:50051"
# A connection back within this long was a blip the user need not hear of (the reply
# resumes without a word lost); past it, the chat says it is reconnecting.
DOWN_NOTE_AFTER_S = 2.0


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "agent-relay"


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="agent-relay", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def transport_flags(p: argparse.ArgumentParser, *, edge: bool) -> None:
        if edge:
            p.add_argument(
                "--edge-url",
                default=os.environ.get("AGENT_RELAY_EDGE_URL", DEFAULT_EDGE),
                help=f"the WebSocket edge (default {DEFAULT_EDGE})",
            )
            p.add_argument(
                "--token",
                default=os.environ.get("AGENT_RELAY_TOKEN", ""),
                help="a token naming the session (default: the one remembered)",
            )
            p.add_argument("--origin", default=None, help="Origin header to send to the edge")
        p.add_argument(
            "--grpc",
            metavar="HOST:PORT",
            default=None if edge else DEFAULT_GRPC,
            help="talk to the agent service directly over gRPC"
            + ("" if edge else f" (default {DEFAULT_GRPC})"),
        )
        p.add_argument(
            "--grpc-token",
            default=os.environ.get("AGENT_RELAY_GRPC_TOKEN", ""),
            help="bearer token for a gRPC service that requires one (`agent-relay token`)",
        )
        p.add_argument(
            "--state-dir",
            type=Path,
            default=_default_state_dir(),
            help="where tokens and undelivered messages are kept",
        )

    chat = sub.add_parser("chat", help="chat with the agent in this terminal")
    chat.add_argument("--session", default="", help="reopen this session instead of a new one")
    chat.add_argument("--title", default="", help="title of a new session")
    chat.add_argument(
        "--busy-policy",
        choices=("queue", "reject", "interrupt"),
        default=None,
        help="what a message does while a reply is streaming (default: the server's)",
    )
    transport_flags(chat, edge=True)

    tools = sub.add_parser("tools", help="list the agent's tools")
    tools.add_argument("--json", action="store_true", help="print the tools as JSON")
    transport_flags(tools, edge=False)

    history = sub.add_parser("history", help="print a session's messages")
    history.add_argument("session", help="the session id")
    history.add_argument("--json", action="store_true", help="print the messages as JSON")
    transport_flags(history, edge=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit code (0 ok, 1 failed, 2 bad usage)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "tools":
            return asyncio.run(tools_command(args, sys.stdout))
        if args.command == "history":
            return asyncio.run(history_command(args, sys.stdout))
        return asyncio.run(chat_command(args, sys.stdout))
    except errors.TransportError as exc:
        where = args.grpc or getattr(args, "edge_url", "")
        print(f"agent-relay: cannot reach {where}: {exc}", file=sys.stderr)
        return 1
    except errors.AgentRelayError as exc:
        print(f"agent-relay: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# ----- remembered tokens -----------------------------------------------------------------------


class TokenStore:
    """Tokens of sessions made through an edge, in a JSON file: {edge_url: {session: token}}."""

    def __init__(self, state_dir: Path, edge_url: str) -> None:
        self.path = state_dir / "tokens.json"
        self.edge = http_url(edge_url)

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, session_id: str) -> str:
        """The remembered token for a session, or ""."""
        return str(self._read().get(self.edge, {}).get(session_id, ""))

    def put(self, session_id: str, token: str) -> None:
        """Remember a session's token (the file is private to the user)."""
        data = self._read()
        data.setdefault(self.edge, {})[session_id] = token
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name("tokens.json.tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        tmp.chmod(0o600)
        os.replace(tmp, self.path)


def _outbox_path(state_dir: Path, target: str) -> Path:
    digest = hashlib.sha256(target.encode()).hexdigest()[:12]
    return state_dir / f"outbox-{digest}.json"


# ----- tools and history -----------------------------------------------------------------------


async def tools_command(args: argparse.Namespace, out: TextIO) -> int:
    """Print the agent's tools."""
    async with AgentClient(args.grpc, token=args.grpc_token or None) as agent:
        tools = await agent.list_tools()
    if args.json:
        out.write(json.dumps([t.__dict__ for t in tools], indent=2) + "\n")
        return 0
    width = max((len(t.name) for t in tools), default=4)
    for tool in tools:
        params = ", ".join(tool.parameters.get("properties", {}))
        summary = tool.description.split(". ", 1)[0].rstrip(".") + "."
        out.write(f"{tool.name:<{width}}  {summary}\n")
        out.write(f"{'':<{width}}  args: {params or '-'}; timeout {tool.timeout_s:g} s\n")
    return 0


async def history_command(args: argparse.Namespace, out: TextIO) -> int:
    """Print a session's messages."""
    if args.grpc:
        async with AgentClient(args.grpc, token=args.grpc_token or None) as agent:
            history = await agent.history(args.session)
    else:
        token = args.token or TokenStore(args.state_dir, args.edge_url).get(args.session)
        if not token:
            print(
                f"agent-relay: no token for {args.session}: pass --token or use --grpc",
                file=sys.stderr,
            )
            return 2
        edge = EdgeClient(args.edge_url, token=token, origin=args.origin)
        try:
            history = await edge.history(args.session)
        finally:
            await edge.close()
    if args.json:
        out.write(json.dumps([m.__dict__ for m in history.messages], indent=2) + "\n")
        return 0
    # In the order it happened: a reply's text, then the calls it made, then their results.
    for m in history.messages:
        if m.role == "tool":
            out.write(f"  [{'failed' if m.status == 'failed' else 'result'}: {m.text}]\n")
            continue
        status = "" if m.status == "complete" else f" [{m.status}]"
        if m.text or m.role == "user" or (status and not m.tool_calls):
            out.write(f"{m.role}> {m.text}{status}\n".replace(">  [", "> ["))
        for call_id, name, arguments in m.tool_calls:
            out.write(f"  [tool {name} {arguments} ({call_id})]\n")
    return 0


# ----- chat ------------------------------------------------------------------------------------


async def _open_backend(args: argparse.Namespace) -> tuple[ResilientChat, str, AgentClient | None]:
    """The chat client and the session id (created, or reopened).

    Undelivered messages are kept per session (one outbox file each), so reopening a
    session delivers what an earlier, interrupted chat could not, and nothing else.
    """
    args.state_dir.mkdir(parents=True, exist_ok=True)
    if args.grpc:
        agent = AgentClient(args.grpc, token=args.grpc_token or None)
        try:
            if args.session:
                session_id = (await agent.get_session(args.session)).session_id
            else:
                session_id = (await agent.create_session(title=args.title)).session_id
        except BaseException:
            await agent.close()
            raise
        outbox = Outbox(_outbox_path(args.state_dir, f"grpc:{args.grpc}:{session_id}"))
        return agent.resilient_chat(outbox=outbox), session_id, agent
    tokens = TokenStore(args.state_dir, args.edge_url)
    session_id, token = args.session, args.token
    if session_id:
        token = token or tokens.get(session_id)
        if not token:
            raise errors.Unauthenticated(
                "unauthenticated", f"no token for {session_id}: pass --token (or AGENT_RELAY_TOKEN)"
            )
    else:
        maker = EdgeClient(args.edge_url, token=token, origin=args.origin)
        try:
            session_id = await maker.create_session(title=args.title)
            token = maker.token
        finally:
            await maker.close()
        tokens.put(session_id, token)
    edge = EdgeClient(
        args.edge_url,
        token=token,
        origin=args.origin,
        outbox_path=_outbox_path(args.state_dir, f"edge:{http_url(args.edge_url)}:{session_id}"),
        on_token=lambda fresh: tokens.put(session_id, fresh),
    )
    return edge, session_id, None


class ChatSession:
    """The terminal chat's loop: lines in, updates out, Ctrl-C handling."""

    def __init__(
        self, client: ResilientChat, session_id: str, out: TextIO, busy_policy: str = ""
    ) -> None:
        self.client = client
        self.session_id = session_id
        self.out = out
        self.busy_policy = busy_policy
        self.renderer = Renderer(out, session_id)
        self.inputs: asyncio.Queue[str | None] = asyncio.Queue()
        self.interrupts: asyncio.Queue[None] = asyncio.Queue()
        self.waiting_for = ""  # message id whose run is being awaited
        self.run_id = ""
        self.run_done = asyncio.Event()
        self.gave_up: StateChanged | None = None
        self.terminal: TerminalInput | None = None  # the line editor, on a terminal
        self.down: StateChanged | None = None  # reconnecting since, and why
        self.down_told = False
        self._down_timer: asyncio.TimerHandle | None = None
        self.upstream_down = False

    def status(self) -> str:
        """The connection's state in words, when it is not fine ("" when it is)."""
        if self.down is not None:
            return f"reconnecting ({self.down.reason or self.down.code})"
        if self.upstream_down:
            return "the agent service is unavailable"
        return ""

    def _state_changed(self, update: StateChanged) -> None:
        if update.state is State.RECONNECTING and self.down is None:
            self.down = update
            self._down_timer = asyncio.get_running_loop().call_later(
                DOWN_NOTE_AFTER_S, self._tell_down
            )
        elif update.state is State.CONNECTED:
            self.upstream_down = False  # a fresh join: the edge says so again if it is not
        if update.state is State.CONNECTED and self.down is not None:
            self.down = None
            if self._down_timer is not None:
                self._down_timer.cancel()
            if self.down_told:
                self.renderer.note("[connected again]")
            self.down_told = False

    def _tell_down(self) -> None:
        if self.down is not None:
            self.down_told = True
            self.renderer.note(f"[connection lost: {self.status()}]")

    def on_update(self, update: Update) -> None:
        """Render an update and follow the run of the message typed last."""
        self.renderer.receive(update)
        if isinstance(update, StateChanged):
            self._state_changed(update)
        elif isinstance(update, UpstreamChanged) and update.session_id == self.session_id:
            self.upstream_down = update.state != "available"
        if isinstance(update, MessageSent) and update.accepted.message_id == self.waiting_for:
            self.run_id = update.accepted.run_id
        elif isinstance(update, EventApplied):
            event = update.event
            if isinstance(event, MessageAccepted) and event.message_id == self.waiting_for:
                self.run_id = event.run_id
            elif isinstance(event, RunCompleted) and self.run_id and event.run_id == self.run_id:
                self.run_done.set()
        elif isinstance(update, HistoryLoaded) and self.run_id:
            if update.conversation.run_finished(self.run_id) is not None:
                self.run_done.set()  # it ended during a gap: history says so
        elif isinstance(update, MessageRejected) and update.message_id == self.waiting_for:
            self.run_done.set()
        elif isinstance(update, StateChanged) and update.state is State.DISCONNECTED:
            self.gave_up = update
            self.run_done.set()

    async def pump_updates(self) -> None:
        async for update in self.client.updates():
            self.on_update(update)

    async def run(self) -> int:
        """Chat until the user quits; returns the exit code."""
        pump = asyncio.create_task(self.pump_updates())
        await asyncio.sleep(0)  # let the pump subscribe before anything happens
        conv = await self.client.follow(self.session_id)
        self.out.write(f"session {self.session_id}  (Ctrl-C cancels a reply; Ctrl-D quits)\n")
        self.renderer.show_history(conv)
        if conv.active_run_id:  # a reply is streaming already: follow it like our own
            self.run_id = conv.active_run_id
            if await self._wait_for_run() == "quit":
                return await self._finish(pump, 0)
        try:
            while True:
                line = await self._next_line()
                if line is None or line.strip() in ("/quit", "/exit"):
                    self.out.write("\n")
                    return await self._finish(pump, 0)
                if not line.strip():
                    continue
                self.waiting_for = await self.client.send(
                    self.session_id, line.rstrip("\n"), busy_policy=self.busy_policy
                )
                self.renderer.own_messages.add(self.waiting_for)
                self.run_id = ""
                if await self._wait_for_run() == "quit":
                    return await self._finish(pump, 0)
                if self.gave_up is not None:
                    self.renderer.line(
                        f"[disconnected: {self.gave_up.reason or self.gave_up.code}]"
                    )
                    return await self._finish(pump, 1)
        finally:
            pump.cancel()

    async def _next_line(self) -> str | None:
        """The next typed line; None for Ctrl-D or Ctrl-C at the prompt.

        A Ctrl-C that came as the reply ended (between the reply's wait and the line
        editor taking the terminal, where it is a signal or a key of the reply's, not the
        editor's) waits in `interrupts`: it counts as pressed at the prompt, so a second
        Ctrl-C quits whenever the first one's cancel landed."""
        if self.terminal is not None:
            read: Awaitable[str | None] = self.terminal.read_line(USER)
        else:
            self.out.write(USER)
            self.out.flush()
            read = self.inputs.get()
        line_task = asyncio.ensure_future(read)
        interrupt = asyncio.ensure_future(self.interrupts.get())
        done, _ = await asyncio.wait({line_task, interrupt}, return_when="FIRST_COMPLETED")
        interrupt.cancel()
        if line_task not in done:
            line_task.cancel()  # the editor gives the terminal back before anything is printed
            with contextlib.suppress(asyncio.CancelledError):
                await line_task
        if interrupt in done:
            return None
        return line_task.result() if line_task in done else None

    async def _wait_for_run(self) -> str:
        """Wait for the awaited run's end; Ctrl-C cancels it, a second Ctrl-C quits. Keys
        typed meanwhile are kept for the prompt, never echoed into the reply."""
        if self.terminal is None:
            return await self._wait_for_run_end()
        with self.terminal.typing_ahead(lambda: self.interrupts.put_nowait(None)):
            return await self._wait_for_run_end()

    async def _wait_for_run_end(self) -> str:
        self.run_done.clear()
        interrupts = 0
        while not self.run_done.is_set():
            done_wait = asyncio.ensure_future(self.run_done.wait())
            interrupt = asyncio.ensure_future(self.interrupts.get())
            done, _ = await asyncio.wait({done_wait, interrupt}, return_when="FIRST_COMPLETED")
            done_wait.cancel()
            interrupt.cancel()
            if interrupt not in done:
                continue
            interrupts += 1
            if interrupts >= 2:
                self.renderer.line("[quit]")
                return "quit"
            self.renderer.line("[cancelling; Ctrl-C again quits]")
            await self._cancel()
        return "done"

    async def _cancel(self) -> None:
        for _ in range(2):
            try:
                if not await self.client.cancel_run(self.session_id, self.run_id):
                    # Nothing was running: the reply ended where this client could not see
                    # it (for example the service restarted). Back to the prompt.
                    self.renderer.line("[the reply had already ended]")
                    self.run_done.set()
                return
            except errors.TransportError:
                with contextlib.suppress(errors.AgentRelayError):
                    await self.client.wait_connected(timeout_s=10)
            except errors.RequestError as exc:
                self.renderer.line(f"[cancel failed: {exc}]")
                return

    async def _finish(self, pump: asyncio.Task[None], code: int) -> int:
        pump.cancel()
        return code


def _read_lines(
    loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None], stream: TextIO
) -> None:
    """Read lines in a thread (a blocking read cannot stall the event loop); None at EOF."""
    while True:
        try:
            line = stream.readline()
        except (OSError, ValueError):
            line = ""
        if loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(queue.put_nowait, line if line else None)
        if not line:
            return


async def chat_command(args: argparse.Namespace, out: TextIO) -> int:
    """Run the terminal chat: with the line editor on a terminal, reading lines otherwise."""
    client, session_id, agent = await _open_backend(args)
    try:
        if sys.stdin.isatty() and out.isatty():
            terminal = sys.stdout
            with patch_stdout(raw=True):
                screen = ScreenOut(sys.stdout, terminal)
                chat = ChatSession(
                    client, session_id, cast(TextIO, screen), busy_policy=args.busy_policy or ""
                )
                chat.terminal = TerminalInput(screen, chat.status)
                return await _chat(client, chat)
        chat = ChatSession(client, session_id, out, busy_policy=args.busy_policy or "")
        loop = asyncio.get_running_loop()
        threading.Thread(
            target=_read_lines, args=(loop, chat.inputs, sys.stdin), daemon=True
        ).start()
        return await _chat(client, chat)
    finally:
        await client.close()
        if agent is not None:
            await agent.close()


async def _chat(client: ResilientChat, chat: ChatSession) -> int:
    loop = asyncio.get_running_loop()
    # Without the line editor (or between its phases) Ctrl-C arrives as a signal.
    loop.add_signal_handler(signal.SIGINT, chat.interrupts.put_nowait, None)
    try:
        await client.start()
        return await chat.run()
    finally:
        loop.remove_signal_handler(signal.SIGINT)
