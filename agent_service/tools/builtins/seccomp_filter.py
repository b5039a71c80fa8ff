"""The python tool's seccomp filter: no sockets but AF_UNIX, no io_uring.

`socket_filter()` builds the filter once, in the service, with libseccomp
(through pyseccomp) and returns it as the raw BPF program; the child installs
those bytes with one prctl (sandbox_child.py), so it neither loads libseccomp
nor pays for it on every call. What the filter does:
- socket() with any family but AF_UNIX fails with EAFNOSUPPORT (no IP, raw,
  packet or netlink sockets: AF_UNIX stays for multiprocessing and the like);
- io_uring_setup() fails with EPERM (an io_uring can open sockets without the
  socket() call the filter sees);
- a system call of another architecture (32-bit x86 on x86_64, whose
  socketcall() would slip past the rule above) kills the process, libseccomp's
  default for a foreign architecture.
Everything else is allowed: Landlock and the namespaces do the rest.
"""

from __future__ import annotations

import errno
import logging
import socket
import tempfile

log = logging.getLogger(__name__)


def socket_filter() -> bytes | None:
    """The BPF program, or None (with a warning logged) when libseccomp is missing."""
    try:
        import pyseccomp as seccomp  # type: ignore[import-untyped]  # no type information
    except (ImportError, RuntimeError, OSError) as exc:  # RuntimeError: no libseccomp.so
        log.warning("python tool: no seccomp filter (%s); the network namespace remains", exc)
        return None
    rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    rules.add_rule(
        seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.NE, socket.AF_UNIX)
    )
    rules.add_rule(seccomp.ERRNO(errno.EPERM), "io_uring_setup")
    with tempfile.TemporaryFile() as exported:
        rules.export_bpf(exported)
        exported.seek(0)
        program: bytes = exported.read()
    return program
