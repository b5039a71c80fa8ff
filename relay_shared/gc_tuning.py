"""Garbage-collector settings for a long-running server process, applied once after start-up."""

from __future__ import annotations

import gc


def tune_gc(gen0_threshold: int) -> None:
    """Freeze what start-up built and collect the young generation less often.

    Everything alive once the server listens (modules, descriptors, settings) lives as
    long as the process: `gc.freeze()` moves it out of the collector's sight, so a full
    collection no longer walks it. A higher gen0 threshold trades a little memory for
    fewer collections of the many short-lived objects each event makes. 0 leaves the
    interpreter's defaults (no freeze)."""
    if gen0_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)
