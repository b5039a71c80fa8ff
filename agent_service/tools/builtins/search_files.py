"""The `search_files` tool: find text in the files under the workspace folder.

The search is a case-insensitive literal match, line by line. It walks the
workspace without following symlinked folders, skips hidden entries and the
usual bulky folders (`node_modules`, `__pycache__`), binary files and files
larger than MAX_FILE_BYTES, and never reads outside the workspace. The walk
runs in a worker thread; each match streams as an output event (stream
`result`, "path:line: text") as soon as it is found, and the tool's result
lists them all. Cancellation stops the walk between files. The glob is bounded
(MAX_GLOB_CHARS, MAX_GLOB_WILDCARDS) and matched by glob_match.py, whose cost
is at most the pattern's length times the path's: no pattern can stall the walk,
nor, through the GIL, the service's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_service.tools.base import ToolContext, ToolError, ToolRegistry, ToolSpec
from agent_service.tools.builtins.glob_match import Glob
from agent_service.tools.builtins.workspace import Workspace, check_relative, looks_binary

DEFAULT_GLOB = "**/*"
DEFAULT_MAX_RESULTS = 50
LIMIT_MAX_RESULTS = 1_000
MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_LINE_CHARS = 200  # a matching line is shown up to this many characters
SKIP_DIRS = frozenset({"node_modules", "__pycache__"})
MAX_GLOB_CHARS = 256
MAX_GLOB_WILDCARDS = 24  # `*`, `?` and `[` characters together


@dataclass(frozen=True, slots=True)
class Match:
    """One matching line."""

    path: str
    line: int
    text: str

    def render(self) -> str:
        """The line as the model and the UI see it."""
        return f"{self.path}:{self.line}: {self.text}"


@dataclass(slots=True)
class SearchStats:
    """What a search looked at."""

    files_searched: int = 0
    files_skipped: int = 0
    matches: int = 0
    hit_limit: bool = False


def compile_glob(pattern: str) -> Glob:
    """The glob over workspace-relative paths (see glob_match.py). Raises ToolError.

    `*` and `?` stay within one folder level, `**` spans any number of levels,
    `[abc]` / `[!abc]` are character classes; a pattern without `/` (`*.py`)
    matches file names at any depth. A pattern longer than MAX_GLOB_CHARS or with
    more than MAX_GLOB_WILDCARDS wildcards is refused (`invalid_arguments`).
    """
    if len(pattern) > MAX_GLOB_CHARS:
        raise ToolError(f"glob is longer than {MAX_GLOB_CHARS} characters", "invalid_arguments")
    text = check_relative(pattern, what="glob").as_posix()
    if sum(text.count(char) for char in "*?[") > MAX_GLOB_WILDCARDS:
        raise ToolError(
            f"glob has more than {MAX_GLOB_WILDCARDS} wildcards; name the files more plainly",
            "invalid_arguments",
        )
    if "/" not in text and text != "**":
        text = "**/" + text
    return Glob.parse(text)


def match_lines(path: str, text: str, needle: str) -> list[Match]:
    """The lines of text that contain needle (already lower-cased), numbered from 1."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line.lower():
            shown = line.strip()
            if len(shown) > MAX_LINE_CHARS:
                shown = shown[:MAX_LINE_CHARS] + "..."
            found.append(Match(path, number, shown))
    return found


def search_tree(
    workspace: Workspace,
    query: str,
    glob: Glob,
    max_results: int,
    on_match: Callable[[Match], None],
    stop: threading.Event,
) -> SearchStats:
    """Walk the workspace calling on_match for each match. Blocking: run it in a thread."""
    stats = SearchStats()
    needle = query.lower()
    for dirpath, dirnames, filenames in os.walk(workspace.root):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".")
            and d not in SKIP_DIRS
            and workspace.is_public(Path(dirpath, d).resolve())
        )
        for name in sorted(filenames):
            if stop.is_set() or stats.hit_limit:
                return stats
            path = Path(dirpath, name)
            relative = workspace.relative(path)
            if name.startswith(".") or not glob.match(relative):
                continue
            text = _read_text(workspace, path)
            if text is None:
                stats.files_skipped += 1
                continue
            stats.files_searched += 1
            for match in match_lines(relative, text, needle):
                on_match(match)
                stats.matches += 1
                if stats.matches >= max_results:
                    stats.hit_limit = True
                    break
    return stats


def _read_text(workspace: Workspace, path: Path) -> str | None:
    """The text of a searchable file, or None (outside, unreadable, binary or too large)."""
    try:
        fd = workspace.open_inside(path.resolve())
    except ToolError:
        return None
    with os.fdopen(fd, "rb") as f:
        if os.fstat(f.fileno()).st_size > MAX_FILE_BYTES:
            return None
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES or looks_binary(data):
        return None
    return data.decode("utf-8", errors="replace")


def summarize(query: str, matches: list[Match], stats: SearchStats, max_results: int) -> str:
    """The tool's result: a count line, then every match."""
    if not matches:
        return f"no matches for {query!r} ({stats.files_searched} files searched)"
    files = len({m.path for m in matches})
    head = (
        f"{len(matches)} matches for {query!r} in {files} files "
        f"({stats.files_searched} files searched)"
    )
    if stats.hit_limit:
        head += f"; stopped at max_results={max_results}, narrow the query or glob for more"
    return head + ":\n" + "\n".join(m.render() for m in matches)


async def search(workspace: Workspace, args: dict[str, Any], ctx: ToolContext) -> str:
    """Run one search, streaming matches through ctx as the worker thread finds them."""
    query: str = args["query"]
    glob = compile_glob(args.get("glob", DEFAULT_GLOB))
    max_results = int(args.get("max_results", DEFAULT_MAX_RESULTS))
    if not workspace.root.is_dir():
        raise ToolError(f"the workspace folder {str(workspace.root)!r} does not exist", "not_found")
    loop = asyncio.get_running_loop()
    found: asyncio.Queue[Match | None] = asyncio.Queue()  # None: the walk has ended
    stop = threading.Event()

    def hand_over(item: Match | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
            loop.call_soon_threadsafe(found.put_nowait, item)

    def walk() -> SearchStats:
        try:
            return search_tree(workspace, query, glob, max_results, hand_over, stop)
        finally:
            hand_over(None)

    walking = asyncio.ensure_future(asyncio.to_thread(walk))
    matches: list[Match] = []
    try:
        while (match := await found.get()) is not None:
            matches.append(match)
            ctx.output(match.render() + "\n", "result")
        stats = await walking
    finally:
        stop.set()  # a cancelled call stops the worker thread at its next file
    return summarize(query, matches, stats, max_results)


def spec() -> ToolSpec:
    """The search_files tool's spec."""
    return ToolSpec(
        name="search_files",
        description=(
            "Search the text files of the workspace folder for a literal string "
            "(case-insensitive) and list the matching lines as 'path:line: text'. `glob` limits "
            "which files are searched, relative to the workspace: '**/*' (default) for all, "
            "'*.py' for Python files at any depth, 'src/**/*.ts' under src (at most "
            f"{MAX_GLOB_WILDCARDS} wildcards). Hidden, binary and "
            "very large files are skipped. Use read_file to see a whole file."
        ),
        parameters={
            "type": "object",
            "properties": {
                "query": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 500,
                    "description": "The text to find",
                },
                "glob": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_GLOB_CHARS,
                    "default": DEFAULT_GLOB,
                    "description": "Which files to search (default '**/*')",
                },
                "max_results": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": LIMIT_MAX_RESULTS,
                    "default": DEFAULT_MAX_RESULTS,
                    "description": f"Most matches to return (default {DEFAULT_MAX_RESULTS})",
                },
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        timeout_s=60.0,
    )


def register(registry: ToolRegistry, workspace: Workspace) -> None:
    """Add search_files over the given workspace to a registry."""

    async def search_files(args: dict[str, Any], ctx: ToolContext) -> str:
        return await search(workspace, args, ctx)

    registry.register(spec(), search_files)
