"""long_task: progress at each step, a summary at the end, and cancellation mid-way."""

from __future__ import annotations

from pathlib import Path

from tool_test_support import cancel_soon, registry_for, run_tool


async def test_progress_at_each_step(tmp_path: Path) -> None:
    call = await run_tool(registry_for(tmp_path), "long_task", {"seconds": 0.2, "steps": 4})
    call.assert_shape("completed")
    progress = [(e.progress.fraction, e.progress.note) for e in call.events[1:-1]]
    assert progress == [
        (0.0, "step 0 of 4"),
        (0.25, "step 1 of 4"),
        (0.5, "step 2 of 4"),
        (0.75, "step 3 of 4"),
        (1.0, "step 4 of 4"),
    ]
    assert call.final.completed.result.startswith("long_task finished 4 steps in ")


async def test_default_steps_and_zero_seconds(tmp_path: Path) -> None:
    call = await run_tool(registry_for(tmp_path), "long_task", {"seconds": 0})
    call.assert_shape("completed")
    assert call.kinds.count("progress") == 11


async def test_cancel_mid_way(tmp_path: Path) -> None:
    def on_event(event, runner) -> None:
        if event.WhichOneof("update") == "progress" and event.progress.note == "step 2 of 1000":
            cancel_soon(runner)

    call = await run_tool(
        registry_for(tmp_path), "long_task", {"seconds": 100, "steps": 1000}, on_event=on_event
    )
    call.assert_shape("cancelled")
    assert call.final.cancelled.reason == "requested"
    assert call.kinds.count("progress") == 3  # steps 0, 1 and 2, then nothing more


async def test_out_of_range_arguments_are_refused(tmp_path: Path) -> None:
    registry = registry_for(tmp_path)
    call = await run_tool(registry, "long_task", {"seconds": 601})
    assert call.kinds == ["started", "failed"]
    assert call.final.failed.code == "invalid_arguments"
    assert call.final.failed.message.startswith("seconds: 601")

    call = await run_tool(registry, "long_task", {"seconds": 1, "steps": 0})
    assert call.final.failed.code == "invalid_arguments"
    assert call.final.failed.message.startswith("steps: 0")
