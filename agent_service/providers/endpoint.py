"""Where a provider's base URL points, for telemetry. Pure."""

from __future__ import annotations

import urllib.parse


def endpoint_of(base_url: str) -> tuple[str, int]:
    """The host and port a base URL names (the scheme's port when it names none)."""
    parts = urllib.parse.urlsplit(base_url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
