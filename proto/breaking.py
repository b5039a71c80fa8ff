"""`buf breaking` for the contract against the last landed version: `make breaking`.

What it compares with (the first that applies):

1. the git revision given as the argument or in AGENT_RELAY_BREAKING_AGAINST;
2. `main` (or `origin/main`), when it exists and is not the commit checked out
   (a branch under work);
3. `HEAD~1`, on main itself (CI checks out the main it is about to land);
4. nothing: without git history there is no earlier version, and it says so and
   exits 0.

The earlier version's proto/ is taken with `git archive` into a temporary folder.
A version from before proto/ had a buf.yaml and the vendored google/rpc/status.proto
gets today's copies of both, so that it builds offline and is judged by today's
rules. Exit code: buf's (non-zero on a breaking change), 0 when skipped.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
REPO = PROTO_ROOT.parent
DEFAULT_BUF = REPO / "tools" / "node_modules" / ".bin" / "buf"
# what a version without its own copies is given, relative to proto/
BACKFILL = ("buf.yaml", "google/rpc/status.proto")


def choose_base(
    explicit: str | None, resolve: Callable[[str], str | None]
) -> tuple[str | None, str]:
    """The revision to compare with, and why (pure: `resolve` maps a revision
    to its commit id, or None when it does not exist)."""
    if explicit:
        return explicit, f"{explicit} (asked for)"
    head = resolve("HEAD")
    if head is None:
        return None, "no git history: nothing to compare with"
    for name in ("main", "origin/main"):  # a clone of a branch has only origin/main
        main = resolve(name)
        if main is not None:
            if main != head:
                return name, name
            break
    if resolve("HEAD~1") is not None:
        return "HEAD~1", "HEAD~1 (the commit before this one on main)"
    return None, "a single commit: nothing to compare with"


def _resolve(revision: str) -> str | None:
    done = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def export_proto(revision: str, into: Path) -> Path | None:
    """Write proto/ as it was at `revision` under `into`; None if it had none."""
    done = subprocess.run(
        ["git", "archive", "--format=tar", revision, "proto"],
        cwd=REPO,
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        return None
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(into, filter="data")
    old = into / "proto"
    for relative in BACKFILL:
        if not (old / relative).exists():
            (old / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(PROTO_ROOT / relative, old / relative)
    return old


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    buf = os.environ.get("BUF", str(DEFAULT_BUF))
    explicit = args[0] if args else os.environ.get("AGENT_RELAY_BREAKING_AGAINST")
    base, why = choose_base(explicit, _resolve if shutil.which("git") else lambda _: None)
    if base is None:
        print(f"buf breaking: skipped, {why}")
        return 0
    with tempfile.TemporaryDirectory(prefix="buf-breaking-") as tmp:
        old = export_proto(base, Path(tmp))
        if old is None:
            print(f"buf breaking: skipped, {base} has no proto/")
            return 0
        print(f"buf breaking: proto/ against {why}", flush=True)
        done = subprocess.run([buf, "breaking", str(PROTO_ROOT), "--against", str(old)])
    if done.returncode == 0:
        print("buf breaking: no breaking change")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
