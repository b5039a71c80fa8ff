"""search_files and read_file: results stream, skips, and no path leads out of the workspace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tool_test_support import cancel_soon, registry_for, run_tool

from agent_service.tools.base import ToolError
from agent_service.tools.builtins.search_files import MAX_FILE_BYTES, compile_glob
from agent_service.tools.builtins.workspace import Workspace


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """A workspace with a few files, and a secret folder beside it."""
    root = tmp_path / "workspace"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "src" / "app.py").write_text("import os\n\ndef main():\n    print('Needle here')\n")
    (root / "src" / "pkg" / "util.py").write_text("# a NEEDLE in a comment\nx = 1\n")
    (root / "docs" / "notes.md").write_text("no match\nstill none\nneedle at last\n")
    (root / "image.bin").write_bytes(b"needle\x00\x01\x02" * 10)
    (root / "huge.txt").write_bytes(b"needle\n" + b"x" * MAX_FILE_BYTES)
    (root / ".hidden").write_text("needle hidden\n")
    (root / "node_modules").mkdir()
    (root / "node_modules" / "dep.js").write_text("needle in a dependency\n")
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "key.txt").write_text("needle: the secret key\n")
    return root, outside


async def test_search_streams_each_match_as_found(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    call = await run_tool(registry_for(root), "search_files", {"query": "needle"})
    call.assert_shape("completed")
    results = [e.output for e in call.events if e.WhichOneof("update") == "output"]
    assert all(r.stream == "result" for r in results)
    assert [r.text for r in results] == [
        "docs/notes.md:3: needle at last\n",
        "src/app.py:4: print('Needle here')\n",
        "src/pkg/util.py:1: # a NEEDLE in a comment\n",
    ]
    result = call.final.completed.result
    assert result.startswith("3 matches for 'needle' in 3 files")
    assert "src/app.py:4: print('Needle here')" in result
    # binary, huge, hidden and node_modules files are skipped
    for skipped in ("image.bin", "huge.txt", ".hidden", "dep.js"):
        assert skipped not in result


async def test_search_glob_and_max_results(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    registry = registry_for(root)
    call = await run_tool(registry, "search_files", {"query": "needle", "glob": "*.py"})
    assert call.output().splitlines() == [
        "src/app.py:4: print('Needle here')",
        "src/pkg/util.py:1: # a NEEDLE in a comment",
    ]
    call = await run_tool(registry, "search_files", {"query": "needle", "glob": "src/*.py"})
    assert call.output() == "src/app.py:4: print('Needle here')\n"

    call = await run_tool(registry, "search_files", {"query": "needle", "max_results": 1})
    call.assert_shape("completed")
    assert call.kinds.count("output") == 1
    assert "stopped at max_results=1" in call.final.completed.result

    call = await run_tool(registry, "search_files", {"query": "absent words"})
    assert call.kinds == ["started", "completed"]
    assert call.final.completed.result.startswith("no matches for 'absent words'")


async def test_search_does_not_follow_links_out(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (root / "linked_dir").symlink_to(outside, target_is_directory=True)
    (root / "linked_file.txt").symlink_to(outside / "key.txt")
    (root / "inner_link.py").symlink_to(root / "src" / "app.py")
    registry = registry_for(root)
    call = await run_tool(registry, "search_files", {"query": "needle"})
    assert "secret" not in call.final.completed.result
    assert "inner_link.py:4" in call.final.completed.result  # a link that stays inside is fine

    call = await run_tool(registry, "search_files", {"query": "needle", "glob": "linked_dir/*"})
    assert call.final.completed.result.startswith("no matches")


@pytest.mark.parametrize(
    ("glob", "code"),
    [
        ("../*", "invalid_arguments"),
        ("/etc/*", "invalid_arguments"),
        ("src/../../x", "invalid_arguments"),
    ],
)
async def test_search_glob_cannot_escape(tree: tuple[Path, Path], glob: str, code: str) -> None:
    root, _ = tree
    call = await run_tool(registry_for(root), "search_files", {"query": "needle", "glob": glob})
    assert call.kinds == ["started", "failed"]
    assert call.final.failed.code == code


async def test_search_cancelled_mid_way(tmp_path: Path) -> None:
    for i in range(300):
        (tmp_path / f"file{i:03}.txt").write_text("needle\n" * 5)

    def on_event(event, runner) -> None:
        if event.WhichOneof("update") == "output":
            cancel_soon(runner)

    registry = registry_for(tmp_path)
    call = await run_tool(
        registry, "search_files", {"query": "needle", "max_results": 1000}, on_event=on_event
    )
    call.assert_shape("cancelled")
    assert 1 <= call.kinds.count("output") < 1000


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("**/*", ["a", "a/b/c.txt"], []),
        ("*.py", ["a.py", "x/y/a.py"], ["a.pyc", "a.py/b"]),
        ("src/*.py", ["src/a.py"], ["src/x/a.py", "a.py"]),
        ("src/**/*.py", ["src/a.py", "src/x/y/a.py"], ["lib/a.py"]),
        ("src/**", ["src/a", "src/x/y"], ["srcs/a"]),
        ("file?.[ch]", ["file1.c", "d/fileX.h"], ["file12.c", "file1.o"]),
        ("[!a]*.md", ["b.md"], ["a.md"]),
    ],
)
def test_compile_glob(pattern: str, yes: list[str], no: list[str]) -> None:
    regex = compile_glob(pattern)
    assert [p for p in yes if not regex.match(p)] == []
    assert [p for p in no if regex.match(p)] == []


async def test_read_file(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    registry = registry_for(root)
    call = await run_tool(registry, "read_file", {"path": "src/app.py"})
    assert call.kinds == ["started", "completed"]
    assert call.final.completed.result == (root / "src" / "app.py").read_text()

    call = await run_tool(registry, "read_file", {"path": "./docs/notes.md", "max_bytes": 9})
    assert call.final.completed.result == "no match\n\n[truncated: showed the first 9 of 35 bytes]"


async def test_read_file_cuts_on_a_character_boundary(tmp_path: Path) -> None:
    (tmp_path / "snow.txt").write_text("☃☃☃", encoding="utf-8")  # 9 bytes
    call = await run_tool(registry_for(tmp_path), "read_file", {"path": "snow.txt", "max_bytes": 4})
    assert call.final.completed.result.startswith("☃\n[truncated")


@pytest.mark.parametrize(
    ("path", "code", "fragment"),
    [
        ("../secret/key.txt", "invalid_arguments", "contains '..'"),
        ("src/../../secret/key.txt", "invalid_arguments", "contains '..'"),
        ("PLACEHOLDER_ABSOLUTE", "invalid_arguments", "is absolute"),
        ("/etc/passwd", "invalid_arguments", "is absolute"),
        ("~/.ssh/id_rsa", "invalid_arguments", "is absolute"),
        ("link_out.txt", "forbidden", "leads outside the workspace"),
        ("dir_out/key.txt", "forbidden", "leads outside the workspace"),
        ("missing.txt", "not_found", "does not exist"),
        ("src", "invalid_arguments", "is a folder"),
        ("image.bin", "invalid_arguments", "binary file"),
        ("bad\x00name", "invalid_arguments", "NUL"),
    ],
)
async def test_read_file_refusals(
    tree: tuple[Path, Path], path: str, code: str, fragment: str
) -> None:
    root, outside = tree
    (root / "link_out.txt").symlink_to(outside / "key.txt")
    (root / "dir_out").symlink_to(outside, target_is_directory=True)
    if path == "PLACEHOLDER_ABSOLUTE":
        path = str(outside / "key.txt")
    call = await run_tool(registry_for(root), "read_file", {"path": path})
    assert call.kinds == ["started", "failed"]
    assert call.final.failed.code == code
    assert fragment in call.final.failed.message
    assert "secret key" not in call.final.failed.message


def test_an_opened_file_is_checked_through_its_descriptor(tree: tuple[Path, Path]) -> None:
    # A path that passed resolve() but is swapped for a link out before the open.
    root, outside = tree
    workspace = Workspace.at(root)
    checked = workspace.resolve("docs/notes.md")
    os.replace(root / "docs", root / "docs_moved")
    (root / "docs").symlink_to(outside, target_is_directory=True)
    (outside / "notes.md").write_text("secret\n")
    with pytest.raises(ToolError) as caught:
        workspace.open_inside(checked)
    assert caught.value.code == "forbidden"


async def test_hidden_entries_are_refused(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[remote] token\n")
    (root / "env_link.txt").symlink_to(root / ".hidden")  # a visible link to a hidden file
    registry = registry_for(root)
    for path in (".hidden", ".git/config", "env_link.txt"):
        call = await run_tool(registry, "read_file", {"path": path})
        assert call.kinds == ["started", "failed"], path
        assert call.final.failed.code == "forbidden", path
        assert "hidden" in call.final.failed.message
    call = await run_tool(registry, "search_files", {"query": "needle hidden", "glob": "*"})
    assert call.final.completed.result.startswith("no matches")


async def test_the_services_own_data_is_refused(tmp_path: Path) -> None:
    # `make run` serves the folder it runs in; the store's folder holds the token secret.
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "jwt-secret").write_text("needle: signing secret\n")
    (tmp_path / "notes.txt").write_text("needle: public\n")
    store_url = f"sqlite:///{tmp_path}/var/agent-relay.sqlite3"
    registry = registry_for(tmp_path, store_url=store_url)
    call = await run_tool(registry, "read_file", {"path": "var/jwt-secret"})
    assert call.final.failed.code == "forbidden"
    call = await run_tool(registry, "search_files", {"query": "needle"})
    assert call.final.completed.result.endswith("notes.txt:1: needle: public")
    assert "secret" not in call.final.completed.result

    # a store straight in the workspace: only its files are off limits
    (tmp_path / "agent.sqlite3").write_text("needle in the store\n")
    registry = registry_for(tmp_path, store_url=f"sqlite:///{tmp_path}/agent.sqlite3")
    call = await run_tool(registry, "read_file", {"path": "agent.sqlite3"})
    assert call.final.failed.code == "forbidden"
    call = await run_tool(registry, "read_file", {"path": "notes.txt"})
    assert call.final.completed.result == "needle: public\n"


async def test_a_store_beside_the_workspace_hides_nothing_in_it(tmp_path: Path) -> None:
    (tmp_path / "workspace").mkdir()
    (tmp_path / "workspace" / "notes.txt").write_text("hello\n")
    store_url = f"sqlite:///{tmp_path}/agent.sqlite3"  # the workspace's parent folder
    registry = registry_for(tmp_path / "workspace", store_url=store_url)
    call = await run_tool(registry, "read_file", {"path": "notes.txt"})
    assert call.final.completed.result == "hello\n"
