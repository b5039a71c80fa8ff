"""search_files' globs: a pathological pattern neither freezes the service nor is accepted
without bound (issue 12, item 3)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tool_test_support import registry_for, run_tool, scaled

from agent_service.tools.base import ToolError
from agent_service.tools.builtins.search_files import (
    MAX_GLOB_CHARS,
    MAX_GLOB_WILDCARDS,
    compile_glob,
)

# Nine `*?` pairs against a 40-character name took a backtracking regex about 3 s per file,
# holding the GIL throughout: the event loop (health checks, every other session) stood still.
BAD_GLOB = "*?" * 9 + "Q"


async def ticks_within(count: int, bound_s: float) -> int:
    """How many of `count` short sleeps the loop completed within bound_s of loop time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    done = 0
    while done < count and loop.time() < deadline:
        await asyncio.sleep(0.01)
        done += 1
    return done if loop.time() <= deadline else done - 1


async def test_a_backtracking_glob_does_not_stall_the_loop(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"{'a' * 40}{i}").write_text("needle\n")
    (tmp_path / f"{'b' * 20}Q").write_text("needle\n")
    registry = registry_for(tmp_path)
    search = asyncio.create_task(
        run_tool(registry, "search_files", {"query": "needle", "glob": BAD_GLOB})
    )
    await asyncio.sleep(0.05)  # the walk has started in its thread
    # Twenty 10 ms sleeps take 0.2 s on an idle loop; a stalled loop misses the bound.
    assert await ticks_within(20, scaled(3.0)) == 20
    call = await search
    call.assert_shape("completed")
    assert call.final.completed.result.startswith("1 matches for 'needle' in 1 files")


def test_the_matcher_does_not_backtrack_exponentially() -> None:
    glob = compile_glob("*?" * (MAX_GLOB_WILDCARDS // 2) + "Q")
    assert not glob.match("a" * 4_000)  # quadratic at worst: a few ms
    assert glob.match("a" * 4_000 + "Q")


@pytest.mark.parametrize(
    "glob",
    ["*" * (MAX_GLOB_WILDCARDS + 1), "a" * (MAX_GLOB_CHARS + 1), "?" * (MAX_GLOB_WILDCARDS + 1)],
)
async def test_an_unbounded_glob_is_refused(tmp_path: Path, glob: str) -> None:
    call = await run_tool(registry_for(tmp_path), "search_files", {"query": "x", "glob": glob})
    assert call.kinds == ["started", "failed"]
    assert call.final.failed.code == "invalid_arguments"
    with pytest.raises(ToolError):
        compile_glob(glob)


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("*a*b*c", ["abc", "xaxbxc", "d/aabbcc"], ["acb", "abc/d", "ab"]),
        ("[]x]?", ["]a", "xb"], ["ab", "]"]),
        ("[a-c-]z", ["bz", "-z"], ["dz"]),
        ("[!a-c]z", ["dz"], ["bz"]),
        ("**", ["a", "a/b"], []),
        ("a/**/b", ["a/b", "a/x/y/b"], ["a/xb", "b"]),
        ("**/x/**", ["x/a", "p/x/q/r"], ["x", "p/x"]),
        ("a?c", ["abc"], ["a/c", "ac"]),
        ("[a", ["[a", "d/[a"], ["a"]),
    ],
)
def test_glob_semantics(pattern: str, yes: list[str], no: list[str]) -> None:
    glob = compile_glob(pattern)
    assert [p for p in yes if not glob.match(p)] == []
    assert [p for p in no if glob.match(p)] == []
