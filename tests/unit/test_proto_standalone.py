"""The contract compiles on its own and buf lint is clean (issue 14).

`protoc -I proto` and `buf build proto` used to fail on google/rpc/status.proto;
it is vendored now, and must stay the file googleapis-common-protos ships.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import google.rpc
import pytest
from grpc_tools import protoc

REPO = Path(__file__).resolve().parents[2]
PROTO = REPO / "proto"
BUF = REPO / "tools" / "node_modules" / ".bin" / "buf"
# the STANDARD rules buf.yaml lets agent.proto break, each with its reason there
DOCUMENTED_EXCEPTIONS = {
    "RPC_REQUEST_RESPONSE_UNIQUE",
    "RPC_RESPONSE_STANDARD_NAME",
    "ENUM_ZERO_VALUE_SUFFIX",
}


def buf() -> str:
    if not BUF.exists():
        pytest.fail(f"{BUF} is missing: `make tools` installs buf (make test does)")
    return str(BUF)


def test_the_vendored_status_proto_is_the_one_googleapis_common_protos_ships() -> None:
    packaged = Path(next(iter(google.rpc.__path__))) / "status.proto"
    vendored = PROTO / "google" / "rpc" / "status.proto"
    assert vendored.read_bytes() == packaged.read_bytes(), (
        "proto/google/rpc/status.proto differs from the installed package's: copy it again"
    )


def test_protoc_compiles_the_contract_with_proto_as_its_only_include(tmp_path: Path) -> None:
    well_known = str(resources.files("grpc_tools") / "_proto")  # what protoc itself bundles
    out = tmp_path / "agent.binpb"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO}",
            f"-I{well_known}",
            f"--descriptor_set_out={out}",
            "agent_relay/v1/agent.proto",
        ]
    )
    assert code == 0
    assert out.stat().st_size > 0


def test_buf_builds_and_lints_clean() -> None:
    built = subprocess.run([buf(), "build", str(PROTO)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    linted = subprocess.run([buf(), "lint", str(PROTO)], capture_output=True, text=True)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert linted.stdout == ""


def test_the_lint_exceptions_are_exactly_the_findings_they_document(tmp_path: Path) -> None:
    """Without its ignore_only block, buf lint reports those rules and no other: an
    exception nothing needs any more, or a new finding, fails here."""
    copy = tmp_path / "proto"
    shutil.copytree(PROTO, copy, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    config = (copy / "buf.yaml").read_text()
    head, _, tail = config.partition("  ignore_only:\n")
    assert tail, "buf.yaml has no ignore_only block"
    rest = tail.split("\nbreaking:", 1)[1]
    (copy / "buf.yaml").write_text(head + "breaking:" + rest)
    linted = subprocess.run(
        [buf(), "lint", str(copy), "--error-format", "json"], capture_output=True, text=True
    )
    findings = [json.loads(line) for line in linted.stdout.splitlines() if line.strip()]
    assert {f["type"] for f in findings} == DOCUMENTED_EXCEPTIONS
    assert {f["path"].rsplit("proto/", 1)[-1] for f in findings} == {"agent_relay/v1/agent.proto"}
