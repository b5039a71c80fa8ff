"""`demo`: a built-in scripted model. No network, no weights: it is a demo.

It is deterministic: the same conversation gives the same reply. It streams one
word at a time at `tokens_per_s` words per second (0: as fast as possible, with a
turn of the event loop every FULL_SPEED_WORDS_PER_TURN words).

What it does with the last user message:

- Lines that ask for a tool make it call that tool (several lines: several calls,
  run concurrently), then summarise the results in its next step:

  | say (one request per line)             | it calls                                  |
  | -------------------------------------- | ----------------------------------------- |
  | `calc 2 * (3 + 4)` / `calculate ...`   | `calculator {"expression": "2 * (3 + 4)"}` |
  | `python: print(6 * 7)` (rest of text)  | `python {"code": "print(6 * 7)"}`         |
  | a fenced block: ```` ```python ... ``` ```` | `python {"code": ...}`               |
  | `search for TODO` / `search TODO`      | `search_files {"query": "TODO"}`          |
  | `read README.md` / `read file X`       | `read_file {"path": "README.md"}`         |
  | `long task 10s` / `run a long task for 10 seconds` | `long_task {"seconds": 10}`    |
  | `/tool NAME {"json": "args"}`          | any tool, with those arguments            |

- `/fail` makes the step fail with a `model_error` (to see error handling).
- Anything else gets a plain reply of `reply_words` words that starts by quoting
  the message.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import re
import zlib
from collections.abc import AsyncIterator, Sequence
from typing import Literal

from agent_service.providers.base import (
    ChatMessage,
    ModelError,
    ModelEvent,
    StepFinished,
    TextDelta,
    ToolCallRequested,
    Usage,
)
from agent_service.tools.base import ToolSpec

_WORDS = (
    "streaming tokens arrive one by one through the relay so the reply appears as it is "
    "written and every event carries a sequence number that lets a client resume exactly "
    "where it stopped after a dropped connection without missing or repeating a word while "
    "tools report progress and output that anyone watching the session can follow live"
).split()

_PATTERNS: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r"^\s*(?:calc|calculate|compute)\s+(.+?)\s*$", re.I), "calculator", "expression"),
    (re.compile(r"^\s*search(?:\s+files)?(?:\s+for)?\s+(.+?)\s*$", re.I), "search_files", "query"),
    (re.compile(r"^\s*read(?:\s+file)?\s+(\S+)\s*$", re.I), "read_file", "path"),
)
_LONG_TASK = re.compile(r"long[\s_-]*task\D{0,12}?(\d+(?:\.\d+)?)\s*(?:s\b|sec|second)", re.I)
_PYTHON_LINE = re.compile(r"^\s*python:\s*", re.I | re.M)
_PYTHON_BLOCK = re.compile(r"```(?:python|py)\s*\n(.*?)```", re.S | re.I)
_TOOL_COMMAND = re.compile(r"^\s*/tool\s+(\w+)\s*(\{.*\})?\s*$", re.S)


def requested_tools(text: str) -> list[tuple[str, dict[str, object]]]:
    """The tool calls a user message asks for, in the order asked."""
    command = _TOOL_COMMAND.match(text)
    if command:
        args = json.loads(command.group(2)) if command.group(2) else {}
        return [(command.group(1), args)]
    calls: list[tuple[str, dict[str, object]]] = []
    block = _PYTHON_BLOCK.search(text)
    if block:
        calls.append(("python", {"code": block.group(1)}))
        text = text[: block.start()] + text[block.end() :]
    line = _PYTHON_LINE.search(text)
    if line:
        calls.append(("python", {"code": text[line.end() :]}))
        text = text[: line.start()]
    for raw in text.splitlines():
        long_task = _LONG_TASK.search(raw)
        if long_task:
            calls.append(("long_task", {"seconds": float(long_task.group(1))}))
            continue
        for pattern, tool, arg in _PATTERNS:
            match = pattern.match(raw)
            if match:
                calls.append((tool, {arg: match.group(1)}))
                break
    return calls


PACE_TICK_S = 0.002  # the demo's words are due on this grid: streams due together share a timer
FULL_SPEED_WORDS_PER_TURN = 16  # at full speed, words (one delta each) between loop turns


class Pacer:
    """Wake-ups at times rounded up to a `tick_s` grid, one loop timer per tick.

    Many paced streams wait for nearby times; `asyncio.sleep` gives each wait its
    own timer in the loop's heap, which was the demo's main cost per word (about
    half of it, measured with 300 streams at 50 words/s). Here every waiter due in
    the same tick shares the tick's timer; each still gets its own future, so a
    cancelled waiter cancels only itself. The caller names its running loop: asking
    for it (asyncio.get_running_loop(), a getpid() system call each time) was 7 % of
    the service's event loop at 300 streams."""

    def __init__(self, tick_s: float) -> None:
        self.tick_s = tick_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}

    def until(self, at: float, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """A future done at the first tick at or after `loop`'s time `at`; `loop` is the
        running loop."""
        if loop is not self._loop:  # another loop (a test's): the old ticks never fire here
            self._loop, self._waiters = loop, {}
        tick = math.ceil(at / self.tick_s)
        waiters = self._waiters.get(tick)
        if waiters is None:
            waiters = self._waiters[tick] = []
            loop.call_at(tick * self.tick_s, self._fire, tick)
        future: asyncio.Future[None] = loop.create_future()
        waiters.append(future)
        return future

    def _fire(self, tick: int) -> None:
        for future in self._waiters.pop(tick, ()):
            if not future.done():
                future.set_result(None)


def _response_id() -> str:
    """A fresh id for one step's response, as a remote model's API gives one. Not a
    secret, so not from os.urandom: uuid4's system call was a third of a plain step."""
    return f"demo-{random.getrandbits(96):024x}"


class _InputWords:
    """Words in conversations, counted from where a conversation counted before left off.

    A session's context grows by appending (the agent extends it in memory run by run,
    context.py), so a conversation that begins with one counted before (compared as
    lists: C-speed, identity first, ~3 ns a message) is counted only past it. Counting
    every message's words was the demo's one cost that grew with the conversation.
    Keeps the `limit` most recent conversations, by their first message."""

    def __init__(self, limit: int = 256) -> None:
        self._limit = limit
        self._counted: dict[int, tuple[list[ChatMessage], int]] = {}  # id(first) -> (them, words)

    def __call__(self, conversation: Sequence[ChatMessage]) -> int:
        if not conversation:
            return 0
        key = id(conversation[0])  # the list kept holds it: the id is not reused meanwhile
        messages = list(conversation)
        start, words = 0, 0
        known = self._counted.pop(key, None)
        if known is not None:
            before, counted = known
            if messages[: len(before)] == before:
                start, words = len(before), counted
        for message in messages[start:]:
            words += len(message.content.split())
        self._counted[key] = (messages, words)
        if len(self._counted) > self._limit:
            del self._counted[next(iter(self._counted))]
        return words


class DemoModel:
    """The scripted model. See the module docstring for what it understands."""

    def __init__(self, *, tokens_per_s: float = 30.0, reply_words: int = 40) -> None:
        self._delay_s = 1.0 / tokens_per_s if tokens_per_s > 0 else 0.0
        self._reply_words = reply_words
        self._input_words = _InputWords()
        self._pacer = Pacer(PACE_TICK_S)

    @property
    def name(self) -> str:
        return "demo"

    async def aclose(self) -> None:
        return None

    def stream(
        self, conversation: Sequence[ChatMessage], tools: Sequence[ToolSpec]
    ) -> AsyncIterator[ModelEvent]:
        """The step as one generator: a word passes through one generator frame, not one
        per helper (the demo's cost per word is most of a paced reply's cost here)."""
        input_tokens = self._input_words(conversation)
        last = conversation[-1] if conversation else ChatMessage(role="user")
        calls: list[ToolCallRequested] = []
        reason: Literal["stop", "tool_calls"] = "stop"
        if last.role == "tool":
            words = _summary(conversation).split(" ")
        elif last.content.strip() == "/fail":
            return _failing(ModelError("model_error", "the demo model was asked to fail (/fail)"))
        elif requested := [
            (name, args)
            for name, args in requested_tools(last.content)
            if name in {t.name for t in tools}
        ]:
            # the step's text ends with a paragraph break: the next step's text follows it
            words = f"Calling {', '.join(name for name, _ in requested)}.\n\n".split(" ")
            reason = "tool_calls"
            digest = hashlib.sha256(last.content.encode()).hexdigest()[:8]
            calls = [
                ToolCallRequested(
                    f"call_{digest}_{len(conversation)}_{index}", name, json.dumps(args)
                )
                for index, (name, args) in enumerate(requested)
            ]
        else:
            words = _plain_reply(last.content, self._reply_words)
        finished = StepFinished(
            reason,
            Usage(input_tokens, len(words)),
            response_id=_response_id(),
            response_model=self.name,
        )
        return self._paced(words, [*calls, finished])

    async def _paced(self, words: list[str], then: list[ModelEvent]) -> AsyncIterator[ModelEvent]:
        """One word per delta, paced by a schedule (time spent elsewhere does not slow
        the stream below its rate), then the items of `then`. Words that fell due while
        the process was busy go out together in one delta, as a network stream's chunks
        do for a slow reader."""
        loop = asyncio.get_running_loop()
        delay_s = self._delay_s
        due = loop.time()
        index = 0
        count = len(words)
        while index < count:
            end = index + 1
            if delay_s:
                due += delay_s
                if due > loop.time():
                    await self._pacer.until(due, loop)
                else:
                    await asyncio.sleep(0)  # behind: still let the others in
                now = loop.time()
                while end < count and due + delay_s <= now:
                    due += delay_s
                    end += 1
            elif index % FULL_SPEED_WORDS_PER_TURN == 0:
                # let the stream's readers in every few words, as a network stream's chunks
                # come several to a read: a turn of the loop per word resumed the run's
                # whole chain of coroutines per word
                await asyncio.sleep(0)
            text = words[index] if end == index + 1 else " ".join(words[index:end])
            yield TextDelta(text if end == count else text + " ")
            index = end
        for item in then:
            yield item


async def _failing(error: ModelError) -> AsyncIterator[ModelEvent]:
    """A step that fails when it is read."""
    raise error
    yield  # an async generator, so the error is raised by the first read


def _plain_reply(text: str, length: int) -> list[str]:
    quoted = " ".join(text.split())
    if len(quoted) > 60:
        quoted = quoted[:57] + "..."
    start = zlib.crc32(text.encode()) % len(_WORDS)  # the same text, the same reply
    body = [_WORDS[(start + i) % len(_WORDS)] for i in range(max(0, length - 3))]
    return ["You", "said:", f"“{quoted}”.", *body]


def _summary(conversation: Sequence[ChatMessage]) -> str:
    results: list[str] = []
    for message in reversed(conversation):
        if message.role != "tool":
            break
        result = " ".join(message.content.split())
        if len(result) > 200:
            result = result[:197] + "..."
        results.append(f"{message.name or 'the tool'} returned: {result}")
    return "Done. " + "; ".join(reversed(results)) + "."
