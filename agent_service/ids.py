"""Ids the service generates, and the shape of ids clients may choose."""

from __future__ import annotations

import re
import secrets
import time

_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")


def new_id(prefix: str) -> str:
    """A unique, roughly time-ordered id such as `s_018f3c2a9b1e4d7c9a`."""
    return f"{prefix}_{int(time.time() * 1000):011x}{secrets.token_hex(5)}"


def is_valid_client_id(value: str) -> bool:
    """1 to 128 characters of letters, digits and `._:-`, starting with a letter or digit."""
    return bool(_CLIENT_ID.match(value))


def now_ms() -> int:
    """Milliseconds since the Unix epoch."""
    return int(time.time() * 1000)
