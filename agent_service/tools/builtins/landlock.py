"""Confine the calling process with Linux Landlock (standard library only).

The python tool's child loads this file and calls `restrict()` on itself before
it runs the snippet; the confinement is inherited by everything it starts and
cannot be lifted. What stays allowed:
- reading and executing beneath the `read_only` paths (the Python installation,
  the system's programs and libraries, a few files of /etc);
- anything beneath the `read_write` paths (the snippet's own folder);
- reading and writing the `devices` (/dev/null and the like).
Everything else on the file system is refused, and, where the kernel's Landlock
ABI allows: TCP bind and connect (ABI 4), and sending signals to or connecting
to abstract sockets of processes outside the sandbox (ABI 6). So a snippet
cannot read the service's files, its environment through /proc, reach
services on the network, or kill the service.

No I/O happens at import; the module must stay free of project imports since
the child loads it by path.
"""

from __future__ import annotations

import ctypes
import os
import stat
import struct
from collections.abc import Sequence

# Syscall numbers: the same on x86_64 and aarch64 (syscalls added after 5.1 share them).
SYS_CREATE_RULESET = 444
SYS_ADD_RULE = 445
SYS_RESTRICT_SELF = 446
CREATE_RULESET_VERSION = 1 << 0
RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
FS_FILE_ONLY = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

READ_ONLY = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def abi_version() -> int:
    """The kernel's Landlock ABI version, or 0 when Landlock is not available."""
    try:
        libc = _libc()
        version = int(libc.syscall(SYS_CREATE_RULESET, None, 0, CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(version, 0)


def handled_fs(abi: int) -> int:
    """Every file-system right this ABI knows, so that each is refused unless allowed."""
    rights = (1 << 13) - 1  # ABI 1: execute .. make_sym
    if abi >= 2:
        rights |= 1 << 13  # refer
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def restrict(read_only: Sequence[str], read_write: Sequence[str], devices: Sequence[str]) -> int:
    """Confine this process (and its future children). Returns the ABI used.

    Paths that do not exist are skipped. Raises OSError when Landlock is missing
    or refuses the rules.
    """
    abi = abi_version()
    if abi < 1:
        raise OSError("Landlock is not available in this kernel")
    libc = _libc()
    fs = handled_fs(abi)
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = struct.pack("=QQQ", fs, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    buffer = ctypes.create_string_buffer(attr[:size], size)
    ruleset = libc.syscall(SYS_CREATE_RULESET, buffer, size, 0)
    if ruleset < 0:
        raise _errno_error("landlock_create_ruleset")
    try:
        for paths, rights in ((read_only, READ_ONLY), (read_write, fs), (devices, FS_FILE_ONLY)):
            for path in paths:
                _allow(libc, ruleset, path, rights & fs)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise _errno_error("prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(SYS_RESTRICT_SELF, ruleset, 0) != 0:
            raise _errno_error("landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


def _allow(libc: ctypes.CDLL, ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # absent here: nothing to allow
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= FS_FILE_ONLY  # directory rights on a file are refused by the kernel
        rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)  # packed struct
        if libc.syscall(SYS_ADD_RULE, ruleset, RULE_PATH_BENEATH, rule, 0):
            raise _errno_error(f"landlock_add_rule({path})")
    finally:
        os.close(fd)


def _errno_error(what: str) -> OSError:
    errno = ctypes.get_errno()
    return OSError(errno, f"{what}: {os.strerror(errno)}")
