"""Ids the service generates, and the shape of ids clients may choose."""

from __future__ import annotations

import random
import re
import secrets
import time

_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")


def new_id(prefix: str) -> str:
    """A unique, roughly time-ordered id such as `s_018f3c2a9b1e4d7c9a`."""
    return f"{prefix}_{int(time.time() * 1000):011x}{secrets.token_hex(5)}"


def new_run_id() -> str:
    """A run's id, such as `r_018f3c2a9b1e4d7c9a`: unique as new_id's are (40 random bits
    per millisecond, from a generator os.urandom seeded in this process: Python seeds it
    again in a forked child), but not unguessable, and without a system call. A run id
    grants nothing (a cancel names the session too, whose access is checked), and under
    a burst os.urandom's getrandom call let the writer's thread take the interpreter
    lock: the acceptance then waited to get it back (2 % of the service's samples)."""
    return f"r_{int(time.time() * 1000):011x}{random.getrandbits(40):010x}"


def is_valid_client_id(value: str) -> bool:
    """1 to 128 characters of letters, digits and `._:-`, starting with a letter or digit."""
    return bool(_CLIENT_ID.match(value))


def now_ms() -> int:
    """Milliseconds since the Unix epoch."""
    return int(time.time() * 1000)
