"""`make breaking`: buf breaking against the last landed version of proto/ (issue 14)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
BUF = REPO / "tools" / "node_modules" / ".bin" / "buf"


def load_breaking() -> ModuleType:
    spec = importlib.util.spec_from_file_location("breaking", REPO / "proto" / "breaking.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


breaking = load_breaking()


def resolver(known: dict[str, str]):  # type: ignore[no-untyped-def]
    return known.get


def test_an_explicit_revision_wins() -> None:
    base, _ = breaking.choose_base("v1.2.0", resolver({"HEAD": "a", "main": "b"}))
    assert base == "v1.2.0"


def test_a_branch_is_compared_with_main() -> None:
    base, _ = breaking.choose_base(None, resolver({"HEAD": "a", "main": "b", "HEAD~1": "c"}))
    assert base == "main"


def test_a_clone_of_a_branch_is_compared_with_origin_main() -> None:
    base, _ = breaking.choose_base(None, resolver({"HEAD": "a", "origin/main": "b"}))
    assert base == "origin/main"


def test_main_itself_is_compared_with_the_commit_before() -> None:
    base, _ = breaking.choose_base(None, resolver({"HEAD": "a", "main": "a", "HEAD~1": "c"}))
    assert base == "HEAD~1"
    base, _ = breaking.choose_base(None, resolver({"HEAD": "a", "HEAD~1": "c"}))  # no main
    assert base == "HEAD~1"


def test_without_history_there_is_nothing_to_compare_with() -> None:
    assert breaking.choose_base(None, resolver({}))[0] is None
    assert breaking.choose_base(None, resolver({"HEAD": "a", "main": "a"}))[0] is None


# ------------------------------------------------------------ real git, real buf


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository holding a copy of proto/ (and breaking.py, which works on
    the repository it lies in) as one commit on main."""
    if not BUF.exists():
        pytest.fail(f"{BUF} is missing: `make tools` installs buf (make test does)")
    shutil.copytree(
        REPO / "proto", tmp_path / "proto", ignore=shutil.ignore_patterns("__pycache__")
    )
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "add", "proto")
    git(tmp_path, "commit", "-q", "-m", "contract")
    return tmp_path


def run_breaking(repo: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AGENT_RELAY_BREAKING_AGAINST"}
    return subprocess.run(
        [sys.executable, str(repo / "proto" / "breaking.py")],
        env={**env, "BUF": str(BUF)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def edit_contract(repo: Path, old: str, new: str) -> None:
    path = repo / "proto" / "agent_relay" / "v1" / "agent.proto"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_a_renumbered_field_on_a_branch_is_reported(repo: Path) -> None:
    git(repo, "checkout", "-q", "-b", "work")
    edit_contract(repo, "string session_id = 1;", "string session_id = 99;")
    git(repo, "commit", "-q", "-am", "a renumbered field")
    done = run_breaking(repo)
    assert done.returncode != 0
    assert "against main" in done.stdout
    assert 'Previously present field "1" with name "session_id"' in done.stdout + done.stderr


def test_an_added_field_is_not_breaking_and_main_compares_with_its_parent(repo: Path) -> None:
    edit_contract(
        repo,
        "message ListToolsRequest {}",
        "message ListToolsRequest {\n  // new\n  string filter = 1;\n}",
    )
    git(repo, "commit", "-q", "-am", "an added field")
    done = run_breaking(repo)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "against HEAD~1" in done.stdout
    assert "no breaking change" in done.stdout


def test_a_single_commit_is_skipped_with_a_message(repo: Path) -> None:
    done = run_breaking(repo)
    assert done.returncode == 0
    assert "skipped" in done.stdout
