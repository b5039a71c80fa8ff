"""The GC levers both processes apply after start-up (relay_shared/gc_tuning.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from agent_service.config import load as load_service
from ws_edge.config import load as load_edge

PROBE = """
import gc, json, sys
from relay_shared.gc_tuning import tune_gc
before = gc.get_threshold()
tune_gc(int(sys.argv[1]))
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def probe(threshold: int) -> dict[str, list[int] | int]:
    """tune_gc in a fresh interpreter, so this one's collector stays as it was."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(threshold)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_tune_gc_freezes_start_up_objects_and_raises_gen0_only() -> None:
    seen = probe(40_000)
    assert seen["after"] == [40_000, seen["before"][1], seen["before"][2]]
    assert seen["frozen"] > 1000  # the modules imported so far are out of the collector's sight


def test_zero_leaves_the_interpreter_defaults() -> None:
    seen = probe(0)
    assert seen["after"] == seen["before"]
    assert seen["frozen"] == 0


def test_both_processes_take_the_setting_and_default_to_the_lever_on() -> None:
    assert load_service([]).gc_gen0_threshold > 700
    assert load_edge([]).gc_gen0_threshold > 700
    assert load_service(["--gc-gen0-threshold", "0"]).gc_gen0_threshold == 0
    assert load_edge(["--gc-gen0-threshold", "0"]).gc_gen0_threshold == 0
