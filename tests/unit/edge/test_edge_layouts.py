"""Primed shared keys keep aiohttp's per-request objects without a dict of their own.

Each case runs in a fresh interpreter: the shared key tables are per process, and the
burst that exhausts them must come before any write, as on a freshly started edge.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp.http_writer import StreamWriter

from ws_edge.layouts import attribute_names

REPO = Path(__file__).resolve().parents[3]

# 300 writers made before any has written (concurrent requests at start), then each
# writes: prints how many of them ended up with a dict of their own.
BURST = """
import asyncio, gc, sys
sys.path.insert(0, {repo!r})
from aiohttp.http_writer import StreamWriter
if {prime}:
    from ws_edge.layouts import prime_instance_layouts
    prime_instance_layouts()

class Transport:
    def is_closing(self):
        return False
    def write(self, chunk):
        pass

class Protocol:
    transport = Transport()

loop = asyncio.new_event_loop()
writers = [StreamWriter(Protocol(), loop) for _ in range(300)]
for writer in writers:
    writer._write(b"x" * 300)
print(sum(any(type(r) is dict for r in gc.get_referents(w)) for w in writers))
"""


def _writers_with_a_dict(prime: bool) -> int:
    code = BURST.format(repo=str(REPO), prime=prime)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return int(out.strip())


def test_the_names_a_writer_sets_in_its_methods_are_found() -> None:
    names = attribute_names(StreamWriter)
    # set in __init__, by `+=` at the first write, and only on some responses
    for name in ("_protocol", "_headers_buf", "buffer_size", "output_size", "length", "_eof"):
        assert name in names


def test_primed_writers_made_in_a_burst_keep_compact_attributes() -> None:
    unprimed = _writers_with_a_dict(prime=False)
    if unprimed == 0:
        pytest.skip("this Python does not give such writers a dict of their own")
    assert _writers_with_a_dict(prime=True) == 0
