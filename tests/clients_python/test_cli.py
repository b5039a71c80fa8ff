"""The terminal chat driven as a person would: in a pseudo-terminal, typing, reading the
screen, pressing Ctrl-C and Ctrl-D; against the real edge and agent service."""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pexpect
import pytest

from agent_relay_client.grpc import AgentClient
from tests.clients_python.tcp_proxy import CuttableProxy
from tests.support.edge import EdgeProcess, start_edge
from tests.support.service import ServiceProcess, start_agent_service
from tests.support.timing import scaled

REPO = Path(__file__).resolve().parents[2]
# Slow enough that a person (and pexpect) can press Ctrl-C in the middle of a reply.
SLOW = ("--demo-tokens-per-s", "40", "--demo-reply-words", "160")


@pytest.fixture(scope="module")
def slow_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    proc = start_agent_service(tmp_path_factory.mktemp("cli"), *SLOW)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def slow_edge(slow_service: ServiceProcess) -> Iterator[EdgeProcess]:
    proc = start_edge(slow_service.address)
    yield proc
    proc.stop()


def spawn(*args: str) -> pexpect.spawn:
    # pexpect's terminal does not answer cursor-position requests; a real one does.
    env = {**os.environ, "PROMPT_TOOLKIT_NO_CPR": "1"}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "agent_relay_client", *args],
        cwd=str(REPO),
        encoding="utf-8",
        timeout=scaled(30),
        dimensions=(40, 200),
        env=env,
    )
    return child


# The line editor draws its prompt ("you>", then moves the cursor past the space).
PROMPT = r"you>"


def expect_prompt(child: pexpect.spawn) -> None:
    child.expect(PROMPT)


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def reply_text(screen: str) -> str:
    """The reply's words as the terminal showed them (pty line endings and the line
    editor's drawing undone), up to the next prompt."""
    text = ANSI.sub("", screen).replace("\r\n", "\n")
    if "agent> " not in text:
        return ""
    return text.split("agent> ", 1)[1].split(PROMPT, 1)[0].rstrip("\n")


async def ahistory(address: str, session: str):
    async with AgentClient(address) as agent:
        return await agent.history(session)


def history(address: str, session: str):
    return asyncio.run(ahistory(address, session))


def test_type_read_the_streamed_reply_and_cancel_one_with_ctrl_c(
    slow_edge: EdgeProcess, slow_service: ServiceProcess, tmp_path: Path
) -> None:
    child = spawn("chat", "--edge-url", slow_edge.url, "--state-dir", str(tmp_path))
    try:
        child.expect(r"session (s_\w+)")
        session = child.match.group(1)
        expect_prompt(child)
        child.sendline('/tool calculator {"expression": "6 * 7"}')
        child.expect_exact('[tool calculator(expression="6 * 7")]')
        child.expect(r"\[calculator done in \d+ ms: 42\]")
        expect_prompt(child)

        child.sendline("tell me a long story")
        child.expect_exact("agent> ")
        child.expect(r"(\w+ ){8}")  # several words arrived: it is streaming
        child.sendintr()  # Ctrl-C
        child.expect_exact("[cancelling; Ctrl-C again quits]")
        child.expect_exact("[cancelled]")
        expect_prompt(child)
        messages = history(slow_service.address, session).messages
        assert messages[-1].role == "assistant" and messages[-1].status == "cancelled"
        assert 0 < len(messages[-1].text.split()) < 160

        child.sendintr()  # Ctrl-C at the prompt quits
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        child.close(force=True)

    # the session's token was remembered: its history reads through the edge by id alone
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent_relay_client",
            "history",
            session,
            "--edge-url",
            slow_edge.url,
            "--state-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert shown.returncode == 0, shown.stderr
    assert "user> tell me a long story\n" in shown.stdout
    assert shown.stdout.rstrip().endswith("[cancelled]")


def test_a_second_ctrl_c_quits_and_the_session_reopens_with_its_history(
    slow_edge: EdgeProcess, tmp_path: Path
) -> None:
    child = spawn("chat", "--edge-url", slow_edge.url, "--state-dir", str(tmp_path))
    try:
        child.expect(r"session (s_\w+)")
        session = child.match.group(1)
        expect_prompt(child)
        child.sendline("remember the word pelican")
        child.expect(r"agent> (\S+ ){5}")
        child.sendintr()
        child.expect_exact("[cancelling; Ctrl-C again quits]")
        # The second press quits, whether or not the cancel has landed by then (two presses
        # within a few ms coalesce into one signal in the terminal, so wait for the first).
        child.sendintr()
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        child.close(force=True)

    again = spawn(
        "chat", "--edge-url", slow_edge.url, "--state-dir", str(tmp_path), "--session", session
    )
    try:
        again.expect_exact(f"session {session}")
        again.expect_exact("you> remember the word pelican")
        again.expect(r"agent> You said: \S+ ")
        again.expect_exact(" [cancelled]")  # the reply the first Ctrl-C stopped
        expect_prompt(again)
        again.sendeof()  # Ctrl-D quits
        again.expect(pexpect.EOF)
        again.close()
        assert again.exitstatus == 0, again.before
    finally:
        again.close(force=True)


async def test_a_ctrl_c_that_comes_as_the_reply_ends_counts_at_the_prompt() -> None:
    # The test above once saw the chat sit at its prompt after the second Ctrl-C: the first
    # one's cancel had landed, and the second came before the line editor had the terminal
    # (a signal then, which only the reply's wait listened for). Here the editor waits for
    # a line that never comes, and the interrupt is already pending, or comes while it waits.
    from agent_relay_client.cli import ChatSession
    from agent_relay_client.resilient import ResilientChat
    from agent_relay_client.terminal import TerminalInput

    class Editor:
        given_back = 0

        async def read_line(self, prompt: str) -> str | None:
            try:
                await asyncio.Event().wait()
            finally:
                self.given_back += 1
            return None

    editor = Editor()
    chat = ChatSession(cast(ResilientChat, None), "s_test", io.StringIO())
    chat.terminal = cast(TerminalInput, editor)
    chat.interrupts.put_nowait(None)  # pressed as the reply ended
    assert await asyncio.wait_for(chat._next_line(), scaled(5)) is None
    asyncio.get_running_loop().call_later(0.05, chat.interrupts.put_nowait, None)
    assert await asyncio.wait_for(chat._next_line(), scaled(5)) is None
    assert editor.given_back == 2  # each time the editor let go of the terminal first


@pytest.mark.parametrize("transport", ["edge", "grpc"])
def test_the_reply_survives_a_dropped_connection_without_the_user_noticing(
    transport: str, slow_edge: EdgeProcess, slow_service: ServiceProcess, tmp_path: Path
) -> None:
    async def run() -> None:
        behind = (
            slow_edge.url.removeprefix("http://") if transport == "edge" else slow_service.address
        )
        proxy = CuttableProxy(behind)
        address = await proxy.start()
        target = ["--edge-url", f"http://{address}"] if transport == "edge" else ["--grpc", address]
        child = spawn("chat", *target, "--state-dir", str(tmp_path))
        try:
            await asyncio.to_thread(child.expect, r"session (s_\w+)")
            session = child.match.group(1)
            await asyncio.to_thread(expect_prompt, child)
            child.sendline("talk through a cut")
            await asyncio.to_thread(child.expect, r"agent> (\S+ ){10}")
            shown = child.after
            assert proxy.cut() > 0
            await asyncio.to_thread(expect_prompt, child)
            screen = shown + child.before
            assert proxy.connections >= 2
            assert "[" not in reply_text(screen)  # no error, no note: the user saw nothing
            final = (await ahistory(slow_service.address, session)).messages[-1]
            assert final.status == "complete"
            assert reply_text(screen) == final.text
            child.sendeof()
            await asyncio.to_thread(child.expect, pexpect.EOF)
        finally:
            child.close(force=True)
            await proxy.close()

    asyncio.run(run())


def test_chat_straight_over_grpc_shows_tool_progress(
    slow_service: ServiceProcess, tmp_path: Path
) -> None:
    child = spawn("chat", "--grpc", slow_service.address, "--state-dir", str(tmp_path))
    try:
        child.expect(r"session (s_\w+)")
        expect_prompt(child)
        child.sendline("long task 1s")
        child.expect(r"\[tool long_task\(seconds=1(\.0)?\)\]")
        child.expect(r"\[long_task \d+%")
        child.expect(r"\[long_task done in \d+ ms")
        expect_prompt(child)
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


def test_tools_and_history_commands(slow_service: ServiceProcess, tmp_path: Path) -> None:
    run = [sys.executable, "-m", "agent_relay_client"]
    tools = subprocess.run(
        [*run, "tools", "--grpc", slow_service.address],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert tools.returncode == 0, tools.stderr
    assert re.search(r"^calculator\s+\S", tools.stdout, re.M)
    assert "long_task" in tools.stdout

    async def make() -> str:
        async with AgentClient(slow_service.address) as agent:
            session = (await agent.create_session()).session_id
            await agent.chat(session, "calc 1 + 2").wait()
            return session

    session = asyncio.run(make())
    shown = subprocess.run(
        [*run, "history", session, "--grpc", slow_service.address],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("user> calc 1 + 2\n")
    assert "[tool calculator" in shown.stdout and "[result: 3]" in shown.stdout
    missing = subprocess.run(
        [*run, "history", "s_nope", "--grpc", slow_service.address],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert missing.returncode == 1 and "not_found" in missing.stderr


def test_text_typed_during_a_reply_never_lands_in_it(
    slow_edge: EdgeProcess, slow_service: ServiceProcess, tmp_path: Path
) -> None:
    child = spawn("chat", "--edge-url", slow_edge.url, "--state-dir", str(tmp_path))
    try:
        child.expect(r"session (s_\w+)")
        session = child.match.group(1)
        expect_prompt(child)
        child.sendline("tell me a long story")
        child.expect(r"agent> (\S+ ){5}")
        shown = child.after
        child.send("and a second one\r")  # a whole line, typed while the reply streams
        child.send("draft")  # and the start of another
        # The finished line goes next, as if typed at the prompt...
        child.expect_exact("you> and a second one\r\n")
        screen = shown + child.before
        first = history(slow_service.address, session).messages
        assert reply_text(screen) == first[1].text  # the reply, and nothing typed, in order
        assert "draft" not in screen and "second one" not in screen
        child.expect(r"agent> You said: “and a second one”")
        expect_prompt(child)
        # ...and the started one waits in the editor.
        child.expect_exact("draft")
        child.sendline(" finished")
        child.expect(r"agent> You said: “draft finished”")
        expect_prompt(child)
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    texts = [m.text for m in history(slow_service.address, session).messages if m.role == "user"]
    assert texts == ["tell me a long story", "and a second one", "draft finished"]


def test_the_chat_says_while_the_system_is_down(tmp_path: Path) -> None:
    service = start_agent_service(tmp_path / "svc", "--demo-tokens-per-s", "200")
    edge = start_edge(service.address)
    child = spawn("chat", "--edge-url", edge.url, "--state-dir", str(tmp_path / "state"))
    try:
        child.expect(r"session (s_\w+)")
        expect_prompt(child)
        child.sendline("hello")
        child.expect(r"agent> You said: “hello”")
        expect_prompt(child)
        service.kill()
        child.expect_exact("[the agent service is unavailable: waiting for it to come back]")
        service = start_agent_service(
            tmp_path / "svc", store_path=service.store_path, listen=service.address
        )
        child.expect_exact("[the agent service is back]")
        port = edge.port
        edge.stop()
        child.expect(r"\[connection lost: reconnecting")
        edge = start_edge(service.address, listen=f"127.0.0.1:{port}")
        child.expect_exact("[connected again]")
        expect_prompt(child)
        child.sendline("still there?")
        child.expect(r"agent> You said: “still there\?”")
        child.expect(r"\n")  # the reply's end
        expect_prompt(child)
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
        edge.stop()
        service.stop()
