"""The workspace folder the file tools may read, and the rule that keeps them in it.

A path a model gives is refused before any file is opened when it is absolute,
contains a `..` component or a NUL (code `invalid_arguments`). It is then
resolved (following symlinks) and refused when the result lies outside the
workspace (code `forbidden`): a symlink pointing out is caught here. A file
opened this way is checked once more through its open descriptor, so a link
swapped in between the check and the open cannot lead out either.

Inside the workspace, hidden entries (a path component starting with `.`, such
as `.env` or `.git/`) and the service's own data (`excluded`, for example the
folder of its store) are refused too (code `forbidden`): when the workspace is
the folder the service runs in, they hold its secrets.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from agent_service.tools.base import ToolError

BINARY_SNIFF_BYTES = 8_192  # a NUL in the first 8 KiB marks a file as binary


@dataclass(frozen=True, slots=True)
class Workspace:
    """A folder and the containment rule for paths under it."""

    root: Path
    excluded: tuple[Path, ...] = ()

    @classmethod
    def at(cls, folder: Path, excluded: tuple[Path, ...] = ()) -> Workspace:
        """The workspace at folder, less the excluded paths (all resolved now: later
        path checks compare against them)."""
        return cls(
            Path(folder).expanduser().resolve(),
            tuple(Path(p).expanduser().resolve() for p in excluded),
        )

    def resolve(self, user_path: str) -> Path:
        """The real path of user_path inside the workspace. Raises ToolError."""
        relative = check_relative(user_path, what="path")
        resolved = (self.root / relative).resolve()
        if not self.contains(resolved):
            raise ToolError(f"{user_path!r} leads outside the workspace", "forbidden")
        self.check_public(resolved, user_path)
        return resolved

    def is_public(self, path: Path) -> bool:
        """False for a hidden entry, the service's own data, or a path outside (resolved)."""
        if not self.contains(path):
            return False
        if any(part.startswith(".") for part in path.relative_to(self.root).parts):
            return False
        return not any(path == p or path.is_relative_to(p) for p in self.excluded)

    def check_public(self, path: Path, shown: str) -> None:
        """Raise ToolError (forbidden) unless is_public(path)."""
        if not self.is_public(path):
            raise ToolError(
                f"{shown!r} is hidden or holds the service's own data; it cannot be read",
                "forbidden",
            )

    def contains(self, path: Path) -> bool:
        """True when the (already resolved) path is the root or below it."""
        return path == self.root or path.is_relative_to(self.root)

    def relative(self, path: Path) -> str:
        """path as shown to the model: relative to the root, with forward slashes.

        A path outside is shown by its name alone: messages never reveal what lies outside.
        """
        if not self.contains(path):
            return path.name
        return path.relative_to(self.root).as_posix() or "."

    def open_inside(self, path: Path) -> int:
        """Open a resolved path for reading; the descriptor is checked to be inside too.

        Returns a raw file descriptor the caller closes. Raises ToolError when the
        file is missing, not a regular file, or turns out to be outside.
        """
        if not self.contains(path):
            raise ToolError(f"{path.name!r} leads outside the workspace", "forbidden")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ToolError(f"{self.relative(path)!r} does not exist", "not_found") from None
        except IsADirectoryError:
            raise ToolError(f"{self.relative(path)!r} is a folder", "invalid_arguments") from None
        except OSError as exc:
            raise ToolError(
                f"cannot open {self.relative(path)!r}: {exc.strerror}", "error"
            ) from None
        try:
            real = Path(os.readlink(f"/proc/self/fd/{fd}"))
            if not self.contains(real):
                raise ToolError(f"{self.relative(path)!r} leads outside the workspace", "forbidden")
            self.check_public(real, self.relative(path))
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise ToolError(f"{self.relative(path)!r} is a folder", "invalid_arguments")
            if not stat.S_ISREG(mode):
                raise ToolError(
                    f"{self.relative(path)!r} is not a regular file", "invalid_arguments"
                )
        except BaseException:
            os.close(fd)
            raise
        return fd


def check_relative(user_path: str, *, what: str) -> PurePosixPath:
    """user_path as a relative path with no `..`. Raises ToolError (invalid_arguments)."""
    if "\x00" in user_path:
        raise ToolError(f"{what} contains a NUL character", "invalid_arguments")
    text = user_path.strip()
    if not text:
        raise ToolError(f"{what} is empty", "invalid_arguments")
    if text.startswith(("/", "\\", "~")) or (len(text) > 1 and text[1] == ":"):
        raise ToolError(
            f"{what} {user_path!r} is absolute; give it relative to the workspace folder",
            "invalid_arguments",
        )
    relative = PurePosixPath(text.replace("\\", "/"))
    if ".." in relative.parts:
        raise ToolError(
            f"{what} {user_path!r} contains '..'; it must stay in the workspace",
            "invalid_arguments",
        )
    return relative


def looks_binary(head: bytes) -> bool:
    """True when the first bytes of a file show it is not text."""
    return b"\x00" in head[:BINARY_SNIFF_BYTES]
