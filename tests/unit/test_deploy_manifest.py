"""deploy/kubernetes.yaml uses only flags and AGENT_RELAY_* variables the code has."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from agent_service.config import ServiceSettings
from ws_edge.config import EdgeSettings

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes.yaml"
SETTINGS = {"agent_service": ServiceSettings, "ws_edge": EdgeSettings}


def containers(text: str) -> list[tuple[str, list[str], list[str]]]:
    """(module, its --flags, its AGENT_RELAY_* variables) per container, in order."""
    found: list[tuple[str, list[str], list[str]]] = []
    for block in re.split(r"\n\s*- name: (?=\S+\n\s+image:)", text)[1:]:
        module = re.search(r'command: \["python", "-m", "(\w+)"\]', block)
        assert module, block
        flags = re.findall(r"^\s+- --([a-z0-9-]+)=", block, re.MULTILINE)
        env = re.findall(r"- name: AGENT_RELAY_([A-Z0-9_]+)", block)
        found.append((module.group(1), flags, env))
    return found


def test_every_flag_and_variable_of_the_manifest_is_a_setting_of_its_process() -> None:
    found = containers(MANIFEST.read_text())
    assert [module for module, _, _ in found] == ["agent_service", "ws_edge"]
    for module, flags, env in found:
        fields = {f.name for f in dataclasses.fields(SETTINGS[module])}  # type: ignore[arg-type]
        assert flags, module
        for flag in flags:
            assert flag.replace("-", "_") in fields, f"{module} has no --{flag}"
        for name in env:
            assert name.lower() in fields, f"{module} reads no AGENT_RELAY_{name}"
