"""The calculator: what it computes, what it refuses, and its events."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
from tool_test_support import registry_for, run_tool, scaled

from agent_service.tools.base import ToolError
from agent_service.tools.builtins.calculator import MAX_ROUND_DIGITS, evaluate, format_number


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("2 ** 10", 1024),
        ("2 ^ 10", 1024),
        ("-3 ** 2", -9),
        ("7 // 2 + 7 % 2", 4),
        ("10 / 4", 2.5),
        ("sqrt(16)", 4.0),
        ("abs(-3) + round(2.567, 2)", 5.57),
        ("min(3, 1, 2) + max(3, 1, 2)", 4),
        ("factorial(10)", 3628800),
        ("log(e) + log(8, 2) + log10(1000)", 7.0),
        ("exp(0) + floor(2.7) + ceil(2.1)", 6),
        ("gcd(12, 18)", 6),
        ("2 ** -1", 0.5),
    ],
)
def test_values(expression: str, expected: float) -> None:
    assert evaluate(expression) == pytest.approx(expected)


def test_trigonometry_in_radians() -> None:
    assert evaluate("sin(pi / 2)") == pytest.approx(1.0)
    assert evaluate("cos(0) + tan(0)") == pytest.approx(1.0)
    assert evaluate("degrees(atan2(1, 1))") == pytest.approx(45.0)
    assert evaluate("sqrt(2) * sin(pi / 4)") == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (4.0, "4"),
        (1024, "1024"),
        (0.1 + 0.2, "0.3"),
        (math.pi, "3.14159265358979"),
        (1e20, "1e+20"),
    ],
)
def test_format(value: float, text: str) -> None:
    assert format_number(value) == text


@pytest.mark.parametrize(
    ("expression", "code", "fragment"),
    [
        ("__import__('os').system('true')", "invalid_arguments", "unknown function"),
        ("().__class__", "invalid_arguments", "unsupported syntax"),
        ("open", "invalid_arguments", "unknown name 'open'"),
        ("[1, 2]", "invalid_arguments", "unsupported syntax"),
        ("x if 1 else 2", "invalid_arguments", "unsupported syntax"),
        ("'a' * 3", "invalid_arguments", "not a number"),
        ("round(2.5, ndigits=1)", "invalid_arguments", "keyword arguments"),
        ("1 +", "invalid_arguments", "cannot parse"),
        ("   ", "invalid_arguments", "empty"),
        ("1 / 0", "error", "division by zero"),
        ("sqrt(-1)", "error", "math error"),
        ("(-8) ** 0.5", "error", "complex"),
        ("9 ** 9 ** 9", "limit_exceeded", "4096-bit limit"),
        ("2 ** 5000", "limit_exceeded", "4096-bit limit"),
        ("factorial(100000)", "limit_exceeded", "n <= 1000"),
        (
            "10 ** 1000 * 10 ** 1000 * 10 ** 1000 * 10 ** 1000 * 10 ** 1000",
            "limit_exceeded",
            "limit",
        ),
        ("exp(1000)", "limit_exceeded", "too large"),
        ("-" * 100 + "1", "limit_exceeded", "nested deeper"),
        ("1+" * 400 + "1", "limit_exceeded", "nested deeper"),
        ("1" * 1001, "limit_exceeded", "longer than 1000"),
    ],
)
def test_refusals(expression: str, code: str, fragment: str) -> None:
    with pytest.raises(ToolError) as caught:
        evaluate(expression)
    assert caught.value.code == code
    assert fragment in caught.value.message


async def test_through_the_runner(tmp_path: Path) -> None:
    registry = registry_for(tmp_path)
    call = await run_tool(registry, "calculator", {"expression": "(3 + 4) * 2 ** 10"})
    assert call.kinds == ["started", "completed"]
    assert call.final.completed.result == "7168"
    assert call.outcome.result == "7168"

    call = await run_tool(registry, "calculator", {"expression": "1/0"})
    assert call.kinds == ["started", "failed"]
    assert call.final.failed.code == "error"
    assert call.outcome.result == "error (error): division by zero"


async def test_schema_problems_are_named(tmp_path: Path) -> None:
    registry = registry_for(tmp_path)
    call = await run_tool(registry, "calculator", {"expr": "1"})
    assert call.kinds == ["started", "failed"]
    assert call.final.failed.code == "invalid_arguments"
    assert "'expression' is a required property" in call.final.failed.message


async def ticks_within(count: int, bound_s: float) -> int:
    """How many of `count` 10 ms sleeps the loop completed within bound_s of loop time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    done = 0
    while done < count and loop.time() < deadline:
        await asyncio.sleep(0.01)
        done += 1
    return done if loop.time() <= deadline else done - 1


async def test_a_huge_round_neither_blocks_the_loop_nor_outlives_the_timeout(
    tmp_path: Path,
) -> None:
    # round(1, -10000000) computed 10**10000000 on the event loop: about 9 s during which
    # nothing else ran and the 5 s tool timeout could not fire.
    registry = registry_for(tmp_path)
    call = asyncio.create_task(
        run_tool(registry, "calculator", {"expression": "round(1, -10000000)"})
    )
    await asyncio.sleep(0)  # the call has started
    assert await ticks_within(20, scaled(3.0)) == 20  # 0.2 s on an idle loop
    outcome = await call
    assert outcome.kinds == ["started", "failed"]
    assert outcome.final.failed.code == "limit_exceeded"
    assert "round()" in outcome.final.failed.message


def test_round_digits_are_bounded() -> None:
    assert evaluate("round(123456, -3)") == 123000
    assert evaluate(f"round(1.5, {MAX_ROUND_DIGITS})") == 1.5
    with pytest.raises(ToolError) as caught:
        evaluate(f"round(1, -{MAX_ROUND_DIGITS + 1})")
    assert caught.value.code == "limit_exceeded"
