"""The demo model on a real event loop: what it streams, its pacing, its shared timers."""

from __future__ import annotations

import asyncio
import time

import pytest

from agent_service.providers.base import (
    ChatMessage,
    ModelError,
    StepFinished,
    TextDelta,
    ToolCallRequested,
)
from agent_service.providers.demo import FULL_SPEED_WORDS_PER_TURN, DemoModel, Pacer
from agent_service.tools.base import ToolSpec


async def _read(model: DemoModel, text: str, tools: list[ToolSpec] | None = None) -> list[object]:
    return [item async for item in model.stream([ChatMessage("user", text)], tools or [])]


async def test_a_plain_reply_streams_its_words_in_order_then_finishes() -> None:
    items = await _read(DemoModel(tokens_per_s=0, reply_words=12), "hello")
    *deltas, finished = items
    assert all(isinstance(d, TextDelta) for d in deltas)
    assert len(deltas) == 12
    text = "".join(d.text for d in deltas)  # type: ignore[attr-defined]
    assert text.startswith("You said: “hello”. ") and len(text.split()) == 12
    assert isinstance(finished, StepFinished) and finished.reason == "stop"
    assert finished.usage.output_tokens == 12


async def test_a_tool_step_streams_its_words_then_the_calls_then_its_end() -> None:
    spec = ToolSpec("calculator", "calc", {"type": "object"})
    items = await _read(DemoModel(tokens_per_s=0), "calc 2 * 3", [spec])
    kinds = [type(i).__name__ for i in items]
    assert kinds[-2:] == ["ToolCallRequested", "StepFinished"]
    call = items[-2]
    assert isinstance(call, ToolCallRequested) and call.name == "calculator"
    assert isinstance(items[-1], StepFinished) and items[-1].reason == "tool_calls"
    assert "".join(i.text for i in items if isinstance(i, TextDelta)) == "Calling calculator.\n\n"


async def test_at_full_speed_the_loop_runs_others_every_few_words_one_delta_each() -> None:
    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    words = 4 * FULL_SPEED_WORDS_PER_TURN
    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # the ticker has started
    turns = 0
    items = await _read(DemoModel(tokens_per_s=0, reply_words=words), "hello")
    task.cancel()
    deltas = [i for i in items if isinstance(i, TextDelta)]
    assert len(deltas) == words  # still one word per delta
    # a turn before the first word and one every FULL_SPEED_WORDS_PER_TURN words, not per word
    assert turns == 4


async def test_fail_raises_a_model_error_when_read() -> None:
    stream = DemoModel(tokens_per_s=0).stream([ChatMessage("user", "/fail")], [])
    with pytest.raises(ModelError) as caught:
        await anext(aiter(stream))
    assert caught.value.code == "model_error"


async def test_paced_words_never_come_before_their_time() -> None:
    rate = 200.0
    loop = asyncio.get_running_loop()
    start = loop.time()
    seen: list[tuple[float, int]] = []
    count = 0
    async for item in DemoModel(tokens_per_s=rate, reply_words=10).stream(
        [ChatMessage("user", "hi")], []
    ):
        if isinstance(item, TextDelta):
            count += len(item.text.split())
            seen.append((loop.time(), count))
    assert count == 10
    for at, words_so_far in seen:  # the k-th word is due k / rate after the start
        assert at >= start + words_so_far / rate - 0.005


async def test_words_that_fell_due_while_the_loop_was_busy_come_together() -> None:
    model = DemoModel(tokens_per_s=100.0, reply_words=20)
    stream = model.stream([ChatMessage("user", "hi")], [])
    first = await anext(aiter(stream))
    time.sleep(0.1)  # noqa: ASYNC251 (the process is busy for ten words' time)
    rest = [item async for item in stream]
    deltas = [first, *(i for i in rest if isinstance(i, TextDelta))]
    assert len("".join(d.text for d in deltas).split()) == 20  # type: ignore[attr-defined]
    assert len(deltas) < 20  # some deltas carry several words


async def test_waiters_due_in_one_tick_share_it_and_a_cancel_stops_only_its_waiter() -> None:
    pacer = Pacer(0.05)
    loop = asyncio.get_running_loop()
    tick_start = (int(loop.time() / 0.05) + 2) * 0.05
    cancelled = asyncio.ensure_future(pacer.until(tick_start + 0.01, loop))
    kept = asyncio.ensure_future(pacer.until(tick_start + 0.02, loop))
    other_tick = asyncio.ensure_future(pacer.until(tick_start + 0.07, loop))
    await asyncio.sleep(0)
    cancelled.cancel()
    await kept
    assert loop.time() >= tick_start + 0.02 - 0.002
    assert cancelled.cancelled() and not other_tick.done()
    await other_tick
    assert loop.time() >= tick_start + 0.07 - 0.002


def test_a_pacer_used_on_a_new_loop_still_wakes() -> None:
    pacer = Pacer(0.01)
    target: list[float] = []

    async def leave_a_waiter() -> None:  # its loop closes before the tick's timer fires
        target.append(asyncio.get_running_loop().time() + 0.3)
        pacer.until(target[0], asyncio.get_running_loop())

    async def wait_in_the_same_tick() -> None:
        await asyncio.wait_for(pacer.until(target[0], asyncio.get_running_loop()), 5.0)

    asyncio.run(leave_a_waiter())
    asyncio.run(wait_in_the_same_tick())
