"""What the SDK-based model providers cost per streamed chunk.

A local fake (tests/support/fake_openai.py, fake_anthropic.py, on 127.0.0.1) streams
one reply of --chunks text pieces; each row reads it whole, --runs times:

- the provider (`openai` on AsyncOpenAI, `anthropic` on AsyncAnthropic), to its last
  event, beside
- a bare aiohttp client reading the same stream and json-decoding each `data:` line,
  the least any client does.

Figures: chunks/s (median run) and time to the first text delta (p50 / p99).

    .venv/bin/python bench/provider_bench.py [--chunks 2000] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_service.providers.anthropic import AnthropicProvider
from agent_service.providers.base import ChatMessage, ModelProvider, TextDelta
from agent_service.providers.openai import OpenAIProvider
from bench.common import summary_ms, table
from tests.support import fake_anthropic, fake_openai
from tests.support.fake_http import FakeModelServer, Reply

HI = [ChatMessage(role="user", content="hi")]


async def through_provider(provider: ModelProvider) -> tuple[float, float, int]:
    """(total s, first delta s, text events) of one step."""
    start = time.perf_counter()
    first = 0.0
    count = 0
    async for event in provider.stream(HI, []):
        if isinstance(event, TextDelta):
            count += 1
            if count == 1:
                first = time.perf_counter() - start
    return time.perf_counter() - start, first, count


async def bare(
    http: aiohttp.ClientSession, url: str, body: dict[str, object], headers: dict[str, str]
) -> tuple[float, float, int]:
    """The same stream read with aiohttp, each data line decoded with json."""
    start = time.perf_counter()
    first = 0.0
    count = 0
    async with http.post(url, json=body, headers=headers) as response:
        async for line in response.content:
            if line.startswith(b"data: {"):
                json.loads(line[6:])
                count += 1
                if count == 2:  # the first carrying text (after the opening event)
                    first = time.perf_counter() - start
    return time.perf_counter() - start, first, count


async def measure(
    fake: FakeModelServer,
    reply: Callable[[], Reply],
    provider: Callable[[], ModelProvider],
    url: str,
    body: dict[str, object],
    headers: dict[str, str],
    chunks: int,
    runs: int,
) -> list[list[object]]:
    rows: list[list[object]] = []
    results: dict[str, list[tuple[float, float, int]]] = {"provider": [], "bare aiohttp": []}
    async with aiohttp.ClientSession() as http:
        for _ in range(runs):
            fake.script(reply())
            model = provider()
            try:
                results["provider"].append(await through_provider(model))
            finally:
                await model.aclose()
            fake.script(reply())
            results["bare aiohttp"].append(await bare(http, url, body, headers))
    for name, samples in results.items():
        total = statistics.median(s[0] for s in samples)
        rows.append(
            [name, f"{chunks / total:,.0f}", summary_ms([s[1] for s in samples]), samples[0][2]]
        )
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    pieces = [f"w{i} " for i in range(args.chunks)]
    header = ["reader", "chunks/s", "first delta ms p50 / p99", "events"]

    async with fake_openai.FakeOpenAI() as oa:
        rows = await measure(
            oa,
            lambda: fake_openai.text_reply(*pieces),
            lambda: OpenAIProvider(base_url=oa.url, api_key="k", model="m", max_retries=0),
            oa.url + "/chat/completions",
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            {},
            args.chunks,
            args.runs,
        )
    table(f"openai provider, {args.chunks} chunks, {args.runs} runs", header, rows)

    async with fake_anthropic.FakeAnthropic() as an:
        rows = await measure(
            an,
            lambda: fake_anthropic.text_reply(*pieces),
            lambda: AnthropicProvider(base_url=an.url, api_key="k", model="m", max_retries=0),
            an.url + "/v1/messages",
            {
                "model": "m",
                "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            },
            {"anthropic-version": "2023-06-01"},
            args.chunks,
            args.runs,
        )
    table(f"anthropic provider, {args.chunks} chunks, {args.runs} runs", header, rows)


if __name__ == "__main__":
    asyncio.run(main())
