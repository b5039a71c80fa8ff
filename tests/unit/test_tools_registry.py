"""The built-in registry as the model and ListTools see it, and a tool of one's own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from tool_test_support import registry_for, run_tool

from agent_service.tools.base import ToolContext, ToolError
from agent_service.tools.builtins import BUILTIN_TOOL_NAMES


def test_every_builtin_is_registered_with_a_usable_spec(tmp_path: Path) -> None:
    registry = registry_for(tmp_path, python_timeout_s=7)
    specs = {spec.name: spec for spec in registry.specs()}
    assert sorted(specs) == sorted(BUILTIN_TOOL_NAMES)
    assert list(specs["calculator"].parameters["required"]) == ["expression"]
    assert list(specs["python"].parameters["required"]) == ["code"]
    assert set(specs["search_files"].parameters["properties"]) == {"query", "glob", "max_results"}
    assert set(specs["read_file"].parameters["properties"]) == {"path", "max_bytes"}
    assert set(specs["long_task"].parameters["properties"]) == {"seconds", "steps"}
    assert specs["python"].timeout_s > 7  # the tool's own wall limit fires first
    assert specs["long_task"].timeout_s > 600
    for spec in specs.values():
        Draft202012Validator.check_schema(spec.parameters)
        assert spec.parameters["additionalProperties"] is False
        assert len(spec.description) > 40


async def test_unknown_arguments_are_named(tmp_path: Path) -> None:
    call = await run_tool(registry_for(tmp_path), "read_file", {"path": "a", "mode": "w"})
    assert call.kinds == ["started", "failed"]
    assert call.final.failed.code == "invalid_arguments"
    assert "'mode' was unexpected" in call.final.failed.message


async def test_a_tool_of_ones_own_beside_the_builtins(tmp_path: Path) -> None:
    registry = registry_for(tmp_path)

    @registry.tool(
        name="shout",
        description="Upper-case a text.",
        parameters={
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
        timeout_s=5,
    )
    async def shout(args: dict[str, Any], ctx: ToolContext) -> str:
        if not args["text"]:
            raise ToolError("nothing to shout", "invalid_arguments")
        ctx.progress(0.5, "half way")
        ctx.output(args["text"], "stdout")
        return args["text"].upper()

    call = await run_tool(registry, "shout", {"text": "hey"})
    assert call.kinds == ["started", "progress", "output", "completed"]
    assert call.final.completed.result == "HEY"
    call = await run_tool(registry, "shout", {"text": ""})
    assert (call.final.failed.code, call.final.failed.message) == (
        "invalid_arguments",
        "nothing to shout",
    )


async def test_a_cancel_after_the_last_await_keeps_the_outcome_of_the_final_event(
    tmp_path: Path,
) -> None:
    registry = registry_for(tmp_path)

    @registry.tool(name="quick", description="Returns at once.", parameters={"type": "object"})
    async def quick(args: dict[str, Any], ctx: ToolContext) -> str:
        ctx.output("working")  # the consumer cancels here, synchronously
        return "done"

    def on_event(event, runner) -> None:
        if event.WhichOneof("update") == "output":
            runner.cancel("requested")

    call = await run_tool(registry, "quick", {}, on_event=on_event)
    assert call.kinds == ["started", "output", "completed"]
    assert call.outcome.status == "completed"
